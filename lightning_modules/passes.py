"""Passes over data inside a training run: `measuring`, the context that leaves the run as it found it, and
`sharded_batches`, a whole dataset split over processes: each takes every `world_size`-th item (no padding, no
duplicates), so per-item results can be gathered and sums reduced without double counting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset


@contextmanager
def measuring(model: nn.Module, device: torch.device, grad: bool = False) -> Iterator[None]:
    """No gradients (unless `grad`), `model` in eval mode, and afterwards the global random state (CPU and `device`)
    and every submodule's own train / eval mode restored: training draws the same batches and noise, in the same
    modes, whether a measurement ran or not."""
    modes = {module: module.training for module in model.modules()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.set_grad_enabled(grad):
        model.eval()
        try:
            yield
        finally:
            for module, training in modes.items():
                module.training = training


def sharded_batches(trainer: L.Trainer, dataset: Dataset, batch_size: int,
                    indices: list[int] | None = None) -> Iterator[dict]:
    """This process's share of `indices` (default all) of `dataset`, in batches on the training device."""
    indices = list(range(len(dataset))) if indices is None else indices  # type: ignore[arg-type]
    device = trainer.strategy.root_device
    for batch in DataLoader(Subset(dataset, indices[trainer.global_rank::trainer.world_size]), batch_size):
        yield move_data_to_device(batch, device)
