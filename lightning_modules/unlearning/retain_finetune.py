"""Retain fine-tuning: keep training on the retain set only and let the forget set fade (the cheap baseline every
unlearning paper reports, e.g. "Fine-tune" in Golatkar et al., 2020 and "FT" in SalUn, Fan et al., 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.models.base import Batch
from lightning_modules.unlearning.base import UnlearningModule


class RetainFinetune(UnlearningModule):
    """Minimises ``loss(retain)``; the forget loss is measured without gradient. Arguments as in `UnlearningModule`."""

    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        retain_loss = self.model.loss(retain, reduction="mean")
        with torch.no_grad():
            forget_loss = self.model.loss(forget, reduction="mean")
        return {"loss": retain_loss, "forget_loss": forget_loss, "retain_loss": retain_loss.detach()}
