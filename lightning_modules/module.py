"""`TextToMusicModule`: what training and unlearning a `TextToMusicModel` share.

It selects the trainable parameter groups by name, builds the optimizer and scheduler from callables given in the
config, measures the loss of validation items at timesteps and noise fixed per item id, keeps frozen weights out of
checkpoints and saves the model in its native format.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.passes import check_finite

RANDOM_STATE_KEY = "random_state"


def random_state() -> dict[str, Any]:
    """The global random states training draws from (torch CPU and current CUDA device, NumPy, Python), as tensors
    and plain values, which checkpoints load with ``weights_only``."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position),
                                                      int(has_gauss), float(gauss)], "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def stepped_schedule(optimizer: torch.optim.Optimizer, lr_scheduler: LRSchedulerCallable | None) -> Any:
    """What `configure_optimizers` returns: `optimizer` alone, or with the scheduler `lr_scheduler` builds, stepped
    every optimizer step (Lightning's default is every epoch)."""
    if lr_scheduler is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler(optimizer), "interval": "step"}}


@runtime_checkable
class SavesPretrained(Protocol):
    """A LightningModule that writes its model in the backend's native format (`callbacks.SavePretrained` calls it)."""

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the model to the folder `path`."""
        ...


@runtime_checkable
class TrainsSelectedWeights(Protocol):
    """A LightningModule that trains the `trainable` weights of its `model` (`TextToMusicModule`; what
    `callbacks.UnlearningGuard` snapshots and restores)."""

    model: TextToMusicModel
    trainable: list[nn.Parameter]


class ModelAudioFormat:
    """`sample_rate` and `num_samples` of the wrapped `model`: what the CLI links into the DataModule, for every
    LightningModule of this package that wraps a `TextToMusicModel`."""

    model: TextToMusicModel

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def num_samples(self) -> int:
        return self.model.num_samples


class TextToMusicModule(ModelAudioFormat, L.LightningModule):
    """Base of the modules that train a `TextToMusicModel`.

    Args:
        model: the model to train.
        optimizer: builds the optimizer from the selected parameters.
        lr_scheduler: builds a learning-rate scheduler (stepped every optimizer step); none when not given.
        parameter_groups: names of the model's parameter groups to train; every other parameter stays frozen.
        eval_seed: seed of the per-item timesteps and noise of validation losses.
    """

    def __init__(
        self,
        model: TextToMusicModel,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        parameter_groups: Sequence[str] = ("all",),
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.eval_seed = eval_seed
        model.requires_grad_(False)
        self.trainable = model.select_parameters(list(parameter_groups))
        for param in self.trainable:
            param.requires_grad_(True)
        self.strict_loading = False  # checkpoints hold the trained parameters only; the rest comes from `model`
        self._resumed_random_state: dict[str, Any] | None = None

    def on_train_start(self) -> None:
        self.model.train()  # from_pretrained gives eval mode, and Lightning does not switch modules at fit start
        if self._resumed_random_state is not None:  # the noise and timesteps the interrupted fit would have drawn
            set_random_state(self._resumed_random_state)
            self._resumed_random_state = None

    def on_validation_start(self) -> None:
        # validation leaves the global random state as it found it (its loaders' iterators draw seeds from it), so
        # training draws alike whether or not it ran, and a fit resumed from a checkpoint written before it
        self._random_state_before_validation = random_state()

    def on_validation_end(self) -> None:
        set_random_state(self._random_state_before_validation)

    def fixed_loss(self, batch: Batch) -> Tensor:
        """Per-item losses `(batch,)` at the timesteps and noise fixed by each item's id and `eval_seed`."""
        return self.model.loss(batch, **self.model.fixed_loss_inputs(batch["id"], self.eval_seed))

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        split = batch["split"][0]
        key = f"val/{split}_loss" if split else "val/loss"
        losses = self.fixed_loss(batch)
        check_finite(losses, batch["id"], f"validation loss ({split or 'validation'} set)")
        self.log(key, losses.mean(), batch_size=len(batch["id"]), sync_dist=True,
                 add_dataloader_idx=False)

    def configure_optimizers(self) -> Any:
        return stepped_schedule(self.optimizer(self.trainable), self.lr_scheduler)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trained = {name for name, param in self.named_parameters() if param.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}
        # rank zero's: every process is seeded alike and draws as much per step, so all hold the same state
        checkpoint[RANDOM_STATE_KEY] = random_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the random state to restore when training starts, after the evaluations at fit start."""
        self._resumed_random_state = checkpoint.get(RANDOM_STATE_KEY)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the model in its backend's native format."""
        self.model.save_pretrained(path)
