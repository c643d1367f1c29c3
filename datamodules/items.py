"""`ItemsDataModule`: every item of one manifest, once each, in manifest order, for the attribution passes (Wang et
al., NeurIPS 2024; Choi et al., 2025): the training set a Fisher or similarity pass covers (``predict``, sharded over
ranks by Lightning's distributed sampler, which pads nothing in prediction), optionally read from the target cache,
and the generated queries: an unlearning run ascends on them (``fit``: all items in one batch), a similarity
pass ranks the training set against them (`query_dataloader`, a second manifest, always with audio)."""

from __future__ import annotations

from torch.utils.data import DataLoader, Subset

from datamodules.audio import AudioTextDataset, make_loader
from datamodules.base import ManifestDataModule
from datamodules.manifest import ManifestItem, check_audio_files, read_manifest, read_queries
from datamodules.source import DataSource


class ItemsDataModule(ManifestDataModule):
    """The items of `manifest` with their audio (or cached targets) and validity masks, and optional queries.

    Args:
        manifest: JSONL or CSV manifest (training tracks for the Fisher and the similarity baselines, generated
            pieces with captions for query unlearning).
        batch_size: items per ``predict`` batch (and per query batch); ``fit`` serves all items as one batch.
        num_workers: DataLoader worker processes.
        sample_rate: the model's sample rate in Hz (linked from the model by the CLI).
        num_samples: the model's clip length in samples (linked from the model by the CLI).
        source: writes the data in ``prepare_data`` when missing (e.g. the toy corpus).
        cache_dir: folder of cached `encode_audio` outputs of the items of `manifest` (written by ``train.py
            predict --config configs/encode.yaml`` with a DataModule over the same manifest, e.g.
            `datamodules.AudioTextDataModule`); every item must be encoded, and batches then carry ``targets``.
        with_audio: with `cache_dir`, also decode each item's audio (the CLAP baseline needs it); False serves the
            cached targets alone (Fisher, gradient and activation passes), skipping the decoding.
        queries: JSONL or CSV manifest of the queries (the generated pieces to attribute), served by
            `query_dataloader`, always as audio (queries are never read from the cache).
        query_source: writes the queries in ``prepare_data`` when missing (e.g. `datamodules.toy_queries.ToyQueries`).
    """

    def __init__(self, manifest: str, batch_size: int = 8, num_workers: int = 0, sample_rate: int = 16000,
                 num_samples: int = 32768, source: DataSource | None = None, cache_dir: str | None = None,
                 with_audio: bool = True, queries: str | None = None, query_source: DataSource | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        super().__init__(num_workers, sample_rate, num_samples, source, cache_dir)
        self.manifest = manifest
        self.batch_size = batch_size
        self.with_audio = with_audio
        self.queries = queries
        self.query_source = query_source
        self.items: list[ManifestItem] = []
        self._query_items: list[ManifestItem] = []

    def prepare_data(self) -> None:
        super().prepare_data()
        if self.query_source is not None:
            self.query_source.prepare()

    def setup(self, stage: str) -> None:
        items = read_manifest(self.manifest)
        if not items:
            raise ValueError(f"{self.manifest} lists no item; give a manifest with at least one.")
        check_audio_files(items, self.manifest)
        self.items = items
        if self.queries is not None:
            self._query_items = read_queries(self.queries)
        self._open_cache(writing=False)  # with cache_dir: every item of `manifest` must be encoded already
        self.item_set = self.dataset(items, split="items", with_audio=self.with_audio)

    def all_items(self) -> list[ManifestItem]:
        return list(self.items)

    def query_items(self) -> list[ManifestItem]:
        """The items of the `queries` manifest, in its order (empty without one)."""
        return list(self._query_items)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.item_set, len(self.items), shuffle=False, num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return make_loader(self.item_set, self.batch_size, shuffle=False, num_workers=self.num_workers)

    def query_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """The queries with their audio, in batches of `batch_size`: every `world_size`-th one from `rank` (all of
        them by default), in manifest order.

        Raises:
            ValueError: no `queries` manifest was given, or `rank` is not in ``[0, world_size)``.
        """
        if self.queries is None:
            raise ValueError("No queries: set data.init_args.queries to the manifest of the pieces to attribute.")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}.")
        dataset = AudioTextDataset(self._query_items, self.sample_rate, self.num_samples, split="queries")
        share = list(range(rank, len(self._query_items), world_size))
        return make_loader(Subset(dataset, share), self.batch_size, shuffle=False, num_workers=self.num_workers)
