"""`QueryDataModule`: the work of attributing a list of generated queries by unlearning (Wang et al. 2024, arXiv
2406.09408; Choi et al. 2025, arXiv 2506.18312) in one ``train.py predict`` run: one step per training-set shard and
query (or per shard and group of `queries_per_pass` queries, which then share the shard's items) of the queries'
"after" sweeps, only the (query, shard) files not yet written under ``<out_dir>/<query id>/unlearning/sweep``, spread
over ranks by Lightning's distributed sampler. The training set is cut into the same fixed shards as a
`SweepDataModule`, so the "before" sweep (``before_dir``) and every "after" sweep cover the same items."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.attribution_store import AttributionStore, Sweep, aligned_scores, ids_digest
from datamodules.audio import AudioTextDataset
from datamodules.manifest import ManifestItem, read_queries
from datamodules.source import DataSource
from datamodules.sweep import NO_SHARD, ShardDataset, ShardedItemsDataModule
from lightning_modules.attribution.cascade import cascade_candidates, check_fraction


class QueryShardDataset(Dataset):
    """One element per step still to compute, a shard and the queries whose "after" sweeps still miss it: the shard's
    element of the first query's `ShardDataset` plus ``queries`` (their indices); `NO_SHARD` entries give
    ``{"shard": NO_SHARD}``. Queries sharing a step measure the same items (no cascade candidates)."""

    def __init__(self, shards: list[ShardDataset], work: list[tuple[tuple[int, ...], int]]) -> None:
        self.shards = shards
        self.work = work

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, index: int) -> dict:
        queries, shard = self.work[index]
        if shard == NO_SHARD:
            return {"shard": NO_SHARD}
        return {**self.shards[queries[0]].element(shard), "queries": list(queries)}


class QueryDataModule(ShardedItemsDataModule):
    """The training set in fixed shards and the queries to attribute, for `QueryAttribution` and `SweepWriter`.

    Args:
        manifest: JSONL or CSV manifest of the training items (the same the "before" sweep covered).
        queries: manifest of the generated pieces to attribute (audio and the caption they were generated from);
            each id names the query's folder under `out_dir`, so it must be a plain folder name.
        before_dir: the finished "before" sweep of the training set (``configs/attribution/sweep.yaml``), as `before`.
        out_dir: where each query's results go, ``out_dir/<query id>/unlearning/`` (`store`, an
            `AttributionStore`); finished shards are skipped.
        shard_size: items per shard of the "after" sweeps, the unit of work, resumption and distribution.
        num_workers: DataLoader worker processes.
        sample_rate: the model's sample rate in Hz (linked from the model by the CLI).
        num_samples: the model's clip length in samples (linked from the model by the CLI).
        source: writes the data in ``prepare_data`` when missing (e.g. the toy corpus).
        cache_dir: folder of cached `encode_audio` outputs; the training items are then read from it (every item
            must be encoded); queries are always read from their audio.
        query_source: writes the queries in ``prepare_data`` when missing (e.g. `ToyQueries`).
        candidates: the cascade: a score matrix of every training track for every query (``scores_<name>.pt`` as
            the attribution passes write it, e.g. ``<out_dir>/scores_cascade_scores.pt``); each query's "after" sweep
            then measures only its top `fraction` of tracks by that score. None sweeps the whole training set.
        fraction: the share of the training set the cascade measures exactly (``ceil(fraction * N)`` tracks).
        queries_per_pass: queries whose "after" sweeps share each step: the shard's items are read once for them (and
            encoded once, when unlearning leaves the encoder alone) and each query's losses follow one another, the
            model holding their deltas in memory (this many times a delta's size). 1 sweeps one query at a time,
            query by query. Cascade candidates differ per query: with `candidates` it must be 1.
    """

    def __init__(self, manifest: str, queries: str, before_dir: str, out_dir: str, shard_size: int = 256,
                 num_workers: int = 0, sample_rate: int = 16000, num_samples: int = 32768,
                 source: DataSource | None = None, cache_dir: str | None = None,
                 query_source: DataSource | None = None, candidates: str | None = None,
                 fraction: float = 0.05, queries_per_pass: int = 1) -> None:
        super().__init__(manifest, shard_size, num_workers, sample_rate, num_samples, source, cache_dir)
        if queries_per_pass < 1:
            raise ValueError(f"queries_per_pass must be at least 1, got {queries_per_pass}.")
        if candidates is not None and queries_per_pass != 1:
            raise ValueError(f"queries_per_pass={queries_per_pass} with candidates {candidates}: the cascade's queries "
                             "each measure their own tracks, so they cannot share a shard; set queries_per_pass to 1.")
        self.queries_per_pass = queries_per_pass
        self.candidates = candidates
        self.fraction = check_fraction(fraction)
        self.cheap: torch.Tensor | None = None  # the cascade's cheap scores (queries, items sorted by id), float64
        self._measured: list[list[int]] = []  # per query, the indices (into the sorted items) its sweep measures
        self.query_source = query_source
        self.queries = queries
        self.before_dir = before_dir
        self.out_dir = out_dir
        self.before = Sweep(before_dir)
        self.store = AttributionStore(out_dir)
        self._queries: list[ManifestItem] = []
        self.query_set: AudioTextDataset | None = None  # the queries' audio, once set up

    def prepare_data(self) -> None:
        super().prepare_data()
        if self.query_source is not None:
            self.query_source.prepare()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._queries = read_queries(self.queries)
        self.query_set = AudioTextDataset(self._queries, self.sample_rate, self.num_samples, split="queries")
        everything = list(range(len(self.items)))
        if self.candidates is None:
            self.cheap, self._measured = None, [everything for _ in self._queries]
        else:
            self.cheap = aligned_scores(self.candidates, [item.id for item in self.items],
                                        [query.id for query in self._queries])
            self._measured = [index.tolist() for index in cascade_candidates(self.cheap, self.fraction)]

    def measured(self, query: int) -> list[int]:
        """The indices (into the items sorted by id) of the tracks query `query`'s "after" sweep measures: all of
        them, or the cascade's candidates."""
        return self._measured[query]

    def recipe_of(self, query: int) -> dict:
        """What query `query`'s "after" sweep depends on besides the model: its items and their sharding (the
        `recipe` of the whole training set, or of the cascade's candidates with the cascade's fraction)."""
        if self.candidates is None:
            return self.recipe()
        ids = [self.items[index].id for index in self.measured(query)]
        return {"shard_size": self.shard_size, "num_items": len(ids), "ids": ids_digest(ids),
                "cascade_fraction": self.fraction}

    def num_shards_of(self, query: int) -> int:
        """The number of shards of query `query`'s "after" sweep."""
        return math.ceil(len(self.measured(query)) / self.shard_size)

    def query_items(self) -> list[ManifestItem]:
        """The queries, in manifest order."""
        return list(self._queries)

    def sweep_of(self, query: int) -> Sweep:
        """Query `query`'s "after" sweep."""
        return self.store.sweep(self._queries[query].id)

    def missing_work(self) -> list[tuple[int, int]]:
        """The (query index, shard index) pairs without a good shard file yet (missing, or failing verification),
        query-major."""
        return [(query, shard) for query in range(len(self._queries))
                for shard in self.sweep_of(query).missing_shards(self.num_shards_of(query))]

    def missing_files(self) -> list[Path]:
        return [self.sweep_of(query).shard_path(shard) for query, shard in self.missing_work()]

    def steps(self) -> list[tuple[tuple[int, ...], int]]:
        """The steps still to compute, ``(queries, shard)``: per group of `queries_per_pass` queries (in manifest
        order), per shard, the group's queries whose "after" sweep misses it; group-major, so that the ranks work on
        the same queries together and each loads a group's unlearned weights once."""
        missing = self.missing_work()
        steps = []
        for first in range(0, len(self._queries), self.queries_per_pass):
            group: dict[int, list[int]] = {}
            for query, shard in missing:
                if first <= query < first + self.queries_per_pass:
                    group.setdefault(shard, []).append(query)
            steps += [(tuple(queries), shard) for shard, queries in sorted(group.items())]
        return steps

    def predict_dataloader(self) -> DataLoader:
        """One step per shard and query (or group of `queries_per_pass` queries), `steps`; at least one per rank."""
        todo = self._pad_for_ranks(self.steps(), placeholder=((), NO_SHARD))
        shards = [ShardDataset(Subset(self.item_set, self.measured(query)), self.shard_size, [])
                  for query in range(len(self._queries))]
        return self._loader(QueryShardDataset(shards, todo))
