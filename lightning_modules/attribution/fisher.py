"""`FisherEstimation`: the diagonal empirical Fisher of a text-to-music model's training loss over its training set,
the preconditioner of attribution by unlearning (Wang et al., "Data Attribution for Text-to-Image Models by
Unlearning Synthesized Images", NeurIPS 2024; Choi et al., 2025 for music): per-item squared gradients of the
selected parameter groups, each at `draws` random (timestep, noise) pairs fixed by the item's id, summed over the
items, sum-reduced across ranks and divided by the number of items.

It runs as ``train.py predict`` (``configs/attribution/fisher.yaml``) over a DataModule of the training set, sharded
across ranks by Lightning's distributed sampler (which pads nothing in prediction; ids are still tracked so no item
counts twice). Predict runs without gradients (``torch.inference_mode`` unless ``trainer.inference_mode: false``);
each step re-enables them locally. The result is written atomically with its recipe (weights digest, parameter
groups, draws, seed, digest of the item ids) and the item count N, with its digest; a later run with the same recipe
skips the pass, one with another recipe raises, and a file that fails verification (changed, truncated, NaN) is
computed again with a warning naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from datamodules.attribution_store import FisherFile
from datamodules.interfaces import HasItems, require
from lightning_modules.attribution.settings import FISHER_DRAWS
from lightning_modules.gradients import squared_gradients, weights_digest
from lightning_modules.io import CorruptFileError, cache_key
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.module import ModelAudioFormat
from lightning_modules.passes import NonFiniteLossError

log = logging.getLogger(__name__)


def write_fisher(model: TextToMusicModel, parameter_groups: Sequence[str], batches: Sequence[Batch],
                 path: str | Path, *, seed: int = 0, draws: int = FISHER_DRAWS) -> int:
    """The diagonal Fisher of `model`'s `parameter_groups` over the items of `batches` in one process (each at
    `draws` draws, `squared_gradients`), written to `path` (`FisherFile`) at the model's weights; the ``requires_grad``
    flags are left as they were. For scripts and benchmarks; the CLI's sharded pass is `FisherEstimation`.

    Returns:
        The number of items.
    """
    params = model.select_parameters(parameter_groups)
    flags = [param.requires_grad for param in params]
    try:
        for param in params:
            param.requires_grad_(True)
        with torch.enable_grad():
            sums, count = squared_gradients(model, params, batches, seed=seed, draws=draws)
    finally:
        for param, flag in zip(params, flags, strict=True):
            param.requires_grad_(flag)
    FisherFile(path).save({name: value / count for name, value in zip(model.parameter_names(params), sums,
                                                                        strict=True)},
                          weights=weights_digest(sorted(model.state_dict().items())), count=count)
    return count


class FisherEstimation(ModelAudioFormat, L.LightningModule):
    """Computes (or reuses) the diagonal Fisher of the selected parameters over the predict DataModule's items.

    Args:
        model: the model whose Fisher to compute (at its current weights).
        fisher_path: the Fisher's file: skipped when it exists with this run's recipe, written otherwise.
        parameter_groups: names of the model's parameter groups to cover (those the unlearning will change).
        draws: (timestep, noise) draws per item; draw d uses ``model.fixed_loss_inputs(ids, seed + d)``.
        seed: seed of the per-item draws.
    """

    def __init__(self, model: TextToMusicModel, fisher_path: str, parameter_groups: Sequence[str] = ("all",),
                 draws: int = FISHER_DRAWS, seed: int = 0) -> None:
        super().__init__()
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}.")
        self.model = model
        self.fisher_path = Path(fisher_path)
        self.file = FisherFile(fisher_path)
        self.parameter_groups = list(parameter_groups)
        self.draws = draws
        self.seed = seed
        self.selected = model.select_parameters(self.parameter_groups)
        self.names = model.parameter_names(self.selected)
        self.model.requires_grad_(False)
        for param in self.selected:
            param.requires_grad_(True)
        self.recipe: dict[str, Any] = {}
        self.reused = False
        self._sums: list[Tensor] = []
        self._seen: set[str] = set()

    def make_recipe(self, ids: Sequence[str]) -> dict[str, Any]:
        """What the Fisher depends on: every weight of the model, the groups, the draws, the seed and the items."""
        return {"weights": weights_digest(sorted(self.model.state_dict().items())),
                "parameter_groups": self.parameter_groups, "draws": self.draws, "seed": self.seed,
                "items": cache_key(sorted(ids))}

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise ValueError(f"FisherEstimation runs as `train.py predict`, not {stage!r}.")
        datamodule = self.trainer.datamodule
        require(datamodule, HasItems, "FisherEstimation", "datamodules.items.ItemsDataModule (the training manifest)")
        self.ids = {item.id for item in datamodule.all_items()}
        self.recipe = self.make_recipe(sorted(self.ids))
        saved = self._saved()
        self.reused = saved is not None
        if saved is not None:
            fisher, info = saved
            self.file.check(info, **self.recipe)
            missing = [name for name in self.names if name not in fisher]
            if missing:
                raise ValueError(f"The Fisher information in {self.fisher_path} has no entry for {missing[:5]}; "
                                 "delete it to recompute it for this run's parameter groups.")
            self.trainer.limit_predict_batches = 0  # the prediction loop then loads no data and runs no step
            log.info("Fisher information %s matches this run; the pass is skipped.", self.fisher_path)

    def _saved(self) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """The Fisher file's content, or None when there is none or it fails verification (this pass, the one that
        writes it, then computes it again; a warning names the file)."""
        if not self.fisher_path.exists():
            return None
        try:
            return self.file.read()
        except CorruptFileError as error:
            log.warning("Computing the Fisher information again: %s", error)
            return None

    def on_predict_start(self) -> None:
        self._sums = [torch.zeros_like(param, dtype=torch.float32) for param in self.selected]
        self._seen = set()

    def predict_step(self, batch: Batch, batch_idx: int) -> list[str]:
        """Adds the squared gradients of each item not seen yet on this rank to the running sums; returns their ids."""
        fresh = [index for index, item_id in enumerate(batch["id"]) if item_id not in self._seen]
        unknown = [batch["id"][index] for index in fresh if batch["id"][index] not in self.ids]
        if unknown:
            raise ValueError(f"Items {unknown[:5]} are not among the DataModule's all_items().")
        if not fresh:
            return []
        # prediction runs under inference mode or no_grad: re-enable autograd, on tensors made outside inference mode
        with torch.inference_mode(False), torch.enable_grad():
            items = {key: ([value[i] for i in fresh] if isinstance(value, list) else value[fresh].clone())
                     for key, value in batch.items()}
            sums, _ = squared_gradients(self.model, self.selected, [items], seed=self.seed, draws=self.draws)
        for acc, value in zip(self._sums, sums, strict=True):
            acc += value
        self._seen.update(batch["id"][index] for index in fresh)
        return [batch["id"][index] for index in fresh]

    def on_predict_end(self) -> None:
        if self.reused:
            return
        strategy = self.trainer.strategy
        count = int(strategy.reduce(torch.tensor(float(len(self._seen)), device=self.device), reduce_op="sum"))
        if count != len(self.ids):
            raise RuntimeError(f"The ranks measured {count} items but the DataModule lists {len(self.ids)}: an item "
                               "was measured twice or never; check the predict sampler.")
        fisher = {name: strategy.reduce(value, reduce_op="sum") / count
                  for name, value in zip(self.names, self._sums, strict=True)}
        bad = [name for name, value in fisher.items() if not bool(torch.isfinite(value).all())]
        if bad:  # each batch was checked (squared_gradients); this catches what the reduction across ranks adds
            raise NonFiniteLossError(f"The Fisher information of {count} items is not finite (NaN or infinite) in "
                                     f"{len(bad)} parameter(s) (e.g. {bad[:5]}); nothing was written to "
                                     f"{self.fisher_path}. Every item's loss and gradient was finite: the sum over "
                                     "items overflowed or the reduction across processes failed; check the precision "
                                     "and the processes' logs.", sorted(self._seen))
        if self.trainer.is_global_zero:
            self.file.save(fisher, **self.recipe, count=count, names=self.names, model=type(self.model).__name__)
            log.info("Fisher information of %d items written to %s.", count, self.fisher_path)
        strategy.barrier("fisher_written")
