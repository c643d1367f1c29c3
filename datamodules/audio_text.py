"""`AudioTextDataModule`: training and validation batches of (audio, caption) from a manifest, for training or
fine-tuning a text-to-music model (the toy base model, an oracle retrained without a forget set, a real model)."""

from __future__ import annotations

from torch.utils.data import DataLoader

from datamodules.audio import make_loader
from datamodules.base import ManifestDataModule
from datamodules.manifest import ManifestItem, check_audio_files, read_manifest
from datamodules.source import DataSource


class AudioTextDataModule(ManifestDataModule):
    """Audio-text batches from a manifest.

    Args:
        manifest: JSONL or CSV manifest of the training items.
        val_manifest: manifest of validation items; none when not given.
        exclude_groups: groups left out of both sets (an oracle trained without the forget artist).
        batch_size: items per batch.
        num_workers: DataLoader worker processes.
        sample_rate: the model's sample rate in Hz (linked from the model by the CLI).
        num_samples: the model's clip length in samples (linked from the model by the CLI).
        source: writes the data in ``prepare_data`` when missing (e.g. the toy corpus).
        cache_dir: folder of cached `encode_audio` outputs; training losses read them instead of the audio.
        encode_batch_size: items per batch of the encoding pass (``predict``).
    """

    def __init__(
        self,
        manifest: str,
        val_manifest: str | None = None,
        exclude_groups: list[str] | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        sample_rate: int = 16000,
        num_samples: int = 32768,
        source: DataSource | None = None,
        cache_dir: str | None = None,
        encode_batch_size: int = 16,
    ) -> None:
        super().__init__(num_workers, sample_rate, num_samples, source, cache_dir, encode_batch_size)
        self.manifest = manifest
        self.val_manifest = val_manifest
        self.exclude_groups = list(exclude_groups or [])
        self.batch_size = batch_size

    def _read(self, manifest: str) -> list[ManifestItem]:
        items = read_manifest(manifest)
        groups = {item.group for item in items}
        unknown = [group for group in self.exclude_groups if group not in groups]
        if unknown:
            raise ValueError(f"exclude_groups {unknown} are not groups of {manifest}; its groups: {sorted(groups)}.")
        items = [item for item in items if item.group not in self.exclude_groups]
        if not items:
            raise ValueError(f"No item of {manifest} is left after excluding groups {self.exclude_groups}.")
        check_audio_files(items, manifest)
        return items

    def setup(self, stage: str) -> None:
        self.train_items = self._read(self.manifest)
        self.val_items = self._read(self.val_manifest) if self.val_manifest else []
        self._open_cache(writing=stage == "predict")
        self.train_set = self.dataset(self.train_items, with_audio=False)
        self.val_set = self.dataset(self.val_items) if self.val_items else None

    def all_items(self) -> list[ManifestItem]:
        return self.train_items + self.val_items

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.batch_size, shuffle=True, num_workers=self.num_workers, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return make_loader(self.val_set, self.batch_size, shuffle=False, num_workers=self.num_workers)
