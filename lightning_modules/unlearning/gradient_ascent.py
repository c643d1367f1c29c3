"""Gradient Ascent: maximise the training loss on the forget set (Thudi et al., 2022; the opt-out study of Kim et
al., 2025, applied it to MusicGen). The retain loss is measured without gradient, to watch the damage."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.models.base import Batch
from lightning_modules.unlearning.base import UnlearningModule


class GradientAscent(UnlearningModule):
    """Minimises ``-loss(forget)``. Arguments as in `UnlearningModule`."""

    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        forget_loss = self.model.loss(forget, reduction="mean")
        with torch.no_grad():
            retain_loss = self.model.loss(retain, reduction="mean")
        return {"loss": -forget_loss, "forget_loss": forget_loss.detach(), "retain_loss": retain_loss}
