"""`SweepWriter`: writes what `LossSweep` predicts into the `SweepDataModule`'s sweep folder, one atomic file per
shard, with the sweep's recipe, so an interrupted sweep resumes where it stopped and a sweep is never continued with
another model, weights, draws or items (attribution by unlearning, Choi et al. 2025, arXiv 2506.18312)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.sweep import NO_SHARD, RECIPE_FILE, ids_digest, shard_path
from lightning_modules.io import atomic_file, write_json_atomic

log = logging.getLogger(__name__)


class SweepWriter(BasePredictionWriter):
    """Writes ``shard-NNNNN.pt`` (``{"id", "loss"}``) into ``data.sweep_dir``; every rank writes its own shards.

    At setup the sweep's recipe (model, weights digest, draws, seed, masking, shard size, items) is compared with the
    folder's ``sweep.json`` (rank 0 writes it when absent); at the end every shard must be there.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.sweep_dir: Path | None = None
        self.written = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        data = trainer.datamodule
        if getattr(data, "sweep_dir", None) is None or not hasattr(pl_module, "recipe"):
            raise ValueError("SweepWriter needs a SweepDataModule (data.init_args.sweep_dir) and a LossSweep model.")
        self.sweep_dir = Path(data.sweep_dir)
        ids = [item.id for item in data.all_items()]
        recipe = {**pl_module.recipe(), "shard_size": data.shard_size, "num_items": len(ids), "ids": ids_digest(ids)}
        path = self.sweep_dir / RECIPE_FILE
        if path.is_file():
            saved = json.loads(path.read_text())
            differs = sorted(key for key in recipe.keys() | saved.keys() if saved.get(key) != recipe.get(key))
            if differs:
                raise ValueError(f"{self.sweep_dir} holds a sweep with other {', '.join(differs)} than this run's "
                                 f"({ {key: saved.get(key) for key in differs} } there, "
                                 f"{ {key: recipe.get(key) for key in differs} } now); give another "
                                 "data.init_args.sweep_dir, or delete the folder to start over.")
        elif any(self.sweep_dir.glob("shard-*.pt")):
            raise ValueError(f"{self.sweep_dir} holds shard files but no {RECIPE_FILE}, so what they measured is "
                             "unknown; delete them or give another data.init_args.sweep_dir.")
        elif trainer.is_global_zero:
            write_json_atomic(path, recipe)
        self.written = 0

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if prediction["shard"] == NO_SHARD:
            return
        with atomic_file(shard_path(self.sweep_dir, prediction["shard"])) as tmp:
            torch.save({"id": list(prediction["id"]), "loss": prediction["loss"].detach().cpu().float()}, tmp)
        self.written += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("sweep_written")
        missing = trainer.datamodule.missing_shards()
        if missing:
            raise RuntimeError(f"{len(missing)} shard(s) of the sweep in {self.sweep_dir} were not written (e.g. "
                               f"{[shard_path(self.sweep_dir, i).name for i in missing[:5]]}); run the same command "
                               "again: written shards are skipped.")
        if trainer.is_global_zero:
            log.info("Loss sweep %s holds all %d shards (%d written by rank 0 in this run).", self.sweep_dir,
                     trainer.datamodule.num_shards, self.written)
