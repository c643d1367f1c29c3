"""`fixed_losses`: the per-item loss pass at fixed timesteps and noise, sharded over processes, that evaluation and
the guard share."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor
from torch.utils.data import Dataset
from torchmetrics import CatMetric

from lightning_modules.models.base import TextToMusicModel
from lightning_modules.passes import sharded_batches


def fixed_losses(trainer: L.Trainer, model: TextToMusicModel, dataset: Dataset, seed: int, batch_size: int,
                 indices: list[int] | None = None) -> Tensor:
    """Per-item losses `(items,)` of `indices` (default all) of `dataset` at the timesteps and noise fixed by each
    item's id and `seed`; each process measures every `world_size`-th item (no padding) and all get every loss."""
    gathered: Any = CatMetric(nan_strategy="disable").to(trainer.strategy.root_device)
    for batch in sharded_batches(trainer, dataset, batch_size, indices):
        with trainer.precision_plugin.forward_context():
            gathered.update(model.loss(batch, **model.fixed_loss_inputs(batch["id"], seed)).float())
    return gathered.compute().reshape(-1)
