"""`SavePretrained`: writes the trained model in its native format when fit ends, atomically, on rank zero, with the
record of its training data where the DataModule keeps one (`datamodules.provenance`: what makes a model checkable as
an oracle)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from datamodules.interfaces import RecordsTrainingData
from datamodules.provenance import RECORD_FILE
from lightning_modules.io import atomic_directory
from lightning_modules.module import SavesPretrained

log = logging.getLogger(__name__)


class SavePretrained(Callback):
    """Calls the LightningModule's ``save_pretrained`` at the end of `fit`; beside it, ``training_data.json`` when the
    DataModule implements `RecordsTrainingData` (such as `AudioTextDataModule`).

    Args:
        dirpath: the folder to write; default ``<log dir>/pretrained``. An existing folder is replaced whole.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, SavesPretrained):
            raise TypeError(f"{type(pl_module).__name__} has no save_pretrained(path) for SavePretrained to call.")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        target = Path(self.dirpath) if self.dirpath else run_dir / "pretrained"
        if trainer.is_global_zero:
            datamodule = trainer.datamodule
            record = datamodule.training_record() if isinstance(datamodule, RecordsTrainingData) else None
            with atomic_directory(target) as tmp:
                pl_module.save_pretrained(tmp)
                if record is not None:
                    record.write(tmp)
            log.info("Saved the trained model to %s%s", target,
                     f" (trained on {record.describe()}: {RECORD_FILE})" if record else "")
        trainer.strategy.barrier("save_pretrained")
