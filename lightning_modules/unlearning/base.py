"""`UnlearningModule`: the template every unlearning method shares.

A training batch is ``{"forget": batch, "retain": batch}``; the method's `objective` turns it into named loss terms,
one of them ``loss`` (what the optimizer minimises); every term is logged under ``train/``. Parameter selection,
optimizer, fixed-noise validation and checkpoint trimming come from `TextToMusicModule`. A method that compares with
the model as it was before unlearning sets ``needs_reference = True`` and reads `reference`: a frozen copy that shares
every frozen tensor with the trained model and copies only the trainable ones, kept out of checkpoints.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.module import TextToMusicModule


def frozen_reference(model: TextToMusicModel, trainable: Sequence[torch.nn.Parameter]) -> TextToMusicModel:
    """A frozen eval-mode copy of `model` whose parameters and buffers are the same tensors as `model`'s, except the
    `trainable` parameters, which are copied (their values now): the reference costs the memory of what trains."""
    copied = {id(param) for param in trainable}
    memo = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers()) if id(tensor) not in copied}
    reference = copy.deepcopy(model, memo)
    return reference.requires_grad_(False).eval()


class UnlearningModule(TextToMusicModule):
    """Base of the unlearning methods: subclasses implement `objective`. Arguments as in `TextToMusicModule`."""

    needs_reference: bool = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # built now, from the pretrained weights, and not a submodule: out of checkpoints, DDP and the optimizer
        self._reference = [frozen_reference(self.model, self.trainable)] if self.needs_reference else []

    @property
    def reference(self) -> TextToMusicModel:
        """The model before unlearning, frozen, on this module's device."""
        if not self._reference:
            raise RuntimeError(f"{type(self).__name__} keeps no reference model; set needs_reference = True on the "
                               "class.")
        return self._reference[0].to(self.device)

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
