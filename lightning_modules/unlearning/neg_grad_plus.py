"""NegGrad+: a convex combination of descent on the retain set and ascent on the forget set, ``alpha * L(retain) -
(1 - alpha) * L(forget)`` (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023)."""

from __future__ import annotations

from lightning_modules.unlearning.gradient_difference import GradientDifference


class NegGradPlus(GradientDifference):
    """Gradient Difference with weights ``alpha`` (retain) and ``1 - alpha`` (forget).

    Args:
        alpha: weight of the retain loss, in [0, 1]; the forget loss gets ``1 - alpha``.
        **kwargs: `UnlearningModule`'s arguments (the model, optimizer, parameter groups, ...).
    """

    def __init__(self, *args, alpha: float = 0.9, **kwargs) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
        super().__init__(*args, forget_weight=1.0 - alpha, retain_weight=alpha, **kwargs)
        self.alpha = alpha
