"""`ItemsDataModule`: every item of one manifest, once each, in manifest order, for the attribution-by-unlearning
passes (Wang et al., NeurIPS 2024; Choi et al., 2025): the training set a Fisher pass covers (``predict``, sharded
over ranks by Lightning's distributed sampler, which pads nothing in prediction) and the generated queries an
unlearning run ascends on (``fit``: all queries in one batch, unlearned together)."""

from __future__ import annotations

from torch.utils.data import DataLoader

from datamodules.audio import make_loader
from datamodules.base import ManifestDataModule
from datamodules.manifest import ManifestItem, check_audio_files, read_manifest
from datamodules.source import DataSource


class ItemsDataModule(ManifestDataModule):
    """The items of `manifest` with their audio and validity masks.

    Args:
        manifest: JSONL or CSV manifest (training tracks for the Fisher, generated pieces with captions for queries).
        batch_size: items per ``predict`` batch; ``fit`` serves all items as one batch.
        num_workers: DataLoader worker processes.
        sample_rate: the model's sample rate in Hz (linked from the model by the CLI).
        num_samples: the model's clip length in samples (linked from the model by the CLI).
        source: writes the data in ``prepare_data`` when missing (e.g. the toy corpus).
    """

    def __init__(self, manifest: str, batch_size: int = 8, num_workers: int = 0, sample_rate: int = 16000,
                 num_samples: int = 32768, source: DataSource | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        super().__init__(num_workers, sample_rate, num_samples, source)
        self.manifest = manifest
        self.batch_size = batch_size
        self.items: list[ManifestItem] = []

    def setup(self, stage: str) -> None:
        items = read_manifest(self.manifest)
        if not items:
            raise ValueError(f"{self.manifest} lists no item; give a manifest with at least one.")
        check_audio_files(items, self.manifest)
        self.items = items
        self.item_set = self.dataset(items, split="items")

    def all_items(self) -> list[ManifestItem]:
        return list(self.items)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.item_set, len(self.items), shuffle=False, num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return make_loader(self.item_set, self.batch_size, shuffle=False, num_workers=self.num_workers)
