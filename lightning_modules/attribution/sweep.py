"""`LossSweep`: the per-track loss over the training set at fixed timesteps and noise, the measurement attribution by
unlearning takes before and after unlearning a query (Choi et al. 2025, arXiv 2506.18312, after Wang et al. 2024,
arXiv 2406.09408: 20 draws per item, the noise fixed so both sweeps see the same inputs). Run as ``train.py predict``
with `datamodules.SweepDataModule` (one shard per step) and `callbacks.SweepWriter` (atomic per-shard files): every
item is repeated once per draw inside a batch, so the sweep costs a few batched forwards per shard, not a loop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from datamodules.attribution_store import Delta
from datamodules.interfaces import SweepWork, require
from lightning_modules.attribution.precision import require_float32
from lightning_modules.attribution.settings import SWEEP_DRAWS
from lightning_modules.gradients import weights_digest
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.module import ModelAudioFormat
from lightning_modules.passes import check_finite


def load_delta(model: TextToMusicModel, path: str | os.PathLike) -> None:
    """Copy the tensors of `path` (a dict parameter name -> tensor saved with `torch.save`, names as in
    ``model.state_dict()``) into `model`'s weights.

    Raises:
        FileNotFoundError: `path` does not exist.
        CorruptFileError: the file fails verification (digest, a dict of name -> finite tensor; `Delta.read`).
        ValueError: the file names weights the model lacks or shapes it does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_delta {path} not found; give the parameters file the query unlearning "
                                "wrote, or leave pretrained_delta unset for the 'before' sweep.")
    set_weights(model, Delta(path).read(), str(path))


def set_weights(model: TextToMusicModel, values: dict[str, Tensor], source: str = "the given weights") -> None:
    """Copy `values` (weight name -> tensor, names as in ``model.state_dict()``) into `model`'s weights.

    Raises:
        ValueError: `values` names weights the model lacks, or shapes it does not have (the message names `source`).
    """
    state = model.state_dict()
    unknown = sorted(name for name in values if name not in state)
    if unknown:
        raise ValueError(f"{source} names {len(unknown)} weight(s) {type(model).__name__} does not have (e.g. "
                         f"{unknown[:5]}); was it written for another model?")
    wrong = sorted(name for name, value in values.items() if value.shape != state[name].shape)
    if wrong:
        raise ValueError(f"{source} holds weights of other shapes than {type(model).__name__}'s: {wrong[:5]}.")
    with torch.no_grad():
        for name, value in values.items():
            state[name].copy_(value)


def _rows(batch: Batch, index: Tensor) -> Batch:
    """The items of `batch` at `index` (tensors indexed, lists picked)."""
    picked = index.tolist()
    return {key: value[index.to(value.device)] if isinstance(value, Tensor) else [value[i] for i in picked]
            for key, value in batch.items()}  # type: ignore[return-value]


def sweep_recipe(model: TextToMusicModel, draws: int, seed: int, masked: bool) -> dict[str, Any]:
    """What a sweep's losses depend on, besides the items: the model, its weights and the draws."""
    return {"model": f"{type(model).__module__}.{type(model).__qualname__}", "targets_key": model.targets_key(),
            "weights": weights_digest(model.state_dict().items()), "draws": draws, "seed": seed, "masked": masked}


def _fixed_inputs(model: TextToMusicModel, ids: list[str], draws: list[int], seed: int) -> dict[str, Tensor]:
    """`loss` inputs for the rows (ids[i], draws[i]): one `fixed_loss_inputs` call per distinct draw."""
    columns: dict[str, list[tuple[list[int], Tensor]]] = {}
    for draw in sorted(set(draws)):
        positions = [i for i, d in enumerate(draws) if d == draw]
        inputs = model.fixed_loss_inputs([ids[i] for i in positions], seed + draw)
        for key, value in inputs.items():
            columns.setdefault(key, []).append((positions, value))
    fixed = {}
    for key, parts in columns.items():
        first = parts[0][1]
        out = first.new_empty((len(ids), *first.shape[1:]))
        for positions, value in parts:
            out[positions] = value
        fixed[key] = out
    return fixed


def sweep_inputs(model: TextToMusicModel, batch: Batch, masked: bool = True, micro_batch_size: int = 16) -> Batch:
    """`batch` as the sweep measures it: with ``masked=False`` its padding counted as audio, and its items encoded
    once (`with_targets`, `micro_batch_size` at a time), not once per draw. Several sweeps of the same items at weights
    that share the encoder (queries unlearned in the denoiser) can measure one prepared batch."""
    if not masked:
        batch = {**batch, "mask": torch.ones_like(batch["mask"])}  # type: ignore[assignment]
    return model.with_targets(batch, micro_batch_size)


