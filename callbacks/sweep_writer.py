"""`SweepWriter`: writes the loss sweeps of attribution by unlearning (Choi et al. 2025, arXiv 2506.18312), what
`LossSweep` and `QueryAttribution` predict, one atomic file per shard, so an interrupted sweep resumes where it
stopped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.interfaces import ShardWork, require
from datamodules.sweep import NO_SHARD

log = logging.getLogger(__name__)


class SweepWriter(BasePredictionWriter):
    """Writes each prediction ``{"sweep", "shard", "id", "rows"}`` (or each of a list of them) into its sweep (a
    `datamodules.attribution_store.Sweep`: the DataModule's in `LossSweep`, one per query in `QueryAttribution`), one
    file per shard with its digest; every rank writes its own shards, and at the end every shard the DataModule lists
    (``missing_files()``: missing or failing verification) must be there. The module checks and records each sweep's
    recipe before computing it."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.written = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require(trainer.datamodule, ShardWork, "SweepWriter", "datamodules.sweep.SweepDataModule")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written = 0

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict | list[dict],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        for one in prediction if isinstance(prediction, list) else [prediction]:  # a list: several queries' sweeps
            if one["shard"] != NO_SHARD:
                one["sweep"].write_shard(one["shard"], one["id"], one["rows"])
                self.written += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("sweep_written")
        missing = trainer.datamodule.missing_files()
        if missing:
            raise RuntimeError(f"{len(missing)} shard file(s) were not written (e.g. {[str(p) for p in missing[:3]]}); "
                               "run the same command again: written shards are skipped.")
        if trainer.is_global_zero:
            log.info("The sweep's shards are all written (%d by rank 0 in this run).", self.written)
