"""`AudioTextDataModule`: training and validation batches of (audio, caption) from a manifest, for training or
fine-tuning a text-to-music model (the toy base model, an oracle retrained without a forget set, a real model)."""

from __future__ import annotations

import logging

from torch.utils.data import DataLoader

from datamodules.audio import make_loader
from datamodules.base import ManifestDataModule, check_batch_sizes, per_process_batch
from datamodules.manifest import ManifestItem, check_audio_files, read_manifest
from datamodules.provenance import TrainingRecord
from datamodules.source import DataSource

log = logging.getLogger(__name__)


class AudioTextDataModule(ManifestDataModule):
    """Audio-text batches from a manifest.

    Args:
        manifest: JSONL or CSV manifest of the training items.
        val_manifest: manifest of validation items; none when not given.
        exclude_groups: groups left out of both sets (an oracle trained without the forget artist).
        exclude_ids: ids of training items to leave out (an oracle trained without a list of tracks).
        exclude_manifest: a manifest of training items to leave out (each must be in `manifest`).
        batch_size: items per batch and process; default 16, unless `global_batch_size` is given.
        num_workers: DataLoader worker processes.
        sample_rate: the model's sample rate in Hz (linked from the model by the CLI).
        num_samples: the model's clip length in samples (linked from the model by the CLI).
        source: writes the data in ``prepare_data`` when missing (e.g. the toy corpus).
        cache_dir: folder of cached `encode_audio` outputs; training losses read them instead of the audio.
        encode_batch_size: items per batch of the encoding pass (``predict``).
        global_batch_size: training items per optimizer step over all processes, split evenly among them (a
            multiple of the process count), so that the batch does not grow with ``--trainer.devices``; None:
            `batch_size` per process.
        seed: seed of the training order (a permutation per epoch, the same on any number of processes).
    """

    def __init__(
        self,
        manifest: str,
        val_manifest: str | None = None,
        exclude_groups: list[str] | None = None,
        exclude_ids: list[str] | None = None,
        exclude_manifest: str | None = None,
        batch_size: int | None = None,
        num_workers: int = 0,
        sample_rate: int = 16000,
        num_samples: int = 32768,
        source: DataSource | None = None,
        cache_dir: str | None = None,
        encode_batch_size: int = 16,
        global_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_workers, sample_rate, num_samples, source, cache_dir, encode_batch_size)
        self.manifest = manifest
        self.val_manifest = val_manifest
        self.exclude_groups = list(exclude_groups or [])
        self.exclude_ids = list(exclude_ids or [])
        self.exclude_manifest = exclude_manifest
        check_batch_sizes(batch_size=batch_size, global_batch_size=global_batch_size)
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.seed = seed

    def _kept(self, manifest: str, items: list[ManifestItem], excluded_ids: frozenset[str] = frozenset()
              ) -> list[ManifestItem]:
        """The items of `manifest` that are not left out, their audio checked."""
        groups = {item.group for item in items}
        unknown = [group for group in self.exclude_groups if group not in groups]
        if unknown:
            raise ValueError(f"exclude_groups {unknown} are not groups of {manifest}; its groups: {sorted(groups)}.")
        items = [item for item in items if item.group not in self.exclude_groups and item.id not in excluded_ids]
        if not items:
            raise ValueError(f"No item of {manifest} is left after excluding groups {self.exclude_groups} and "
                             f"{len(excluded_ids)} listed id(s).")
        check_audio_files(items, manifest)
        return items

    def _excluded_ids(self, members: list[ManifestItem]) -> frozenset[str]:
        """The ids `exclude_ids` and `exclude_manifest` name, each checked to be a training item."""
        wanted = self.exclude_ids + ([item.id for item in read_manifest(self.exclude_manifest)]
                                     if self.exclude_manifest else [])
        unknown = sorted(set(wanted) - {item.id for item in members})
        if unknown:
            source = " and ".join(name for name, value in (("exclude_ids", self.exclude_ids),
                                                           ("exclude_manifest", self.exclude_manifest)) if value)
            raise ValueError(f"{len(unknown)} id(s) of {source} are not in {self.manifest}: {unknown[:10]}; only "
                             "training items can be left out.")
        return frozenset(wanted)

    def setup(self, stage: str) -> None:
        self.members = read_manifest(self.manifest)
        self.train_items = self._kept(self.manifest, self.members, self._excluded_ids(self.members))
        self.val_items = self._kept(self.val_manifest, read_manifest(self.val_manifest)) if self.val_manifest else []
        self._open_cache(writing=stage == "predict")
        self.train_set = self.dataset(self.train_items, with_audio=False)
        self.val_set = self.dataset(self.val_items) if self.val_items else None
        rank, world_size = self.world if stage == "fit" else (0, 1)  # other stages batch validation items only
        self.train_batch = per_process_batch(self.batch_size, self.global_batch_size, world_size, 16)
        if stage == "fit" and rank == 0:
            log.info("Training batches: %d items per process x %d process(es) = %d per optimizer step.",
                     self.train_batch, world_size, self.train_batch * world_size)

    def all_items(self) -> list[ManifestItem]:
        return self.train_items + self.val_items

    def training_record(self) -> TrainingRecord:
        """What a model trained on this DataModule saw (`SavePretrained` keeps it beside the weights)."""
        trained = {item.id for item in self.train_items}
        return TrainingRecord.of(self.manifest, self.train_items,
                                 [item for item in self.members if item.id not in trained], self.exclude_groups)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.train_set, self.train_batch, self.seed, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return make_loader(self.val_set, self.train_batch, shuffle=False, num_workers=self.num_workers)