def sweep_losses(model: TextToMusicModel, batch: Batch, draws: int, seed: int, masked: bool = True,
                 micro_batch_size: int = 16) -> Tensor:
    """The loss of every item of `batch` at each of `draws` fixed draws, `(items, draws)` float32 on the CPU: draw k
    of an item is ``model.fixed_loss_inputs([id], seed + k)``, a function of the id, the seed and k alone, so every
    sweep (before and after unlearning, any sharding or batching) sees the same inputs. Each item's audio is encoded
    once (`with_targets`), its targets repeated once per draw, and the (item, draw) rows run in micro-batches of
    `micro_batch_size`, without gradients; `masked=False` measures padded audio as if it were real. A NaN or infinite
    loss raises `NonFiniteLossError` naming the items, before any writer sees the shard. Weights below float32 or
    autocast raise `ValueError` (`require_float32`: the scores are loss changes below bfloat16's resolution)."""
    require_float32(model, "The loss sweep")
    batch = sweep_inputs(model, batch, masked, micro_batch_size)
    num_items = len(batch["id"])
    item_of_row = torch.arange(num_items).repeat_interleave(draws)
    draw_of_row = torch.arange(draws).repeat(num_items)
    out = torch.empty(num_items * draws, dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, len(out), micro_batch_size):
            rows = slice(start, start + micro_batch_size)
            part = _rows(batch, item_of_row[rows])
            inputs = _fixed_inputs(model, part["id"], draw_of_row[rows].tolist(), seed)
            out[rows] = model.loss(part, **inputs).float().cpu()
    losses = out.view(num_items, draws)
    check_finite(losses, list(batch["id"]), "loss sweep's per-item loss")  # on the CPU: no further device sync
    return losses


class LossSweep(ModelAudioFormat, L.LightningModule):
    """Predicts the loss of every item of a shard at `draws` fixed (timestep, noise) pairs; a `SweepWriter` writes them.

    Draw k of an item is ``model.fixed_loss_inputs([id], seed + k)``: a function of the id, the seed and k alone, so
    every run (before and after unlearning, any sharding or batching) sees the same inputs.

    Args:
        model: the model whose losses to measure.
        pretrained_delta: a file of parameters to load on top of `model` (name -> tensor, `torch.save`): the weights
            after unlearning a query; None measures the model as it is (the "before" sweep).
        draws: timestep / noise draws per item; one when the model's losses draw nothing (autoregressive models).
        seed: the seed of the first draw.
        micro_batch_size: (item, draw) pairs per forward pass.
        masked: honour the padding mask in the loss; False measures padded audio as if it were real (the "none"
            and "mixed" silence-masking variants).
    """

    def __init__(self, model: TextToMusicModel, pretrained_delta: str | None = None, draws: int = SWEEP_DRAWS,
                 seed: int = 0, micro_batch_size: int = 16, masked: bool = True) -> None:
        super().__init__()
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}.")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be at least 1, got {micro_batch_size}.")
        self.model = model.requires_grad_(False).eval()
        self.pretrained_delta = pretrained_delta
        if pretrained_delta is not None:
            load_delta(self.model, pretrained_delta)
        self.seed = seed
        self.micro_batch_size = micro_batch_size
        self.masked = masked
        self.draws = draws if model.fixed_loss_inputs(["draws"], seed) else 1

    def recipe(self) -> dict[str, Any]:
        """What the losses depend on, besides the items: the model, its weights (with the delta) and the draws."""
        return sweep_recipe(self.model, self.draws, self.seed, self.masked)

    def losses(self, batch: Batch) -> Tensor:
        """The loss of every item of `batch` at each draw, `(items, draws)` float32 (`sweep_losses`)."""
        return sweep_losses(self.model, batch, self.draws, self.seed, self.masked, self.micro_batch_size)

    def setup(self, stage: str) -> None:
        """Check the sweep folder holds this sweep or none yet (rank 0 records the recipe), before any shard."""
        if stage != "predict":
            raise ValueError(f"LossSweep runs as `train.py predict` (with a SweepDataModule), not {stage!r}.")
        require_float32(self.model, "LossSweep", self.trainer)
        data = self.trainer.datamodule
        require(data, SweepWork, "LossSweep", "datamodules.sweep.SweepDataModule")
        data.sweep.open({**self.recipe(), **data.recipe()}, write=self.trainer.is_global_zero)
        self.trainer.strategy.barrier("sweep_recipe_checked")

    def predict_step(self, shard: dict, batch_idx: int = 0) -> dict:
        """``{"sweep", "shard": index, "id": ids, "rows": losses (items, draws)}`` for a `SweepDataModule` shard; a
        placeholder step (no ``batch``) gives no ids."""
        if "batch" not in shard:
            return {"shard": int(shard["shard"]), "id": [], "rows": torch.empty(0, self.draws)}
        self.model.eval()
        return {"sweep": self.trainer.datamodule.sweep, "shard": int(shard["shard"]),
                "id": list(shard["batch"]["id"]), "rows": self.losses(shard["batch"])}
