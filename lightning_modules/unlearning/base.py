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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from datamodules.audio import AudioTextDataset
from datamodules.interfaces import HasSplits, require
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.module import TextToMusicModule
from lightning_modules.passes import (
    NonFiniteLossError,
    check_finite_terms,
    listed_ids,
    measuring,
    sharded_batches,
    timed,
)

GradientStatistic = Callable[..., tuple[list[Tensor], int]]  # (model, parameters, batches, **kwargs) -> (sums, count)


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
        """The model before unlearning, frozen, on this module's device and in its dtype (bf16-true casts the shared
        frozen weights in place, but not the reference's own copies of the trained ones)."""
        if not self._reference:
            raise RuntimeError(f"{type(self).__name__} keeps no reference model; set needs_reference = True on the "
                               "class.")
        return self._reference[0].to(device=self.device, dtype=self.dtype)

    def plus_retain(self, loss: Tensor, retain: Batch, weight: float) -> tuple[Tensor, Tensor]:
        """``loss + weight * loss(retain)`` and the mean retain loss; with `weight` 0 the retain loss is only
        measured, without gradient."""
        with torch.set_grad_enabled(weight > 0 and torch.is_grad_enabled()):
            retain_loss = self.model.loss(retain, reduction="mean")
        return (loss + weight * retain_loss if weight > 0 else loss), retain_loss.detach()

    @staticmethod
    def same_draws(count: int) -> list[torch.Generator]:
        """`count` generators seeded alike from the global random state: `loss` or `predict` calls given one each
        draw the same timesteps and noise (e.g. the model and its reference, or one input under several captions)."""
        seed = int(torch.randint(2**62, ()))
        return [torch.Generator().manual_seed(seed) for _ in range(count)]

    def split_dataset(self, split: str) -> AudioTextDataset:
        """Every item of the DataModule's `split` set ("forget", "retain"), for methods that look at a whole set."""
        datamodule = self.trainer.datamodule
        require(datamodule, HasSplits, type(self).__name__, "datamodules.ForgetRetainDataModule")
        return datamodule.split_dataset(split)

    def gradient_statistic(self, split: str, statistic: GradientStatistic, batch_size: int = 8, **kwargs: Any
                           ) -> list[Tensor]:
        """The mean over every item of the DataModule's `split` set of a gradient `statistic` of the trainable
        parameters (`gradients.loss_gradient`, `gradients.squared_gradients`, given `kwargs`), at the current weights,
        in eval mode and full precision: each process takes its share of the items and the sums are added across
        processes. Training's random state and modes are left as they were."""
        what = f"{type(self).__name__}: {getattr(statistic, '__name__', 'gradient statistic')} over the {split} set"
        batches = sharded_batches(self.trainer, self.split_dataset(split), batch_size, what=what)
        with measuring(self.model, self.device, grad=True), timed(self.trainer, what):
            sums, count = statistic(self.model, self.trainable, batches, **kwargs)
        strategy = self.trainer.strategy
        total = int(strategy.reduce(torch.tensor(float(count), device=self.device), reduce_op="sum"))
        if total == 0:
            raise ValueError(f"The {split} set is empty; {type(self).__name__} needs its items.")
        return [strategy.reduce(value, reduce_op="sum") / total for value in sums]

    def _with_culprits(self, error: NonFiniteLossError, batch: dict[str, Batch]) -> NonFiniteLossError:
        """`error` narrowed to the items whose own loss (at fixed noise, no gradient) is not finite, when some are: an
        objective averages over the batch, so it cannot name them itself. None of them: the weights diverged."""
        with torch.no_grad():
            culprits = [item_id for split in ("forget", "retain") for item_id, finite in
                        zip(batch[split]["id"], torch.isfinite(self.fixed_loss(batch[split])).tolist(), strict=True)
                        if not finite]
        if not culprits:
            return NonFiniteLossError(f"{error} Every item's own loss is finite at fixed noise: the weights or the "
                                      "objective diverged (lower the learning rate).", error.ids)
        return NonFiniteLossError(f"{error} The items whose own loss is not finite: {listed_ids(culprits)}.", culprits)

    @abstractmethod
    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        """Named scalar loss terms for one step; ``loss`` is minimised."""

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> Tensor:
        terms = self.objective(batch["forget"], batch["retain"])
        if "loss" not in terms:
            raise KeyError(f"{type(self).__name__}.objective returned {sorted(terms)}; one term must be 'loss'.")
        # before the optimizer step: a NaN loss would fill the weights with NaN (UnlearningGuard restores them)
        ids = {split: list(batch[split]["id"]) for split in ("forget", "retain")}
        try:
            check_finite_terms(terms, ids, f"{type(self).__name__} training loss at step {self.global_step}")
        except NonFiniteLossError as error:
            raise self._with_culprits(error, batch) from None
        batch_size = len(batch["forget"]["id"])
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name in ("loss", "forget_loss"), batch_size=batch_size)
        return terms["loss"]
