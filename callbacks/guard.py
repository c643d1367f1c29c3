"""`UnlearningGuard`: stops a runaway unlearning run and keeps its last good weights. Gradient ascent on the forget
set (Thudi et al., 2022) has no floor: past some step the retain loss explodes or a loss turns NaN, and every later
step only destroys more. The guard measures the retain loss at timesteps and noise fixed per item (as
`UnlearningEvaluation` does) at the start and every few optimizer steps, keeps the trainable weights of the last
check that passed, and when the retain loss rises past a multiple of its start it puts those weights back, stops
training and writes ``guard.json`` into the run's log dir. A loss that is not finite makes the training step (or the
guard's own measurement) raise `NonFiniteLossError`; the guard then puts the weights back and writes ``guard.json``
too, and the error ends the run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from callbacks.evaluation import UnlearningEvaluation
from callbacks.measuring import fixed_losses, fixed_noise_seed
from datamodules.interfaces import HasEvalSets, require
from lightning_modules.io import write_json_atomic
from lightning_modules.module import TrainsSelectedWeights
from lightning_modules.passes import NonFiniteLossError, measuring

log = logging.getLogger(__name__)


class UnlearningGuard(Callback):
    """Stops training when the retain loss runs away, restoring the trainable weights of the last check that passed;
    restores them too when a loss is not finite, and lets that error end the run.

    The retain loss is the mean per-item loss of the first `num_items` items of the DataModule's
    ``eval_datasets()["retain"]`` at timesteps and noise fixed by item id and `seed`, measured without gradient, in
    eval mode, with the global random state restored afterwards (training draws the same batches and noise with or
    without the guard) and sharded over processes, so every process gets the same number and takes the same decision.
    It is measured when training starts (after a resumed checkpoint is restored), which also snapshots the trainable
    parameters (``pl_module.trainable``) to CPU, and every `check_every_n_steps` optimizer steps: a ratio to the start
    of at most `max_retain_ratio` replaces the snapshot, a higher one trips the guard.

    A NaN or infinite loss raises `NonFiniteLossError` where it is computed (the training step, before the optimizer
    step; the guard's retain measurement), at any step. Lightning then calls `on_exception`: the guard copies the
    snapshot back, records `stopped` (its ``reason`` is the error's message, naming the items) and writes
    ``guard.json``; the error still propagates, so the run exits with it and no checkpoint or saved model is written
    after it (Lightning saves none on an exception). The weights in memory are those of ``restored_step``.

    A trip at optimizer step N copies the snapshot back into the parameters in place, sets ``trainer.should_stop``,
    records `stopped`, logs a warning and writes ``guard.json``. What then holds (Lightning 2.6 loops):

    - no optimizer step follows: the epoch loop tests ``should_stop`` before fetching the next batch;
    - every `ModelCheckpoint` sees the restored weights, whether it saves at step N (``every_n_train_steps``: Lightning
      runs checkpoint callbacks after all others), after the validation Lightning runs when ``should_stop`` is set,
      or at epoch end; so do ``on_fit_end`` callbacks such as `SavePretrained` and `UnlearningEvaluation`'s "after";
    - the restored weights are those of step ``stopped["restored_step"]`` (up to ``check_every_n_steps - 1`` good
      steps are given back), while the trainer's step counter, and so a checkpoint's, stays at N.

    Not restored: the optimizer's state (momentum, Adam moments) and the learning-rate schedule, which a run resumed
    from a checkpoint written after the trip carries on with. Callbacks listed before the guard see the runaway
    weights in ``on_train_batch_end`` of step N, so an `UnlearningEvaluation` with ``every_n_train_steps`` must come
    after it (checked at setup). Trainer ``min_steps`` / ``min_epochs`` would override the stop and are refused.
    Restoring assumes each process holds whole parameters (single device, DDP), not shards (FSDP, DeepSpeed).

    Args:
        max_retain_ratio: trip when the retain loss exceeds this multiple of its value at the start; above 1.
        check_every_n_steps: measure the retain loss (and renew the snapshot) every this many optimizer steps.
        num_items: retain items measured: the first this many of ``eval_datasets()["retain"]``.
        batch_size: items per batch of the measurement.
        seed: seed of the per-item timesteps and noise; default the module's ``eval_seed``.
    """

    def __init__(
        self,
        max_retain_ratio: float = 1.5,
        check_every_n_steps: int = 10,
        num_items: int = 16,
        batch_size: int = 16,
        seed: int | None = None,
    ) -> None:
        if not (math.isfinite(max_retain_ratio) and max_retain_ratio > 1.0):
            raise ValueError(f"max_retain_ratio must be a finite number above 1 (e.g. 1.5), got {max_retain_ratio}.")
        for name, value in (("check_every_n_steps", check_every_n_steps), ("num_items", num_items),
                            ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        self.max_retain_ratio = max_retain_ratio
        self.check_every_n_steps = check_every_n_steps
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.start_retain_loss: float | None = None
        self.stopped: dict[str, Any] | None = None
        self._snapshot: list[Tensor] = []
        self._snapshot_step = 0
        self._snapshot_loss = math.nan
        self._last_check_step = -1
        self._folder = Path()

    # ----------------------------------------------------------------------------------------------------- set-up
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.min_steps or trainer.min_epochs:
            raise ValueError(f"UnlearningGuard stops training when it trips, but Trainer(min_steps="
                             f"{trainer.min_steps}, min_epochs={trainer.min_epochs}) forces it to go on; unset them.")
        position = trainer.callbacks.index(self)
        for callback in trainer.callbacks[:position]:
            if isinstance(callback, UnlearningEvaluation) and callback.every_n_train_steps:
                raise ValueError("List UnlearningGuard before UnlearningEvaluation (every_n_train_steps="
                                 f"{callback.every_n_train_steps}) in trainer.callbacks: otherwise the evaluation at "
                                 "the step the guard trips measures the runaway weights instead of the restored ones.")
        if not isinstance(pl_module, TrainsSelectedWeights):
            raise TypeError(f"UnlearningGuard needs a TextToMusicModule (with `model` and `trainable`), got "
                            f"{type(pl_module).__name__}.")
        datamodule = trainer.datamodule
        require(datamodule, HasEvalSets, "UnlearningGuard", "datamodules.ForgetRetainDataModule")
        datasets = datamodule.eval_datasets()
        if "retain" not in datasets:
            raise ValueError(f"UnlearningGuard measures the retain set, but eval_datasets() has only "
                             f"{sorted(datasets)}.")
        self.dataset = datasets["retain"]

    # ------------------------------------------------------------------------------------------------ measuring
    def retain_loss(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """Mean fixed-noise loss of the measured retain items; the same on every process. The global random state
        and the model's train / eval mode are left as they were."""
        indices = list(range(min(self.num_items, len(self.dataset))))
        with measuring(pl_module.model, trainer.strategy.root_device):
            seed = fixed_noise_seed(self.seed, pl_module, "UnlearningGuard")
            losses = fixed_losses(trainer, pl_module.model, self.dataset, seed, self.batch_size, indices,
                                  what=f"UnlearningGuard: the retain loss at step {trainer.global_step}")
        return losses.double().mean().item()

    def _snapshot_weights(self, pl_module: L.LightningModule, step: int, loss: float) -> None:
        self._snapshot = [param.detach().to("cpu", copy=True) for param in pl_module.trainable]
        self._snapshot_step = step
        self._snapshot_loss = loss

    def _log(self, trainer: L.Trainer, loss: float) -> None:
        if trainer.logger is not None:
            trainer.logger.log_metrics({"guard/retain_loss": loss, "guard/retain_ratio": loss / self.start_retain_loss},
                                       step=trainer.global_step)

    # ----------------------------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on every rank (log_dir is a collective under DDP), for on_exception, which only the failing ranks reach
        self._folder = Path(trainer.log_dir or trainer.default_root_dir)
        loss = self.retain_loss(trainer, pl_module)
        if self.start_retain_loss is None:  # a resumed run keeps the reference of its start, from the checkpoint
            if not (math.isfinite(loss) and loss > 0):
                raise ValueError(f"The retain loss at the start is {loss}; UnlearningGuard needs a positive finite "
                                 "reference. Check the model and the retain set.")
            self.start_retain_loss = loss
        self._last_check_step = trainer.global_step
        self._snapshot_weights(pl_module, trainer.global_step, loss)
        self._log(trainer, loss)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_check_step or step % self.check_every_n_steps:
            return  # not an optimizer step that is due (or already checked, with gradient accumulation)
        self._last_check_step = step
        retain = self.retain_loss(trainer, pl_module)
        self._log(trainer, retain)
        ratio = retain / self.start_retain_loss
        if math.isfinite(ratio) and ratio <= self.max_retain_ratio:
            self._snapshot_weights(pl_module, step, retain)
        else:
            reason = (f"the retain loss rose to {ratio:.3g} times its start {self.start_retain_loss:.4g} "
                      f"(max_retain_ratio {self.max_retain_ratio})")
            self._trip(trainer, pl_module, reason, retain)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """On a `NonFiniteLossError` during training, restore the last good weights and write ``guard.json``; the
        error propagates (Lightning re-raises it after the callbacks). Any other error is left alone."""
        if not isinstance(exception, NonFiniteLossError) or not self._snapshot:
            return  # not a non-finite loss, or before the start's measurement: no weights of a good check to restore
        self._restore(trainer, pl_module, f"a loss is not finite: {exception}", None)
        # only the processes that raised get here: no collective, and each of them writes (the same file, atomically)
        log.warning("UnlearningGuard: a loss is not finite at step %d; restored the weights of step %d (retain loss "
                    "%.4g) and the run ends with the error.", trainer.global_step, self._snapshot_step,
                    self._snapshot_loss)
        write_json_atomic(self._folder / "guard.json", self.stopped)

    def _restore(self, trainer: L.Trainer, pl_module: L.LightningModule, reason: str, retain: float | None) -> None:
        """Copy the snapshot back into the trainable parameters, stop training and record why in `stopped`."""
        with torch.no_grad():
            for param, saved in zip(pl_module.trainable, self._snapshot, strict=True):
                param.data.copy_(saved)
        trainer.should_stop = True
        self.stopped = {"step": trainer.global_step, "reason": reason, "retain_loss": retain,
                        "start_retain_loss": self.start_retain_loss, "restored_step": self._snapshot_step,
                        "restored_retain_loss": self._snapshot_loss}

    def _trip(self, trainer: L.Trainer, pl_module: L.LightningModule, reason: str, retain: float | None) -> None:
        self._restore(trainer, pl_module, reason, retain)
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # every rank: log_dir is a collective under DDP
        if not trainer.is_global_zero:
            return
        log.warning("UnlearningGuard stopped training at step %d: %s. Restored the weights of step %d (retain loss "
                    "%.4g); they are what checkpoints and the saved model hold.", trainer.global_step, reason,
                    self._snapshot_step, self._snapshot_loss)
        write_json_atomic(folder / "guard.json", self.stopped)

    # ------------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"start_retain_loss": self.start_retain_loss, "stopped": self.stopped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start_retain_loss = state_dict["start_retain_loss"]
        self.stopped = state_dict["stopped"]
