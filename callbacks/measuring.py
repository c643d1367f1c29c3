"""`measuring`: the context every measurement inside a training run takes, so that it leaves the run as it found it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


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
