"""NegGrad+: a convex combination of descent on the retain set and ascent on the forget set, ``alpha * L(retain) -
(1 - alpha) * L(forget)`` (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lightning_modules.models.base import TextToMusicModel
from lightning_modules.unlearning.gradient_difference import GradientDifference


class NegGradPlus(GradientDifference):
    """Gradient Difference with weights ``alpha`` (retain) and ``1 - alpha`` (forget).

    Args:
        model: the model to unlearn.
        optimizer: builds the optimizer from the selected parameters.
        lr_scheduler: builds a learning-rate scheduler; none when not given.
        parameter_groups: names of the model's parameter groups to train.
        alpha: weight of the retain loss, in [0, 1]; the forget loss gets ``1 - alpha``.
        eval_seed: seed of the per-item timesteps and noise of validation losses.
    """

    def __init__(
        self,
        model: TextToMusicModel,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        parameter_groups: Sequence[str] = ("all",),
        alpha: float = 0.9,
        eval_seed: int = 0,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
        super().__init__(model, optimizer, lr_scheduler, parameter_groups, forget_weight=1.0 - alpha,
                         retain_weight=alpha, eval_seed=eval_seed)
        self.alpha = alpha
