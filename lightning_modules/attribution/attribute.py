"""`QueryAttribution`: attribution by unlearning for a list of generated queries in one ``train.py predict`` run (Wang
et al., "Data Attribution for Text-to-Image Models by Unlearning Synthesized Images", NeurIPS 2024; Choi et al.,
"Large-Scale Training Data Attribution for Music Generative Models via Unlearning", 2025): each query is unlearned on
its own by Fisher-preconditioned ascent (`FisherAscent`), the training set's losses are measured again at the
"before" sweep's fixed draws (the "after" sweep, sharded over ranks and resumable), and each track's score is its
loss after minus its loss before, written as a ranking per query, a summary over the queries and the score matrix
(``<out_dir>/scores_unlearning.pt``, `AttributionStore.read_scores`, as the baselines write theirs). With the
DataModule's ``candidates`` (the cascade), the "after" sweep measures only each query's candidates and the other
tracks score their cheap score on the exact scores' scale (`calibrated_scores`).

The deltas are computed first, each query by one rank (round-robin) and written to ``<query>/delta.pt``, so every
rank measures exactly the same weights and a resumed run reuses them; then the ranks share the steps of the "after"
sweeps, a shard for one query or, with the DataModule's ``queries_per_pass``, for a group of queries one after
another on the same items (read, and encoded when unlearning leaves the encoder alone, once for the group; the group's
deltas held in memory); at the end rank 0 scores every query.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from datamodules.attribution_store import UNLEARNING, Delta, differing_keys
from datamodules.interfaces import QueryWork, require
from lightning_modules.attribution.cascade import calibrated_scores
from lightning_modules.attribution.precision import require_float32
from lightning_modules.attribution.query import FisherAscent
from lightning_modules.attribution.scoring import attribution_scores, group_scores, log_ranking, write_ranking
from lightning_modules.attribution.settings import AscentSettings
from lightning_modules.attribution.sweep import set_weights, sweep_inputs, sweep_losses, sweep_recipe
from lightning_modules.io import CorruptFileError
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.module import ModelAudioFormat

log = logging.getLogger(__name__)


class QueryAttribution(ModelAudioFormat, L.LightningModule):
    """Unlearns each query of a `QueryDataModule`, sweeps the training set after it, and ranks the tracks.

    Args:
        model: the model the queries were generated with, at the weights of the Fisher and the "before" sweep.
        fisher_path: the training set's Fisher (``configs/attribution/fisher.yaml``), covering `parameter_groups`.
        parameter_groups: names of the model's parameter groups unlearning changes.
        ascent: the ascent's lr, steps, draws, seed, eps and silence masking (``ascent:`` nested in YAML); the
            "before" sweep must have been measured with ``masked`` true for masking "dual" and false otherwise.
        micro_batch_size: (item, draw) rows per forward pass of the "after" sweeps.
        top_k: tracks shown in each query's table and bar plot.
    """

    def __init__(self, model: TextToMusicModel, fisher_path: str, parameter_groups: Sequence[str] = ("all",),
                 ascent: AscentSettings = AscentSettings(), micro_batch_size: int = 16, top_k: int = 20) -> None:
        super().__init__()
        if micro_batch_size < 1 or top_k < 1:
            raise ValueError(f"micro_batch_size and top_k must be at least 1, got {micro_batch_size} and {top_k}.")
        self.model = model.requires_grad_(False).eval()
        self.parameter_groups = list(parameter_groups)
        names = model.parameter_names(model.select_parameters(self.parameter_groups))
        self.ascent = FisherAscent(names, fisher_path, ascent)
        self.micro_batch_size = micro_batch_size
        self.top_k = top_k
        self.sweep: dict[str, Any] = {}  # the "before" sweep's recipe: draws, seed, masked
        self.base: dict[str, Tensor] = {}  # the selected parameters at the start, restored between queries
        self.weights = ""  # digest of the model's weights at the start (the "before" sweep's)
        self.current: int | None = None  # the query whose weights the model holds
        self.deltas: dict[int, dict[str, Tensor]] = {}  # the unlearned weights of the current group of queries
        self.opened: set[int] = set()  # the queries whose sweep folder's recipe this rank has checked
        self.encoder_unlearned = False  # whether the unlearned parameters include the audio encoder's

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise ValueError(f"QueryAttribution runs as `train.py predict`, not {stage!r}.")
        require_float32(self.model, "QueryAttribution", self.trainer)
        data = self.trainer.datamodule
        require(data, QueryWork, "QueryAttribution", "datamodules.queries.QueryDataModule")
        if not data.before.recipe_path.is_file():
            raise FileNotFoundError(f"No 'before' sweep at {data.before.folder} ({data.before.recipe_path} is "
                                    "missing). Run it first: `python train.py predict --config "
                                    f"configs/attribution/sweep.yaml --data.init_args.sweep_dir {data.before.folder}`.")
        self.sweep = data.before.read_recipe()
        expected = {**sweep_recipe(self.model, self.sweep["draws"], self.sweep["seed"], self.ascent.measure_masked),
                    **data.recipe()}
        differs = differing_keys(self.sweep, expected, ignore=("shard_size",))
        if differs:
            hint = (f" (masking {self.ascent.config.masking!r} measures with masked={self.ascent.measure_masked}: run "
                    "the 'before' sweep with --model.init_args.masked accordingly)" if "masked" in differs else "")
            raise ValueError(f"The 'before' sweep in {data.before.folder} was measured with other {', '.join(differs)} "
                             f"than this run's model and training set{hint}; run it again for them.")
        named = dict(self.model.named_parameters())
        self.base = {name: named[name].detach().clone() for name in self.ascent.names}
        self.weights = self.sweep["weights"]  # checked above: the model's weights digest
        self.current, self.deltas, self.opened = None, {}, set()
        encoder = self.model.audio_encoder()
        encoded_by = {id(param) for param in encoder.parameters()} if encoder is not None else set()
        self.encoder_unlearned = any(id(named[name]) in encoded_by for name in self.ascent.names)

    def on_predict_start(self) -> None:
        """Unlearn every query that still has shards to measure or a bad delta.json, and no good delta yet, query i
        on rank i mod world size, each from the original weights; then every rank can load any query's delta."""
        data = self.trainer.datamodule
        queries = data.query_items()
        # the rankings read each query's delta.json: a bad one is rewritten even when the query's shards are done
        pending = sorted({query for query, _ in data.missing_work()}
                         | {query for query, item in enumerate(queries)
                            if not data.store.delta(item.id).settings_verified()})
        self.trainer.strategy.barrier("query_deltas_listed")  # every rank splits the same list before any writes
        rank, world = self.trainer.global_rank, self.trainer.world_size
        for query in pending[rank::world]:
            query_id = queries[query].id
            if not self._delta_matches(data.store.delta(query_id), query_id):
                self._restore()
                batch = self._on_device(data.query_set, query)
                with torch.inference_mode(False), torch.enable_grad():
                    delta, query_loss = self.ascent.unlearn(self.model, batch)
                data.store.delta(query_id).write(delta, self.settings(query_id, query_loss))
                log.info("Query %s unlearned: its loss %.6g -> %.6g.", queries[query].id,
                         query_loss["before"], query_loss["after"])
        self._restore()
        self.trainer.strategy.barrier("query_deltas_written")

    def settings(self, query_id: str, query_loss: dict[str, float] | None = None) -> dict[str, Any]:
        """What a query's delta depends on (and, once unlearned, the query's loss before and after)."""
        settings = {"query": query_id, "parameter_groups": self.parameter_groups, **self.ascent.settings(),
                    "weights": self.weights}
        return settings if query_loss is None else {**settings, "query_loss": query_loss}

    def _delta_matches(self, delta: Delta, query_id: str) -> bool:
        """Whether `delta` exists with this run's settings (reused); a delta of other settings is refused, one that
        fails verification is logged with a warning and computed again."""
        if not delta.path.is_file() or not delta.settings_path.is_file():
            return False
        try:
            delta.read()
            saved = delta.settings()
        except CorruptFileError as error:
            log.warning("Unlearning the query again: %s", error)
            return False
        differs = differing_keys(saved, self.settings(query_id))
        if differs:
            raise ValueError(f"{delta.path.parent} holds a query delta with other {', '.join(differs)} than this "
                             "run's; give another data.init_args.out_dir, or delete the folder to start over.")
        return True

    def _on_device(self, dataset: Any, index: int) -> Batch:
        item = torch.utils.data.default_collate([dataset[index]])
        return {key: value.to(self.device) if isinstance(value, Tensor) else value for key, value in item.items()}

    def _restore(self) -> None:
        set_weights(self.model, self.base)
        self.current = None

    def _delta(self, query: int) -> dict[str, Tensor]:
        """Query `query`'s unlearned weights, read from its delta file (verified) unless held in `deltas`."""
        if query in self.deltas:
            return self.deltas[query]
        data = self.trainer.datamodule
        path = data.store.delta(data.query_items()[query].id).path
        delta = Delta(path).read()
        if sorted(delta) != sorted(self.ascent.names):
            raise ValueError(f"{path} holds other weights than the unlearned ones of this run's parameter groups "
                             f"{self.parameter_groups}; delete the query's folder and run again.")
        return delta

    def _hold(self, query: int) -> None:
        """Put the model at query `query`'s unlearned weights and, the first time on this rank, check its sweep
        folder's recipe."""
        if self.current == query:
            return
        data = self.trainer.datamodule
        set_weights(self.model, self._delta(query))  # every unlearned weight: nothing of the query before is left
        self.current = query
        if query not in self.opened:
            recipe = {**sweep_recipe(self.model, self.sweep["draws"], self.sweep["seed"], self.sweep["masked"]),
                      **data.recipe_of(query)}
            data.sweep_of(query).open(recipe, write=True)  # every rank holding it writes the same recipe
            self.opened.add(query)

    def predict_step(self, element: dict, batch_idx: int = 0) -> list[dict]:
        """The "after" losses `(items, draws)` of one shard for each query of the step, for `SweepWriter`."""
        if "batch" not in element:
            return [{"shard": int(element["shard"]), "id": [], "rows": torch.empty(0, self.sweep["draws"])}]
        queries = [int(query) for query in element["queries"]]
        # a group's deltas in memory, each read once, as the model switches between them; none held otherwise
        self.deltas = {query: self._delta(query) for query in queries} if len(queries) > 1 else {}
        batch, draws, seed, masked = element["batch"], self.sweep["draws"], self.sweep["seed"], self.sweep["masked"]
        if len(queries) > 1 and not self.encoder_unlearned:  # the same targets under every query's weights
            batch = sweep_inputs(self.model, batch, masked, self.micro_batch_size)
        predictions = []
        for query in queries:
            self._hold(query)
            self.model.eval()
            losses = sweep_losses(self.model, batch, draws, seed, masked, self.micro_batch_size)
            predictions.append({"sweep": self.trainer.datamodule.sweep_of(query), "shard": int(element["shard"]),
                                "id": list(batch["id"]), "rows": losses})
        return predictions

    def on_predict_end(self) -> None:
        """Rank 0 scores every query (its "after" sweep against the "before" one) and writes the rankings."""
        self._restore()
        self.deltas = {}
        if self.trainer.is_global_zero:
            self.write_rankings()
        self.trainer.strategy.barrier("rankings_written")

    def write_rankings(self) -> list[dict[str, Any]]:
        """Write each query's ranking into its folder and ``summary.json`` / ``summary.md`` into ``out_dir``."""
        data = self.trainer.datamodule
        ids, before = data.before.read()
        items = {item.id: item for item in data.all_items()}
        captions = [items[item_id].caption for item_id in ids]
        groups = [items[item_id].group for item_id in ids]
        experiment = self.logger.experiment if isinstance(self.logger, TensorBoardLogger) else None
        summary, matrix = [], []
        for index, query in enumerate(data.query_items()):
            after_ids, after = data.store.sweep(query.id).read()
            measured = data.measured(index)
            if after_ids != [ids[i] for i in measured]:
                raise ValueError(f"The sweeps in {data.before.folder} and {data.store.sweep(query.id).folder} cover "
                                 "other tracks; delete the query's folder and run again.")
            scores = attribution_scores(before[measured], after)
            if data.cheap is not None:  # the cascade: the rest by the cheap score, on the exact scores' scale
                scores = calibrated_scores(data.cheap[index], torch.tensor(measured), scores)
            matrix.append(scores)
            named = f"{query.id}, “{query.caption}”"
            rows = write_ranking(data.store.query_dir(query.id), ids, captions, groups, scores, self.top_k,
                                 query=named)
            per_group = group_scores(groups, scores)
            settings = data.store.delta(query.id).settings()
            summary.append({"query": query.id, "caption": query.caption, "group": query.group,
                            "query_loss": settings["query_loss"], "top_tracks": [row["id"] for row in rows[:5]],
                            "top_group": per_group[0]["group"] if per_group else "", "measured": len(measured)})
            if experiment is not None:
                log_ranking(experiment, rows, tag=f"attribution/{query.id}", top_k=self.top_k, query=named)
        data.store.write_summary(summary)
        data.store.write_scores(UNLEARNING, ids, [query.id for query in data.query_items()], torch.stack(matrix),
                                type(self).__name__)
        log.info("Attribution of %d query(ies) written to %s.", len(summary), data.store.out_dir)
        return summary
