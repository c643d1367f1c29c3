"""Gradient Difference: ascent on the forget loss plus descent on the retain loss (Liu et al., 2022; the "GradDiff"
baseline of TOFU, Maini et al., 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.unlearning.base import UnlearningModule


class GradientDifference(UnlearningModule):
    """Minimises ``retain_weight * loss(retain) - forget_weight * loss(forget)``.

    Args:
        model: the model to unlearn.
        optimizer: builds the optimizer from the selected parameters.
        lr_scheduler: builds a learning-rate scheduler; none when not given.
        parameter_groups: names of the model's parameter groups to train.
        forget_weight: weight of the ascent on the forget loss.
        retain_weight: weight of the descent on the retain loss.
        eval_seed: seed of the per-item timesteps and noise of validation losses.
    """

    def __init__(
        self,
        model: TextToMusicModel,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        parameter_groups: Sequence[str] = ("all",),
        forget_weight: float = 1.0,
        retain_weight: float = 1.0,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(model, optimizer, lr_scheduler, parameter_groups, eval_seed)
        self.forget_weight = forget_weight
        self.retain_weight = retain_weight

    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        forget_loss = self.model.loss(forget, reduction="mean")
        retain_loss = self.model.loss(retain, reduction="mean")
        loss = self.retain_weight * retain_loss - self.forget_weight * forget_loss
        return {"loss": loss, "forget_loss": forget_loss.detach(), "retain_loss": retain_loss.detach()}
