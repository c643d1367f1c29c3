"""`TargetCacheWriter`: writes what `TargetEncoding` predicts into the DataModule's target cache, one atomic file per
item, so an interrupted pass resumes where it stopped (the DataModule only serves items not yet written)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.target_cache import TargetCache

log = logging.getLogger(__name__)


class TargetCacheWriter(BasePredictionWriter):
    """Writes each predicted item to the DataModule's ``encoding_cache`` (``<data.cache_dir>/<model targets key>/``);
    every rank writes its own shard."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.cache: TargetCache | None = None
        self.written = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.cache = getattr(trainer.datamodule, "encoding_cache", None)  # opened (and keyed) by its setup
        if self.cache is None:
            raise ValueError("TargetCacheWriter needs a DataModule with `cache_dir` set (data.init_args.cache_dir).")
        self.written = 0

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        for item_id, targets, num_valid in zip(prediction["id"], prediction["targets"], prediction["num_valid"],
                                               strict=True):
            self.cache.save(item_id, targets, int(num_valid))
        self.written += len(prediction["id"])

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("target_cache_written")
        ids = [item.id for item in trainer.datamodule.all_items()]
        missing = self.cache.missing(ids)
        if missing:
            raise RuntimeError(f"{len(missing)} item(s) were not encoded into {self.cache.folder} (e.g. "
                               f"{missing[:5]}); run the same command again: encoded items are skipped.")
        if trainer.is_global_zero:
            log.info("Target cache %s holds all %d items (%d encoded by rank 0 in this run).", self.cache.folder,
                     len(set(ids)), self.written)
