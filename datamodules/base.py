"""`ManifestDataModule`: what every DataModule over manifests shares: the data source prepared in ``prepare_data``,
the model's audio format (linked from the model by the CLI), datasets of manifest items in that format, and the
target cache: ``predict`` batches of the items not yet encoded (for `TargetEncoding` and `TargetCacheWriter`), and
datasets that read the cached targets instead of decoding audio once every item is encoded."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
from torch.utils.data import DataLoader

from datamodules.audio import AudioTextDataset, make_loader
from datamodules.manifest import ManifestItem
from datamodules.sampler import ResumableLoader
from datamodules.source import DataSource
from datamodules.target_cache import TargetCache

log = logging.getLogger(__name__)


def per_process_batch(batch_size: int | None, global_batch_size: int | None, world_size: int, default: int,
                      names: tuple[str, str] = ("batch_size", "global_batch_size")) -> int:
    """Items per process of a training batch: `batch_size` as given (`default` when neither is given), or
    `global_batch_size` split evenly over `world_size` processes; `names` are the two settings, for the errors."""
    if global_batch_size is None:
        return default if batch_size is None else batch_size
    if global_batch_size % world_size:
        raise ValueError(f"{names[1]}={global_batch_size} does not divide evenly over {world_size} processes: choose a "
                         f"multiple of {world_size}, or set {names[0]} (items per process) instead.")
    share = global_batch_size // world_size
    if batch_size is not None and batch_size != share:
        raise ValueError(f"{names[0]}={batch_size} (per process) and {names[1]}={global_batch_size} disagree on "
                         f"{world_size} process(es), which take {share} each; set only one of them.")
    return share


def check_batch_sizes(**sizes: int | None) -> None:
    """Refuse a batch size below 1, naming it."""
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")


class ManifestDataModule(L.LightningDataModule):
    """Base of the DataModules over manifests.

    Args:
        num_workers: DataLoader worker processes.
        sample_rate: the model's sample rate in Hz (linked from the model by the CLI).
        num_samples: the model's clip length in samples (linked from the model by the CLI).
        source: writes the data in ``prepare_data`` when missing (e.g. the toy corpus).
        cache_dir: folder of cached `encode_audio` outputs (written by ``train.py predict`` with
            ``configs/encode.yaml``); losses then read them instead of decoding and encoding audio.
        encode_batch_size: items per batch of the encoding pass (``predict``).
    """

    def __init__(self, num_workers: int, sample_rate: int, num_samples: int, source: DataSource | None,
                 cache_dir: str | None = None, encode_batch_size: int = 16) -> None:
        super().__init__()
        self.num_workers = num_workers
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.source = source
        self.cache_dir = cache_dir
        self.encode_batch_size = encode_batch_size
        self.cache: TargetCache | None = None  # read by the datasets once `setup` checked it is complete
        self.encoding_cache: TargetCache | None = None  # written by the encoding pass (`TargetCacheWriter`)

    def prepare_data(self) -> None:
        if self.source is not None:
            self.source.prepare()

    def all_items(self) -> list[ManifestItem]:
        """Every item this DataModule serves (each id once), as `setup` read them: what the encoding pass encodes."""
        raise NotImplementedError(f"{type(self).__name__} does not list its items for the encoding pass.")

    @property
    def world(self) -> tuple[int, int]:
        """(this process's global rank, the number of processes): from the Trainer, (0, 1) without one."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_loader(self, dataset: AudioTextDataset, batch_size: int, seed: int, drop_last: bool = False
                     ) -> ResumableLoader:
        """Shuffled training batches of `batch_size` items per process, whose union over processes at a step is the
        batch one process would draw, and which resume mid-epoch from a checkpoint (`ResumableLoader`)."""
        rank, world_size = self.world
        return ResumableLoader(dataset, batch_size, seed, rank, world_size, drop_last, self.num_workers)

    def dataset(self, items: Sequence[ManifestItem], split: str = "", with_audio: bool = True) -> AudioTextDataset:
        """`items` in the model's format, with cached targets once `setup` opened the cache; `with_audio=False` for
        sets only the model's losses read (training, gradient statistics)."""
        return AudioTextDataset(items, self.sample_rate, self.num_samples, split=split, cache=self.cache,
                                with_audio=with_audio)

    def _open_cache(self, writing: bool) -> None:
        """Open the model's sub-folder of `cache_dir`: for the encoding pass to write (`writing`), or for the
        datasets to read, which needs every item encoded already."""
        if self.cache_dir is None:
            return
        model = getattr(self.trainer.lightning_module, "model", None) if self.trainer is not None else None
        from lightning_modules.models.base import TextToMusicModel  # the model contract (its backends load lazily)

        if not isinstance(model, TextToMusicModel):
            raise ValueError(f"cache_dir={self.cache_dir!r} needs a Trainer whose LightningModule has a "
                             "`model` (a TextToMusicModel), whose targets_key names the cache's sub-folder.")
        cache = TargetCache(self.cache_dir, model.targets_key())
        if writing:
            self.encoding_cache = cache  # datasets decode audio
            return
        missing = cache.missing([item.id for item in self.all_items()])
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} item(s) have no cached targets in {cache.folder} (e.g. {missing[:5]}). Encode them "
                "first with the same model and data: `python train.py predict --config configs/encode.yaml "
                "--model.init_args.model <model config> --data <data config> --data.init_args.cache_dir "
                f"{self.cache_dir}`; items already encoded are skipped.")
        self.cache = cache

    def predict_dataloader(self) -> DataLoader:
        """The items not yet in the cache (or whose file fails verification), with their audio, for the encoding
        pass. Every rank lists the cache before any writes (a barrier), so all ranks shard the same list."""
        if self.cache_dir is None:
            raise ValueError("The encoding pass writes to `cache_dir`: set data.init_args.cache_dir.")
        items = list({item.id: item for item in self.all_items()}.values())
        again = set(self.encoding_cache.to_encode([item.id for item in items]))  # missing, or failing verification
        todo = [item for item in items if item.id in again]
        self.trainer.strategy.barrier("target_cache_listed")
        return make_loader(AudioTextDataset(todo, self.sample_rate, self.num_samples), self.encode_batch_size,
                           shuffle=False, num_workers=self.num_workers)
