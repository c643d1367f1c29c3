"""`fixed_losses`: the per-item loss pass at fixed timesteps and noise, sharded over processes, that evaluation and
the guard share."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor
from torchmetrics import CatMetric

from datamodules.audio import AudioTextDataset
from lightning_modules.models.base import TextToMusicModel
from lightning_modules.passes import check_finite, sharded_batches


def fixed_losses(trainer: L.Trainer, model: TextToMusicModel, dataset: AudioTextDataset, seed: int, batch_size: int,
                 indices: list[int] | None = None) -> Tensor:
    """Per-item losses `(items,)` of `indices` (default all) of `dataset` at the timesteps and noise fixed by each
    item's id and `seed`; each process measures every `world_size`-th item (no padding) and all get every loss, in
    rank order. A NaN or infinite loss raises `NonFiniteLossError` naming the items, on every process alike (the check
    runs on the gathered losses: one device sync per call)."""
    gathered: Any = CatMetric(nan_strategy="disable").to(trainer.strategy.root_device)
    for batch in sharded_batches(trainer, dataset, batch_size, indices):
        with trainer.precision_plugin.forward_context():
            gathered.update(model.loss(batch, **model.fixed_loss_inputs(batch["id"], seed)).float())
    losses = gathered.compute().reshape(-1)
    indices = list(range(len(dataset))) if indices is None else indices
    order = [index for rank in range(trainer.world_size) for index in indices[rank::trainer.world_size]]
    check_finite(losses, [dataset.items[index].id for index in order],
                 f"fixed-noise loss of the {dataset.split or 'evaluation'} set")
    return losses
