"""`SweepDataModule`: the training set of a loss sweep (attribution by unlearning, Choi et al. 2025, arXiv 2506.18312,
after Wang et al. 2024, arXiv 2406.09408), sorted by id and cut into fixed shards, one shard per ``predict`` step,
only the shards not yet written; with the sweep folder's layout (`shard_path`, `RECIPE_FILE`) and `read_sweep`, which
assembles a finished sweep. Shards do not depend on the number of processes, so a sweep interrupted on 8 GPUs can be
resumed on 1 and ends with the same files. Shards and the recipe carry a digest (`lightning_modules.io`): a shard that
fails verification counts as not written and is computed again; a bad recipe is an error naming it."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.audio import AudioTextDataset
from datamodules.base import ManifestDataModule
from datamodules.manifest import ManifestItem, check_audio_files, read_manifest
from datamodules.source import DataSource
from lightning_modules.io import (
    CorruptFileError,
    StrListField,
    TensorField,
    load_verified,
    read_json_verified,
    reusable,
    save_verified,
    write_json_verified,
)

RECIPE_FILE = "sweep.json"
SHARD = "loss sweep shard"
SHARD_STRUCTURE = {"id": StrListField(), "loss": TensorField(ndim=2, dtype=torch.float32, finite=True)}
NO_SHARD = -1  # the index of a placeholder step: ranks with nothing left to compute still run the pass's hooks


def shard_path(sweep_dir: str | os.PathLike, index: int) -> Path:
    """The file of shard `index` in `sweep_dir`."""
    return Path(sweep_dir) / f"shard-{index:05d}.pt"


def _rerun(sweep_dir: str | os.PathLike) -> str:
    return f"run the command that wrote the sweep {sweep_dir} again: it recomputes missing and bad shards"


def write_shard(sweep_dir: str | os.PathLike, index: int, ids: Sequence[str], loss: Tensor) -> None:
    """Write shard `index` of `sweep_dir`: its item `ids` and their losses `(items, draws)` (float32), with its
    digest, atomically."""
    save_verified({"id": list(ids), "loss": loss.detach().cpu().float()}, shard_path(sweep_dir, index))


def read_shard(sweep_dir: str | os.PathLike, index: int) -> tuple[list[str], Tensor]:
    """The ids and losses `(items, draws)` of shard `index`, verified (digest, structure, finite losses).

    Raises:
        FileNotFoundError: the shard was not written.
        CorruptFileError: it fails verification; the message names the file.
    """
    path = shard_path(sweep_dir, index)
    shard = load_verified(path, SHARD, _rerun(sweep_dir), SHARD_STRUCTURE)
    if len(shard["loss"]) != len(shard["id"]):
        raise CorruptFileError(path, SHARD, f"holds {len(shard['id'])} ids but {len(shard['loss'])} rows of losses",
                               _rerun(sweep_dir))
    return shard["id"], shard["loss"]


def shard_done(sweep_dir: str | os.PathLike, index: int) -> bool:
    """Whether shard `index` of `sweep_dir` is written and passes verification; a bad one is logged with a warning
    (it is computed again)."""
    return reusable(shard_path(sweep_dir, index), lambda _: read_shard(sweep_dir, index))


def read_recipe(sweep_dir: str | os.PathLike) -> dict:
    """The recipe (``sweep.json``) of the sweep in `sweep_dir`, verified.

    Raises:
        FileNotFoundError: there is none.
        CorruptFileError: it fails verification (or is not a JSON object); the message names it.
    """
    path = Path(sweep_dir) / RECIPE_FILE
    remedy = (f"what the sweep's shards measured is unknown: delete the folder {sweep_dir} and run the sweep again "
              "(or give another folder)")
    recipe = read_json_verified(path, "loss sweep recipe", remedy)
    if not isinstance(recipe, dict):
        raise CorruptFileError(path, "loss sweep recipe", f"holds {type(recipe).__name__}, not a JSON object", remedy)
    return recipe


def ids_digest(ids: Sequence[str]) -> str:
    """A hash of the sorted item ids: which training set a sweep covers."""
    return hashlib.blake2b("\n".join(sorted(ids)).encode(), digest_size=12).hexdigest()


def open_sweep(sweep_dir: str | os.PathLike, recipe: dict, write: bool) -> None:
    """Check that `sweep_dir` holds a sweep with this `recipe` (what its losses depend on), or none yet; with `write`,
    record the recipe in a new folder (``sweep.json`` with its digest, atomically). Called before any shard is computed,
    so a sweep is never continued with another model, weights, draws or items.

    Raises:
        ValueError: the folder holds a sweep with another recipe (the message names the differing keys), or shard
            files without a recipe.
        CorruptFileError: the recipe fails verification.
    """
    folder = Path(sweep_dir)
    path = folder / RECIPE_FILE
    if path.is_file():
        saved = read_recipe(folder)
        differs = sorted(key for key in recipe.keys() | saved.keys() if saved.get(key) != recipe.get(key))
        if differs:
            raise ValueError(f"{folder} holds a sweep with other {', '.join(differs)} than this run's "
                             f"({ {key: saved.get(key) for key in differs} } there, "
                             f"{ {key: recipe.get(key) for key in differs} } now); give another folder, or delete "
                             "it to start over.")
    elif any(folder.glob("shard-*.pt")):
        raise ValueError(f"{folder} holds shard files but no {RECIPE_FILE}, so what they measured is unknown; delete "
                         "them or give another folder.")
    elif write:
        write_json_verified(path, recipe)


def read_sweep(sweep_dir: str | os.PathLike) -> tuple[list[str], Tensor]:
    """The ids (sorted) and losses `(items, draws)` of a finished sweep, assembled from its shard files.

    Raises:
        FileNotFoundError: `sweep_dir` holds no sweep recipe, or a shard is missing (re-run the sweep to finish it).
        CorruptFileError: the recipe or a shard fails verification (the message names the file).
        ValueError: the shards do not hold the items the recipe names.
    """
    folder = Path(sweep_dir)
    recipe_path = folder / RECIPE_FILE
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{recipe_path} not found: {folder} holds no loss sweep. Run one first: "
                                "`python train.py predict --config configs/attribution/sweep.yaml "
                                f"--data.init_args.sweep_dir {folder}`.")
    recipe = read_recipe(folder)
    num_shards = math.ceil(recipe["num_items"] / recipe["shard_size"])
    missing = [index for index in range(num_shards) if not shard_path(folder, index).is_file()]
    if missing:
        raise FileNotFoundError(f"The sweep in {folder} is incomplete: {len(missing)} of {num_shards} shard(s) are "
                                f"missing (e.g. {[shard_path(folder, i).name for i in missing[:5]]}). Run the same "
                                "sweep command again: written shards are skipped.")
    ids: list[str] = []
    losses = []
    for index in range(num_shards):
        shard_ids, shard_losses = read_shard(folder, index)
        ids.extend(shard_ids)
        losses.append(shard_losses)
    if ids != sorted(ids) or len(ids) != recipe["num_items"] or ids_digest(ids) != recipe["ids"]:
        raise ValueError(f"The shards in {folder} do not hold the items its {RECIPE_FILE} names; delete the folder "
                         "and run the sweep again.")
    return ids, torch.cat(losses)


class ShardDataset(Dataset):
    """One element per shard still to compute: ``{"shard": index, "batch": collated items}``; `NO_SHARD` entries
    give ``{"shard": NO_SHARD}``.

    Args:
        items: every item of the sweep, sorted by id, in the model's format.
        shard_size: items per shard.
        shards: the indices of the shards to compute (and `NO_SHARD` placeholders).
    """

    def __init__(self, items: AudioTextDataset, shard_size: int, shards: Sequence[int]) -> None:
        self.items = items
        self.shard_size = shard_size
        self.shards = list(shards)

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> dict:
        shard = self.shards[index]
        return {"shard": NO_SHARD} if shard == NO_SHARD else self.element(shard)

    def element(self, shard: int) -> dict:
        """``{"shard": shard, "batch": its items collated}``."""
        start = shard * self.shard_size
        stop = min(start + self.shard_size, len(self.items))
        return {"shard": shard, "batch": default_collate([self.items[i] for i in range(start, stop)])}


def _single(elements: list[dict]) -> dict:
    """The collate function of a loader of one shard per step."""
    return elements[0]


class ShardedItemsDataModule(ManifestDataModule):
    """The items of a training manifest sorted by id and cut into fixed shards: what every sweep shares.

    Args:
        manifest: JSONL or CSV manifest of the training items to score.
        shard_size: items per shard, the unit of work, resumption and distribution over ranks; a shard is loaded
            whole, so its items must fit in memory (audio, or cached targets with `cache_dir`).
        num_workers: DataLoader worker processes (each loads whole shards).
        sample_rate: the model's sample rate in Hz (linked from the model by the CLI).
        num_samples: the model's clip length in samples (linked from the model by the CLI).
        source: writes the data in ``prepare_data`` when missing (e.g. the toy corpus).
        cache_dir: folder of cached `encode_audio` outputs (the encoding pass, ``configs/encode.yaml``); every item
            must be encoded, and the sweep then reads targets instead of audio.
    """

    def __init__(self, manifest: str, shard_size: int = 256, num_workers: int = 0, sample_rate: int = 16000,
                 num_samples: int = 32768, source: DataSource | None = None, cache_dir: str | None = None) -> None:
        super().__init__(num_workers, sample_rate, num_samples, source, cache_dir)
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}.")
        self.manifest = manifest
        self.shard_size = shard_size
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def setup(self, stage: str) -> None:
        items = read_manifest(self.manifest)
        if not items:
            raise ValueError(f"{self.manifest} lists no items; the sweep needs at least one.")
        check_audio_files(items, self.manifest)
        self.items = sorted(items, key=lambda item: item.id)
        self._open_cache(writing=False)  # the sweep reads the cache, as training does: every item encoded
        self.item_set = self.dataset(self.items, "sweep", with_audio=False)

    def all_items(self) -> list[ManifestItem]:
        return self.items

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.items) / self.shard_size)

    def recipe(self) -> dict:
        """What the sweep's losses depend on besides the model: the items and their sharding."""
        ids = [item.id for item in self.items]
        return {"shard_size": self.shard_size, "num_items": len(ids), "ids": ids_digest(ids)}

    def missing_files(self) -> list[Path]:
        """The shard files still to write (what `SweepWriter` checks at the end of the pass)."""
        raise NotImplementedError

    def _loader(self, dataset: Dataset) -> DataLoader:
        """One element per step (a whole shard); every rank lists the folders before any writes (a barrier), so
        all ranks split the same list of work."""
        if self.trainer is not None:
            self.trainer.strategy.barrier("sweep_shards_listed")
        return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=_single, num_workers=self.num_workers)

    def _pad_for_ranks(self, todo: list, placeholder: object = NO_SHARD) -> list:
        """`todo` padded with `placeholder` steps to at least one per rank, so that every rank runs the writer's
        start and end hooks (and their barriers)."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return todo + [placeholder] * max(0, world_size - len(todo))


class SweepDataModule(ShardedItemsDataModule):
    """The items of a manifest in fixed shards, for `LossSweep` and `SweepWriter` (``train.py predict``).

    Args:
        manifest: JSONL or CSV manifest of the training items to score.
        sweep_dir: the folder the sweep writes (`SweepWriter`): one file per shard and the recipe; shards already
            there are skipped.
        shard_size, num_workers, sample_rate, num_samples, source, cache_dir: as in `ShardedItemsDataModule`.
    """

    def __init__(self, manifest: str, sweep_dir: str, shard_size: int = 256, num_workers: int = 0,
                 sample_rate: int = 16000, num_samples: int = 32768, source: DataSource | None = None,
                 cache_dir: str | None = None) -> None:
        super().__init__(manifest, shard_size, num_workers, sample_rate, num_samples, source, cache_dir)
        self.sweep_dir = sweep_dir

    def missing_shards(self) -> list[int]:
        """The indices of the shards without a good file in `sweep_dir` (missing, or failing verification), in order."""
        return [index for index in range(self.num_shards) if not shard_done(self.sweep_dir, index)]

    def missing_files(self) -> list[Path]:
        return [shard_path(self.sweep_dir, index) for index in self.missing_shards()]

    def predict_dataloader(self) -> DataLoader:
        """One shard per step, only the shards not yet written, at least one step per rank."""
        todo = self._pad_for_ranks(self.missing_shards())
        return self._loader(ShardDataset(self.item_set, self.shard_size, todo))
