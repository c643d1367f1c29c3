"""Per-item passes over an evaluation set, sharded over processes, whose values every process gets in item order:
`fixed_losses` (the loss at fixed timesteps and noise, which evaluation and the guard share) and `per_item_values`;
the precision they measure in (`measuring_precision`); and the seed of their fixed inputs (`fixed_noise_seed`), the
module's ``eval_seed`` unless a callback names its own, so it is set once in a config."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor

from datamodules.audio import AudioTextDataset
from lightning_modules.metrics.functional import Samples
from lightning_modules.metrics.per_item import PerItemMetric
from lightning_modules.models.base import TextToMusicModel
from lightning_modules.module import TextToMusicModule
from lightning_modules.passes import check_finite, sharded_batches


def fixed_noise_seed(seed: int | None, pl_module: L.LightningModule, user: str) -> int:
    """`seed`, or when None the LightningModule's ``eval_seed`` (the seed of its own validation losses' timesteps and
    noise), so the module, the evaluation and the guard measure at the same inputs from one setting.

    Raises:
        TypeError: `seed` is None and the module is not a `TextToMusicModule` (it has no ``eval_seed``).
    """
    if seed is not None:
        return seed
    if not isinstance(pl_module, TextToMusicModule):
        raise TypeError(f"{user} takes its seed from the LightningModule's eval_seed, but {type(pl_module).__name__} "
                        f"has none; set the callback's seed.")
    return pl_module.eval_seed


class _InOrder(PerItemMetric):
    """Gathers one tensor per item from every process, in index order."""

    fields = ("value",)

    def update(self, value: Tensor, index: Tensor) -> None:
        self.keep(index, value=value)

    def statistic(self, samples: Samples) -> Tensor:
        return samples["value"]


def measuring_precision(trainer: L.Trainer) -> AbstractContextManager:
    """The context the evaluation's model passes (fixed-noise losses, generation) run in: the trainer's autocast
    where it is faster, float32 where it is not. On CPU, bf16 / fp16 autocast is emulated and many times slower than
    float32 (the toy model generated 19.6x slower under bf16 autocast, 1 thread; README, "Precision of the
    evaluation"), and float32 is the more precise measurement, so a mixed-precision run on CPU measures in float32
    and its report is the fp32 run's. Weights converted to a low precision ("bf16-true") keep the trainer's
    context, which their inputs need."""
    plugin = trainer.precision_plugin
    if isinstance(plugin, MixedPrecision) and trainer.strategy.root_device.type == "cpu":
        return contextlib.nullcontext()
    return plugin.forward_context()


def per_item_values(trainer: L.Trainer, dataset: Any, batch_size: int, measure: Callable[[dict], Tensor],
                    indices: list[int] | None = None, what: str | None = None) -> Tensor:
    """`measure(batch)` `(batch, ...)` over `indices` (default all) of `dataset`: each process measures every
    `world_size`-th item (no padding) and all get every item's value, in the order of `indices`; with a progress bar
    named `what` where given."""
    indices = list(range(len(dataset))) if indices is None else indices
    gathered: Any = _InOrder().to(trainer.strategy.root_device)
    share = torch.arange(len(indices))[trainer.global_rank::trainer.world_size]
    for batch, positions in zip(sharded_batches(trainer, dataset, batch_size, indices, what),
                                share.split(batch_size), strict=True):
        gathered.update(measure(batch), positions)
    return gathered.samples()["value"]


def fixed_losses(trainer: L.Trainer, model: TextToMusicModel, dataset: AudioTextDataset, seed: int, batch_size: int,
                 indices: list[int] | None = None, what: str | None = None) -> Tensor:
    """Per-item losses `(items,)` of `indices` (default all) of `dataset` at the timesteps and noise fixed by each
    item's id and `seed`, in the order of `indices` on every process (`per_item_values`). A NaN or infinite loss raises
    `NonFiniteLossError` naming the items, on every process alike (the check runs on the gathered losses)."""

    def loss(batch: dict) -> Tensor:
        with measuring_precision(trainer):
            return model.loss(batch, **model.fixed_loss_inputs(batch["id"], seed)).float()

    losses = per_item_values(trainer, dataset, batch_size, loss, indices, what)
    indices = list(range(len(dataset))) if indices is None else indices
    check_finite(losses, [dataset.items[index].id for index in indices],
                 f"fixed-noise loss of the {dataset.split or 'evaluation'} set")
    return losses
