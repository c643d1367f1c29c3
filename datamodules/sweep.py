"""`SweepDataModule`: the training set of a loss sweep (attribution by unlearning, Choi et al. 2025, arXiv 2506.18312,
after Wang et al. 2024, arXiv 2406.09408), sorted by id and cut into fixed shards, one shard per ``predict`` step,
only the shards not yet written in the sweep's folder (a `datamodules.attribution_store.Sweep`, which owns the files).
Shards do not depend on the number of processes, so a sweep interrupted on 8 GPUs can be resumed on 1 and ends with
the same files; a shard that fails verification counts as not written and is computed again."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.attribution_store import FeatureStore, Sweep, ids_digest
from datamodules.audio import AudioTextDataset
from datamodules.base import ManifestDataModule
from datamodules.manifest import ManifestItem, check_audio_files, read_manifest
from datamodules.source import DataSource

NO_SHARD = -1  # the index of a placeholder step: ranks with nothing left to compute still run the pass's hooks


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
        sweep_dir: the folder the sweep writes (`SweepWriter`, through `sweep`, a
            `datamodules.attribution_store.Sweep`): one file per shard and the recipe; shards already there are
            skipped.
        shard_size, num_workers, sample_rate, num_samples, source, cache_dir: as in `ShardedItemsDataModule`.
    """

    def __init__(self, manifest: str, sweep_dir: str, shard_size: int = 256, num_workers: int = 0,
                 sample_rate: int = 16000, num_samples: int = 32768, source: DataSource | None = None,
                 cache_dir: str | None = None) -> None:
        super().__init__(manifest, shard_size, num_workers, sample_rate, num_samples, source, cache_dir)
        self.sweep_dir = sweep_dir
        self.sweep = Sweep(sweep_dir)

    def missing_shards(self) -> list[int]:
        """The indices of the shards without a good file in `sweep_dir` (missing, or failing verification), in order."""
        return self.sweep.missing_shards(self.num_shards)

    def missing_files(self) -> list[Path]:
        return [self.sweep.shard_path(index) for index in self.missing_shards()]

    def predict_dataloader(self) -> DataLoader:
        """One shard per step, only the shards not yet written, at least one step per rank."""
        todo = self._pad_for_ranks(self.missing_shards())
        return self._loader(ShardDataset(self.item_set, self.shard_size, todo))


class FeatureStoreDataModule(SweepDataModule):
    """The items of a manifest in fixed shards, for `FeatureStorePass` and `SweepWriter`: as `SweepDataModule`, with
    `sweep_dir` the folder of a `datamodules.attribution_store.FeatureStore`."""

    def __init__(self, manifest: str, sweep_dir: str, shard_size: int = 256, num_workers: int = 0,
                 sample_rate: int = 16000, num_samples: int = 32768, source: DataSource | None = None,
                 cache_dir: str | None = None) -> None:
        super().__init__(manifest, sweep_dir, shard_size, num_workers, sample_rate, num_samples, source, cache_dir)
        self.sweep = FeatureStore(sweep_dir)
