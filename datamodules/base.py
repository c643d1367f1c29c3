"""`ManifestDataModule`: what every DataModule over manifests shares: the data source prepared in ``prepare_data``,
the model's audio format (linked from the model by the CLI), and datasets of manifest items in that format."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from datamodules.audio import AudioTextDataset
from datamodules.manifest import ManifestItem
from datamodules.source import DataSource


class ManifestDataModule(L.LightningDataModule):
    """Base of the DataModules over manifests.

    Args:
        num_workers: DataLoader worker processes.
        sample_rate: the model's sample rate in Hz (linked from the model by the CLI).
        num_samples: the model's clip length in samples (linked from the model by the CLI).
        source: writes the data in ``prepare_data`` when missing (e.g. the toy corpus).
    """

    def __init__(self, num_workers: int, sample_rate: int, num_samples: int, source: DataSource | None) -> None:
        super().__init__()
        self.num_workers = num_workers
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.source = source

    def prepare_data(self) -> None:
        if self.source is not None:
            self.source.prepare()

    def dataset(self, items: Sequence[ManifestItem], split: str = "") -> AudioTextDataset:
        return AudioTextDataset(items, self.sample_rate, self.num_samples, split=split)
