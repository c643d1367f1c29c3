"""`SimilarityRanking`: a similarity baseline of training-data attribution run as a sharded ``train.py predict`` pass
(``configs/attribution/similarity_{clap,activation,gradient}.yaml``): every training track is scored against each
generated query by the cosine similarity of their features (CLAP embeddings, denoiser activations or loss
gradients; `lightning_modules.attribution.similarity`), the baselines Choi et al. compare attribution by unlearning
with ("Large-Scale Training Data Attribution for Music Generative Models via Unlearning", arXiv 2506.18312).

Lightning's distributed sampler shards the training items over ranks (no padding in prediction); each rank keeps its
items' features, the queries' features are computed shard by shard and gathered to every rank, each rank scores its
own items, and only the scores `(n_queries, n_train)` travel to rank zero, which checks that every item was scored
and writes, per query, ``<out_dir>/<query id>/<name>/`` (ranking and groups as CSV / JSON, top tracks as markdown
and a bar plot; higher = more similar = more attributed) and ``<out_dir>/scores_<name>.pt``
(`AttributionStore.read_scores`) for the consistency evaluation.

With ``train_store`` (a `FeatureStore` of the same baseline, ``configs/attribution/gradient_store.yaml``), the
training items' features are read from the store instead of computed: a pass over new queries then costs their own
gradients and one product with the stored matrix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from datamodules.attribution_store import UNLEARNING, AttributionStore, FeatureStore, differing_keys, ids_digest
from datamodules.interfaces import HasQueries, require
from lightning_modules.attribution.feature_store import baseline_features, store_recipe
from lightning_modules.attribution.scoring import log_ranking, write_ranking
from lightning_modules.attribution.similarity import Features, SimilarityBaseline
from lightning_modules.io import check_folder_name
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.module import ModelAudioFormat
from lightning_modules.passes import progress

log = logging.getLogger(__name__)



class SimilarityRanking(ModelAudioFormat, L.LightningModule):
    """Ranks the training items of the predict DataModule for each of its queries by a similarity baseline.

    Args:
        model: the text-to-music model (given to the baseline; unused by the CLAP baseline except for its rate).
        baseline: the similarity (`ClapSimilarity`, `ActivationSimilarity`, `GradientSimilarity`), by class_path.
        out_dir: where the rankings go: ``<out_dir>/<query id>/<name>/`` and ``<out_dir>/scores_<name>.pt``.
        name: the baseline's sub-folder in each query's folder (e.g. "clap"), and its TensorBoard tag.
        top_k: tracks in each query's markdown table and bar plot.
        train_store: a `FeatureStore` folder of the training items' features under this model and baseline
            (written by ``configs/attribution/gradient_store.yaml``); they are read from it, not computed. None
            computes them.
    """

    def __init__(self, model: TextToMusicModel, baseline: SimilarityBaseline, out_dir: str, name: str,
                 top_k: int = 20, train_store: str | None = None) -> None:
        super().__init__()
        check_folder_name(name, "name")
        if name == UNLEARNING:
            raise ValueError(f"name {name!r} is where attribution by unlearning writes; give the baseline another.")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}.")
        baseline.check(model)  # a wrong module or parameter group fails before any data is read
        self.model = model.requires_grad_(False)  # the gradient baseline enables its own groups while it measures
        self.baseline = baseline
        self.out_dir = Path(out_dir)
        self.store = AttributionStore(out_dir)
        self.name = name
        self.top_k = top_k
        self.train_store = None if train_store is None else FeatureStore(train_store)
        self._stored: dict[str, Tensor] = {}  # the store's vectors by training id, once read
        self.train_ids: list[str] = []
        self.query_ids: list[str] = []
        self.scores: Tensor | None = None  # (n_queries, n_train) after the pass, on every rank
        self._index: dict[str, int] = {}
        self._rows: list[int] = []  # positions in all_items() of this rank's measured items, in order
        self._seen: set[int] = set()
        self._vectors: list[Tensor] = []

    @property
    def score_label(self) -> str:
        return f"{self.baseline.score_label} ({self.name})"

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise ValueError(f"SimilarityRanking runs as `train.py predict`, not {stage!r}.")
        datamodule = self.trainer.datamodule
        require(datamodule, HasQueries, "SimilarityRanking", "datamodules.items.ItemsDataModule over the training "
                "manifest with data.init_args.queries")
        self.train_items = datamodule.all_items()
        self.query_items = datamodule.query_items()
        if not self.query_items:
            raise ValueError("No queries to rank the training set for: set data.init_args.queries to the manifest of "
                             "the generated pieces to attribute.")
        if len(self.train_items) < self.trainer.world_size:
            raise ValueError(f"{len(self.train_items)} training item(s) cannot be shared by {self.trainer.world_size} "
                             "processes; run on fewer devices.")
        self.train_ids = [item.id for item in self.train_items]
        self.query_ids = [item.id for item in self.query_items]
        file_name = self.store.scores_path(self.name).name
        for query_id in self.query_ids:
            if query_id == file_name:
                raise ValueError(f"Query id {query_id!r} is the name of the score file in {self.out_dir}; rename the "
                                 "query or choose another model.init_args.name.")
        self._index = {item_id: index for index, item_id in enumerate(self.train_ids)}
        if self.train_store is not None:
            self._stored = self._read_store(self.train_store)

    def _read_store(self, store: FeatureStore) -> dict[str, Tensor]:
        """The store's vectors by id, after checking its recipe is this model's, baseline's and training set's.

        Raises:
            ValueError: the store was written for another model, weights, feature settings or training set.
        """
        expected = {**store_recipe(self.model, self.baseline), "num_items": len(self.train_ids),
                    "ids": ids_digest(self.train_ids)}
        differs = differing_keys(store.read_recipe(), expected)
        if differs:
            raise ValueError(f"The feature store {store.folder} holds features of other {', '.join(differs)} than "
                             "this pass's model, baseline and training set; write a store for them "
                             "(configs/attribution/gradient_store.yaml with the same model and baseline) or leave out "
                             "train_store.")
        ids, vectors = store.read()
        return dict(zip(ids, vectors, strict=True))

    def on_predict_start(self) -> None:
        self._rows = []
        self._seen = set()
        self._vectors = []
        self.scores = None

    def features(self, batch: Batch, query: bool = False) -> Features:
        """The baseline's features of `batch` (`baseline_features`), of queries when `query`."""
        return Features(list(batch["id"]), baseline_features(self.baseline, self.model, batch, query))

    def predict_step(self, batch: Batch, batch_idx: int) -> list[str]:
        """Keeps the features of the batch's items not yet seen on this rank; returns their ids."""
        unknown = [item_id for item_id in batch["id"] if item_id not in self._index]
        if unknown:
            raise ValueError(f"Items {unknown[:5]} are not among the DataModule's all_items().")
        fresh = [i for i, item_id in enumerate(batch["id"]) if self._index[item_id] not in self._seen]
        if not fresh:
            return []
        if len(fresh) < len(batch["id"]):
            batch = {key: ([value[i] for i in fresh] if isinstance(value, list) else value[fresh])  # type: ignore[assignment]
                     for key, value in batch.items()}
        if self._stored:  # read, not computed
            features = Features(list(batch["id"]), torch.stack([self._stored[item_id] for item_id in batch["id"]]))
        else:
            features = self.features(batch)
        self._rows.extend(self._index[item_id] for item_id in features.ids)
        self._seen.update(self._rows[-len(features.ids):])
        self._vectors.append(features.vectors)
        return features.ids

    def _gather(self, rows: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Every rank's `rows` `(n, dim)` with their `index` `(n,)`, concatenated in rank order; ranks may hold
        different numbers of rows (padded to the largest for the collective, then cut back)."""
        strategy = self.trainer.strategy
        if self.trainer.world_size == 1:
            return rows, index
        sizes = strategy.all_gather(torch.tensor(rows.shape, device=self.device)).reshape(-1, 2)
        count, dim = int(sizes[:, 0].max()), int(sizes[:, 1].max())
        if any(int(d) not in (0, dim) for n, d in sizes.tolist() if n):
            raise RuntimeError(f"The ranks' feature sizes differ ({sizes[:, 1].tolist()}); the baseline must give "
                               "every item vectors of the same size.")
        padded = torch.zeros(count, dim, device=self.device)
        padded[: rows.shape[0], : rows.shape[1]] = rows.to(self.device)
        padded_index = torch.full((count,), -1, dtype=torch.long, device=self.device)
        padded_index[: index.shape[0]] = index.to(self.device)
        gathered = strategy.all_gather(padded).reshape(-1, dim)
        gathered_index = strategy.all_gather(padded_index).reshape(-1)
        keep = gathered_index >= 0
        return gathered[keep].cpu(), gathered_index[keep].cpu()

    @staticmethod
    def _assemble(rows: Tensor, index: Tensor, size: int, what: str) -> Tensor:
        """`rows` placed at `index` in a `(size, dim)` matrix, the first of duplicated indices kept.

        Raises:
            RuntimeError: an index in ``range(size)`` has no row.
        """
        order = torch.argsort(index, stable=True)
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = index[order][1:] != index[order][:-1]
        keep = order[first]
        matrix = torch.zeros(size, rows.shape[1])
        matrix[index[keep]] = rows[keep]
        filled = torch.zeros(size, dtype=torch.bool)
        filled[index[keep]] = True
        if not filled.all():
            missing = torch.nonzero(~filled).flatten().tolist()
            raise RuntimeError(f"{len(missing)} of {size} {what} were never measured (positions {missing[:5]}): an "
                               "item was skipped (by the predict sampler, or trainer.limit_predict_batches); every "
                               "item must be scored.")
        return matrix

    def query_features(self) -> Tensor:
        """Features `(n_queries, dim)` of every query, in manifest order: this rank's share, gathered."""
        rank, world = self.global_rank, self.trainer.world_size
        loader = self.trainer.datamodule.query_dataloader(rank, world)
        parts = [self.features(batch, query=True)
                 for batch in progress(self.trainer, loader, "The queries' features", len(loader))]
        vectors = torch.cat([part.vectors for part in parts]) if parts else torch.zeros(0, 0)
        positions = torch.arange(rank, len(self.query_ids), world)
        if positions.numel() != vectors.shape[0]:
            raise RuntimeError(f"The query loader served {vectors.shape[0]} queries to rank {rank}, expected "
                               f"{positions.numel()}.")
        rows, index = self._gather(vectors, positions)
        return self._assemble(rows, index, len(self.query_ids), "queries")

    def _total(self, value: Tensor) -> Tensor:
        """`value` summed over the ranks (each rank's share of the training set contributes)."""
        if self.trainer.world_size == 1:
            return value
        return self.trainer.strategy.reduce(value.to(self.device), reduce_op="sum").to(value.device)

    def on_predict_end(self) -> None:
        queries = self.query_features()
        local = torch.cat(self._vectors) if self._vectors else torch.zeros(0, queries.shape[1])
        local_scores = self.baseline.match(queries, local, self._total)
        rows, index = self._gather(local_scores.T.contiguous(), torch.tensor(self._rows, dtype=torch.long))
        self.scores = self._assemble(rows, index, len(self.train_ids), "training items").T.contiguous()
        if self.trainer.is_global_zero:
            self.write()
        self.trainer.strategy.barrier("similarity_written")

    def write(self) -> None:
        """Write each query's ranking into ``<out_dir>/<query id>/<name>/`` and the score matrix into
        ``store.scores_path(name)``, atomically; add each ranking to TensorBoard when the trainer logs there."""
        if self.scores is None:
            raise RuntimeError("SimilarityRanking.write runs after the pass has assembled the scores.")
        captions = [item.caption for item in self.train_items]
        groups = [item.group for item in self.train_items]
        boards = [logger.experiment for logger in self.trainer.loggers if isinstance(logger, TensorBoardLogger)]
        for query_id, scores in zip(self.query_ids, self.scores, strict=True):
            rows = write_ranking(self.store.query_dir(query_id, self.name), self.train_ids, captions, groups, scores,
                                 top_k=self.top_k, score_label=self.score_label, query=query_id)
            for board in boards:
                log_ranking(board, rows, tag=f"similarity/{self.name}/{query_id}", top_k=self.top_k,
                            score_label=self.score_label, query=query_id)
        self.store.write_scores(self.name, self.train_ids, self.query_ids, self.scores, type(self.baseline).__name__)
        log.info("%s similarity of %d training items to %d queries written to %s/<query id>/%s and %s.",
                 self.name, len(self.train_ids), len(self.query_ids), self.out_dir, self.name,
                 self.store.scores_path(self.name))
