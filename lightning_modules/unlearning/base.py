"""`UnlearningModule`: the template every unlearning method shares.

A training batch is ``{"forget": batch, "retain": batch}``; the method's `objective` turns it into named loss terms,
one of them ``loss`` (what the optimizer minimises); every term is logged under ``train/``. Parameter selection,
optimizer, fixed-noise validation and checkpoint trimming come from `TextToMusicModule`.
"""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor

from lightning_modules.models.base import Batch
from lightning_modules.module import TextToMusicModule


class UnlearningModule(TextToMusicModule):
    """Base of the unlearning methods: subclasses implement `objective`. Arguments as in `TextToMusicModule`."""

    @abstractmethod
    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        """Named scalar loss terms for one step; ``loss`` is minimised."""

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> Tensor:
        terms = self.objective(batch["forget"], batch["retain"])
        if "loss" not in terms:
            raise KeyError(f"{type(self).__name__}.objective returned {sorted(terms)}; one term must be 'loss'.")
        batch_size = len(batch["forget"]["id"])
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name in ("loss", "forget_loss"), batch_size=batch_size)
        return terms["loss"]
