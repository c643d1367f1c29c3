"""Gradient Difference: ascent on the forget loss plus descent on the retain loss (Liu et al., 2022; the "GradDiff"
baseline of TOFU, Maini et al., 2024)."""

from __future__ import annotations

from torch import Tensor

from lightning_modules.models.base import Batch
from lightning_modules.unlearning.base import UnlearningModule


class GradientDifference(UnlearningModule):
    """Minimises ``retain_weight * loss(retain) - forget_weight * loss(forget)``.

    Args:
        forget_weight: weight of the ascent on the forget loss.
        retain_weight: weight of the descent on the retain loss.
        **kwargs: `UnlearningModule`'s arguments (the model, optimizer, parameter groups, ...).
    """

    def __init__(self, *args, forget_weight: float = 1.0, retain_weight: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.forget_weight = forget_weight
        self.retain_weight = retain_weight

    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        forget_loss = self.model.loss(forget, reduction="mean")
        retain_loss = self.model.loss(retain, reduction="mean")
        loss = self.retain_weight * retain_loss - self.forget_weight * forget_loss
        return {"loss": loss, "forget_loss": forget_loss.detach(), "retain_loss": retain_loss.detach()}
