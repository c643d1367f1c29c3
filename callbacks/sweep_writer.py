"""`SweepWriter`: writes the loss sweeps of attribution by unlearning (Choi et al. 2025, arXiv 2506.18312), what
`LossSweep` and `QueryAttribution` predict, one atomic file per shard, so an interrupted sweep resumes where it
stopped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.sweep import NO_SHARD, write_shard

log = logging.getLogger(__name__)


class SweepWriter(BasePredictionWriter):
    """Writes each prediction ``{"shard", "id", "loss"}`` as ``shard-NNNNN.pt`` (`datamodules.sweep.write_shard`, with
    its digest) into the DataModule's ``sweep_dir``, or into the prediction's own ``sweep_dir`` (one sweep per query in
    `QueryAttribution`); every rank writes its own shards, and at the end every shard the DataModule lists
    (``missing_files()``: missing or failing verification) must be there. The module checks and
    records each sweep's recipe before computing it."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.written = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(trainer.datamodule, "missing_files"):
            raise ValueError("SweepWriter needs a DataModule of sweep shards (datamodules.SweepDataModule or "
                             "datamodules.QueryDataModule).")
        self.written = 0

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if prediction["shard"] == NO_SHARD:
            return
        folder = prediction["sweep_dir"] if "sweep_dir" in prediction else trainer.datamodule.sweep_dir
        write_shard(folder, prediction["shard"], prediction["id"], prediction["loss"])
        self.written += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("sweep_written")
        missing = trainer.datamodule.missing_files()
        if missing:
            raise RuntimeError(f"{len(missing)} shard file(s) were not written (e.g. {[str(p) for p in missing[:3]]}); "
                               "run the same command again: written shards are skipped.")
        if trainer.is_global_zero:
            log.info("The sweep's shards are all written (%d by rank 0 in this run).", self.written)
