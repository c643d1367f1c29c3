"""`ForgetRetainDataModule`: the forget set, the retain set and held-out non-members, from manifests.

The forget set is chosen by group (an artist who opts out), by a list of ids, or by a second manifest; the retain
set is the rest of the training manifest or a given manifest; held-out items are non-members used by evaluation
(membership inference needs members and non-members of the same distribution). With `near_groups` (retain artists
similar to the forgotten one), the retain set is evaluated as two sets: "near" (those groups) and "retain" (every other
retain group: the far ones), so a report shows the collateral damage where it is likeliest. Training batches are
``{"forget": batch, "retain": batch}`` from a `CombinedLoader`. Every inconsistency is an error before training.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from datamodules.audio import AudioTextDataset, make_loader
from datamodules.base import ManifestDataModule, check_batch_sizes, per_process_batch
from datamodules.manifest import ManifestItem, check_audio_files, read_manifest
from datamodules.source import DataSource

EVAL_SPLITS = ("forget", "near", "retain", "heldout")
log = logging.getLogger(__name__)


class ForgetRetainDataModule(ManifestDataModule):
    """Forget / retain / held-out sets for unlearning.

    Args:
        manifest: the model's training data (members), JSONL or CSV.
        forget_groups: groups (artists) to forget.
        forget_ids: item ids to forget.
        forget_manifest: a manifest of the items to forget (each must be in `manifest`).
        retain_manifest: the retain set; default: every item of `manifest` not forgotten.
        heldout_manifest: non-members for evaluation; none when not given.
        near_groups: retain groups similar to the forget set (same instrument, tempo or register), evaluated apart as
            the "near" set; the "retain" evaluation set then holds the other (far) retain groups. Training uses the
            whole retain set either way.
        batch_size: forget items per training batch and process; default 8, unless `global_batch_size` is given.
        retain_batch_size: retain items per training batch and process; default the forget items per process.
        global_batch_size: forget items per optimizer step over all processes, split evenly among them (a multiple
            of the process count), so that the batch does not grow with ``--trainer.devices``; None: `batch_size`
            per process.
        retain_global_batch_size: retain items per optimizer step over all processes; default `global_batch_size`.
        eval_batch_size: items per evaluation batch.
        max_eval_items: evaluate at most this many items of each set, a fixed random subset; None for all.
        combined_mode: how the forget and retain loaders are zipped (Lightning's `CombinedLoader` modes).
        num_workers: DataLoader worker processes.
        seed: seed of the evaluation subsets and of the training order (a permutation per pass over each set, the
            same on any number of processes).
        sample_rate: the model's sample rate in Hz (linked from the model by the CLI).
        num_samples: the model's clip length in samples (linked from the model by the CLI).
        source: writes the data in ``prepare_data`` when missing (e.g. the toy corpus).
        cache_dir: folder of cached `encode_audio` outputs; losses read them instead of the audio.
        encode_batch_size: items per batch of the encoding pass (``predict``).
    """

    def __init__(
        self,
        manifest: str,
        forget_groups: list[str] | None = None,
        forget_ids: list[str] | None = None,
        forget_manifest: str | None = None,
        retain_manifest: str | None = None,
        heldout_manifest: str | None = None,
        near_groups: list[str] | None = None,
        batch_size: int | None = None,
        retain_batch_size: int | None = None,
        global_batch_size: int | None = None,
        retain_global_batch_size: int | None = None,
        eval_batch_size: int = 16,
        max_eval_items: int | None = 64,
        combined_mode: Literal["max_size_cycle", "min_size", "max_size"] = "max_size_cycle",
        num_workers: int = 0,
        seed: int = 0,
        sample_rate: int = 16000,
        num_samples: int = 32768,
        source: DataSource | None = None,
        cache_dir: str | None = None,
        encode_batch_size: int = 16,
    ) -> None:
        super().__init__(num_workers, sample_rate, num_samples, source, cache_dir, encode_batch_size)
        chosen = [name for name, value in (("forget_groups", forget_groups), ("forget_ids", forget_ids),
                                           ("forget_manifest", forget_manifest)) if value]
        if len(chosen) != 1:
            raise ValueError(f"Choose the forget set with exactly one of forget_groups, forget_ids or forget_manifest; "
                             f"got {chosen or 'none'}.")
        self.manifest = manifest
        self.forget_groups = list(forget_groups or [])
        self.forget_ids = list(forget_ids or [])
        self.forget_manifest = forget_manifest
        self.retain_manifest = retain_manifest
        self.heldout_manifest = heldout_manifest
        self.near_groups = list(near_groups or [])
        check_batch_sizes(batch_size=batch_size, retain_batch_size=retain_batch_size,
                          global_batch_size=global_batch_size, retain_global_batch_size=retain_global_batch_size)
        self.batch_size = batch_size
        self.retain_batch_size = retain_batch_size
        self.global_batch_size = global_batch_size
        self.retain_global_batch_size = retain_global_batch_size
        self.eval_batch_size = eval_batch_size
        self.forget_batch: int | None = None  # items per process of each batch, resolved for the run's world size
        self.retain_batch: int | None = None
        self.max_eval_items = max_eval_items
        self.combined_mode = combined_mode
        self.seed = seed

    def _select_forget(self, members: list[ManifestItem]) -> list[ManifestItem]:
        by_id = {item.id: item for item in members}
        if self.forget_groups:
            groups = {item.group for item in members}
            unknown = [group for group in self.forget_groups if group not in groups]
            if unknown:
                raise ValueError(f"forget_groups {unknown} are not groups of {self.manifest}; its groups: "
                                 f"{sorted(groups)}.")
            return [item for item in members if item.group in self.forget_groups]
        wanted = self.forget_ids or [item.id for item in read_manifest(self.forget_manifest)]
        unknown = [item_id for item_id in wanted if item_id not in by_id]
        if unknown:
            source = "forget_ids" if self.forget_ids else self.forget_manifest
            raise ValueError(f"{len(unknown)} id(s) of {source} are not in {self.manifest} (the forget set must be "
                             f"training data): {unknown[:10]}")
        return [by_id[item_id] for item_id in dict.fromkeys(wanted)]

    def setup(self, stage: str) -> None:
        members = read_manifest(self.manifest)
        forget = self._select_forget(members)
        if not forget:
            raise ValueError(f"The forget set is empty: no item of {self.manifest} matches the selection.")
        forget_ids = {item.id for item in forget}
        if self.retain_manifest:
            retain = read_manifest(self.retain_manifest)
            overlap = sorted(forget_ids & {item.id for item in retain})
            if overlap:
                raise ValueError(f"{len(overlap)} item(s) are in both the forget set and {self.retain_manifest}: "
                                 f"{overlap[:10]}. Remove them from the retain manifest.")
        else:
            retain = [item for item in members if item.id not in forget_ids]
        if not retain:
            raise ValueError(f"The retain set is empty: every item of {self.manifest} is in the forget set.")
        heldout = read_manifest(self.heldout_manifest) if self.heldout_manifest else []
        leaked = sorted({item.id for item in heldout} & {item.id for item in members + retain})
        if leaked:
            raise ValueError(f"{len(leaked)} held-out item(s) of {self.heldout_manifest} are also in {self.manifest}; "
                             f"held-out items must be non-members: {leaked[:10]}")
        for items, what in ((forget, "the forget set"), (retain, "the retain set"), (heldout, "the held-out set")):
            check_audio_files(items, what)
        self.sets = {"forget": forget, "retain": retain, "heldout": heldout}
        self.members = members
        self.eval_sets = {"forget": forget, **self._near_and_far(retain), "heldout": heldout}
        self._open_cache(writing=stage == "predict")
        if stage == "fit":
            self._resolve_batches()

    def _near_and_far(self, retain: list[ManifestItem]) -> dict[str, list[ManifestItem]]:
        """The retain set as evaluated: all of it as "retain", or split into "near" (`near_groups`) and far."""
        if not self.near_groups:
            return {"retain": retain}
        retain_groups = {item.group for item in retain}
        unknown = [group for group in self.near_groups if group not in retain_groups]
        if unknown:
            raise ValueError(f"near_groups {unknown} are not groups of the retain set (they must be retained artists, "
                             f"not forgotten ones); its groups: {sorted(g for g in retain_groups if g)}.")
        near = [item for item in retain if item.group in self.near_groups]
        far = [item for item in retain if item.group not in self.near_groups]
        if not far:
            raise ValueError(f"near_groups {self.near_groups} cover the whole retain set: no far group is left to "
                             "evaluate; name fewer near groups.")
        return {"near": near, "retain": far}

    def _resolve_batches(self) -> None:
        """Items per process of the forget and retain batches, from the per-process or global settings."""
        rank, world_size = self.world
        self.forget_batch = per_process_batch(self.batch_size, self.global_batch_size, world_size, 8)
        retain_global = self.retain_global_batch_size
        if retain_global is None and self.retain_batch_size is None:
            retain_global = self.global_batch_size
        self.retain_batch = per_process_batch(self.retain_batch_size, retain_global, world_size, self.forget_batch,
                                              ("retain_batch_size", "retain_global_batch_size"))
        if rank == 0:
            log.info("Training batches: %d forget + %d retain items per process x %d process(es) = %d + %d per "
                     "optimizer step.", self.forget_batch, self.retain_batch, world_size,
                     self.forget_batch * world_size, self.retain_batch * world_size)

    def all_items(self) -> list[ManifestItem]:
        return [item for split in ("forget", "retain", "heldout") for item in self.sets[split]]

    def oracle_training_set(self) -> tuple[list[ManifestItem], list[ManifestItem]]:
        """(what an oracle of this forget set trains on: the training manifest without the forget set, the forget
        set), whatever the retain set used for training is."""
        forget = {item.id for item in self.sets["forget"]}
        return [item for item in self.members if item.id not in forget], self.sets["forget"]

    def split_dataset(self, split: str, with_audio: bool = False) -> AudioTextDataset:
        """Every item of one set: "forget", "retain" or "heldout" (methods that need a pass over a whole set); the
        audio is left out when targets are cached, unless `with_audio`."""
        if split not in self.sets:
            raise ValueError(f"Unknown set {split!r}; choose one of {list(self.sets)}.")
        return self.dataset(self.sets[split], split, with_audio=with_audio)

    def train_dataloader(self) -> CombinedLoader:
        if self.forget_batch is None:
            self._resolve_batches()
        loaders = {  # each set its own permutations: the same seed would order two sets of one size alike
            "forget": self.train_loader(self.split_dataset("forget"), self.forget_batch, self.seed),
            "retain": self.train_loader(self.split_dataset("retain"), self.retain_batch, self.seed + 1),
        }
        return CombinedLoader(loaders, mode=self.combined_mode)

    def eval_datasets(self) -> dict[str, AudioTextDataset]:
        """The evaluated subset of each non-empty set, the same on every call, process and run."""
        datasets = {}
        for split in EVAL_SPLITS:
            items = sorted(self.eval_sets.get(split, []), key=lambda item: item.id)
            if self.max_eval_items is not None and len(items) > self.max_eval_items:
                order = torch.randperm(len(items), generator=torch.Generator().manual_seed(self.seed))
                items = [items[i] for i in sorted(order[: self.max_eval_items].tolist())]
            if items:
                datasets[split] = self.dataset(items, split)
        return datasets

    def val_dataloader(self) -> list[DataLoader]:
        return [make_loader(dataset, self.eval_batch_size, False, self.num_workers)
                for dataset in self.eval_datasets().values()]
