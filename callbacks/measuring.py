"""What every measurement inside a training run shares: `measuring`, the context that leaves the run as it found it,
and `fixed_losses`, the per-item loss pass at fixed timesteps and noise, sharded over processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics import CatMetric

from lightning_modules.models.base import TextToMusicModel


@contextmanager
def measuring(model: nn.Module, device: torch.device) -> Iterator[None]:
    """No gradients, `model` in eval mode, and afterwards the global random state (CPU and `device`) and every
    submodule's own train / eval mode restored: training draws the same batches and noise, in the same modes, whether
    a measurement ran or not."""
    modes = {module: module.training for module in model.modules()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        model.eval()
        try:
            yield
        finally:
            for module, training in modes.items():
                module.training = training


def fixed_losses(trainer: L.Trainer, model: TextToMusicModel, dataset: Dataset, seed: int, batch_size: int,
                 indices: list[int] | None = None) -> Tensor:
    """Per-item losses `(items,)` of `indices` (default all) of `dataset` at the timesteps and noise fixed by each
    item's id and `seed`; each process measures every `world_size`-th item (no padding) and all get every loss."""
    indices = list(range(len(dataset))) if indices is None else indices
    device = trainer.strategy.root_device
    gathered: Any = CatMetric(nan_strategy="disable").to(device)
    for batch in DataLoader(Subset(dataset, indices[trainer.global_rank::trainer.world_size]), batch_size):
        batch = move_data_to_device(batch, device)
        with trainer.precision_plugin.forward_context():
            gathered.update(model.loss(batch, **model.fixed_loss_inputs(batch["id"], seed)).float())
    return gathered.compute().reshape(-1)
