"""`SavePretrained`: writes the trained model in its native format when fit ends, atomically, on rank zero."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from lightning_modules.io import atomic_directory

log = logging.getLogger(__name__)


class SavePretrained(Callback):
    """Calls the LightningModule's ``save_pretrained`` at the end of `fit`.

    Args:
        dirpath: the folder to write; default ``<log dir>/pretrained``. An existing folder is replaced whole.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "save_pretrained"):
            raise TypeError(f"{type(pl_module).__name__} has no save_pretrained(path) for SavePretrained to call.")
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        target = Path(self.dirpath) if self.dirpath else run_dir / "pretrained"
        if trainer.is_global_zero:
            with atomic_directory(target) as tmp:
                pl_module.save_pretrained(tmp)
            log.info("Saved the trained model to %s", target)
        trainer.strategy.barrier("save_pretrained")
