"""The files of training-data attribution, owned in one place: every pass that writes or reads a Fisher, a loss sweep,
a query's delta, a ranking, a score matrix or a summary goes through this module, so the layout, the verification
and the recipe checks are stated once.

Layout (each file written atomically with its digest, `lightning_modules.io`, and verified when read):

    <fisher file>                                   the training set's diagonal Fisher and its recipe (`FisherFile`)
    <sweep folder>/sweep.json, shard-NNNNN.pt       a loss sweep: its recipe, one file per fixed shard (`Sweep`)
    <out_dir>/<query id>/unlearning/delta.pt, .json  a query's unlearned weights and their settings (`Delta`)
    <out_dir>/<query id>/unlearning/sweep/          the training set's losses after unlearning the query (a `Sweep`)
    <out_dir>/<query id>/<method>/                  a ranking of the training set for the query (`write_ranking_files`)
    <out_dir>/scores_<name>.pt                      a similarity pass's score matrix (n_queries, n_train)
    <out_dir>/summary.json, summary.md              attribution by unlearning over every query
    <lds folder>/lds.json, models/NNNN.pt           an LDS benchmark: recipe, a file per subset model (`LdsBenchmark`)

`AttributionStore` is the ``out_dir`` of a run (per-query folders, score matrices, the summary); `Sweep`, `Delta` and
`FisherFile` are the three files a pass may also be given by path (the "before" sweep, a ``delta_path``, a
``fisher_path``). A recipe is what a file's numbers depend on; a file written with another recipe than a run's is an
error naming the keys that differ (`differing_keys`), never silently reused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_modules.io import (
    CorruptFileError,
    StrListField,
    TensorField,
    TensorMapField,
    atomic_file,
    load_verified,
    read_json_verified,
    reusable,
    save_verified,
    write_json_atomic,
    write_json_verified,
    write_text_atomic,
)

UNLEARNING = "unlearning"  # the sub-folder of a query's folder for attribution by unlearning (baselines: their name)
RANKING_COLUMNS = ("id", "caption", "group", "score", "rank")
GROUP_COLUMNS = ("group", "sum", "mean", "count", "rank")
SUMMARY_FILE = "summary.json"


def differing_keys(saved: Mapping[str, Any], expected: Mapping[str, Any], ignore: Iterable[str] = (),
                   strict: bool = False) -> list[str]:
    """The keys of `expected` whose values differ in `saved` (a missing key differs), sorted; with `strict`, keys only
    `saved` has count too. `ignore` names keys that may differ."""
    keys = (expected.keys() | saved.keys() if strict else expected.keys()) - set(ignore)
    return sorted(key for key in keys if saved.get(key) != expected.get(key))


def ids_digest(ids: Sequence[str]) -> str:
    """A hash of the sorted item ids: which training set a sweep covers."""
    return hashlib.blake2b("\n".join(sorted(ids)).encode(), digest_size=12).hexdigest()


class Sweep:
    """One loss sweep's folder: ``sweep.json`` (the recipe: the model, its weights, the draws and the items) and one
    ``shard-NNNNN.pt`` per fixed shard of the items sorted by id (ids and losses `(items, draws)` float32).
    `FeatureStore` is the same layout for per-item feature vectors.

    Args:
        folder: the sweep's folder.
    """

    RECIPE = "sweep.json"
    KIND = "loss sweep"
    FIELD = "loss"  # the per-item rows' key in a shard file
    COMMAND = "configs/attribution/sweep.yaml --data.init_args.sweep_dir"  # the pass that writes it

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r})"

    @property
    def shard_structure(self) -> dict[str, Any]:
        return {"id": StrListField(), self.FIELD: TensorField(ndim=2, dtype=torch.float32, finite=True)}

    @property
    def recipe_path(self) -> Path:
        return self.folder / self.RECIPE

    def shard_path(self, index: int) -> Path:
        """The file of shard `index`."""
        return self.folder / f"shard-{index:05d}.pt"

    def _rerun(self) -> str:
        return f"run the command that wrote the {self.KIND} {self.folder} again: it recomputes missing and bad shards"

    def write_shard(self, index: int, ids: Sequence[str], rows: Tensor) -> None:
        """Write shard `index`: its item `ids` and their rows (losses `(items, draws)`), float32, atomically."""
        save_verified({"id": list(ids), self.FIELD: rows.detach().cpu().float()}, self.shard_path(index))

    def read_shard(self, index: int) -> tuple[list[str], Tensor]:
        """The ids and rows (losses `(items, draws)`) of shard `index`, verified (digest, structure, finite values).

        Raises:
            FileNotFoundError: the shard was not written.
            CorruptFileError: it fails verification; the message names the file.
        """
        path = self.shard_path(index)
        label = f"{self.KIND} shard"
        shard = load_verified(path, label, self._rerun(), self.shard_structure)
        if len(shard[self.FIELD]) != len(shard["id"]):
            raise CorruptFileError(path, label, f"holds {len(shard['id'])} ids but {len(shard[self.FIELD])} rows",
                                   self._rerun())
        return shard["id"], shard[self.FIELD]

    def shard_done(self, index: int) -> bool:
        """Whether shard `index` is written and passes verification; a bad one is logged with a warning (it is
        computed again)."""
        return reusable(self.shard_path(index), lambda _: self.read_shard(index))

    def missing_shards(self, num_shards: int) -> list[int]:
        """The indices in ``range(num_shards)`` without a good shard file (missing, or failing verification)."""
        return [index for index in range(num_shards) if not self.shard_done(index)]

    def read_recipe(self) -> dict:
        """The sweep's recipe, verified.

        Raises:
            FileNotFoundError: there is none.
            CorruptFileError: it fails verification (or is not a JSON object); the message names it.
        """
        remedy = (f"what the {self.KIND}'s shards hold is unknown: delete the folder {self.folder} and run it "
                  "again (or give another folder)")
        recipe = read_json_verified(self.recipe_path, f"{self.KIND} recipe", remedy)
        if not isinstance(recipe, dict):
            raise CorruptFileError(self.recipe_path, f"{self.KIND} recipe", f"holds {type(recipe).__name__}, not a "
                                   "JSON object", remedy)
        return recipe

    def open(self, recipe: dict, write: bool) -> None:
        """Check that the folder holds a sweep with this `recipe` (what its losses depend on), or none yet; with
        `write`, record the recipe in a new folder. Called before any shard is computed, so a sweep is never continued
        with another model, weights, draws or items.

        Raises:
            ValueError: the folder holds a sweep with another recipe (the message names the differing keys), or shard
                files without a recipe.
            CorruptFileError: the recipe fails verification.
        """
        if self.recipe_path.is_file():
            saved = self.read_recipe()
            differs = differing_keys(saved, recipe, strict=True)
            if differs:
                raise ValueError(f"{self.folder} holds a {self.KIND} with other {', '.join(differs)} than this run's "
                                 f"({ {key: saved.get(key) for key in differs} } there, "
                                 f"{ {key: recipe.get(key) for key in differs} } now); give another folder, or delete "
                                 "it to start over.")
        elif any(self.folder.glob("shard-*.pt")):
            raise ValueError(f"{self.folder} holds shard files but no {self.RECIPE}, so what they measured is unknown; "
                             "delete them or give another folder.")
        elif write:
            write_json_verified(self.recipe_path, recipe)

    def read(self) -> tuple[list[str], Tensor]:
        """The ids (sorted) and losses `(items, draws)` of the finished sweep, assembled from its shards.

        Raises:
            FileNotFoundError: the folder holds no sweep recipe, or a shard is missing (re-run the sweep to finish it).
            CorruptFileError: the recipe or a shard fails verification (the message names the file).
            ValueError: the shards do not hold the items the recipe names.
        """
        if not self.recipe_path.is_file():
            raise FileNotFoundError(f"{self.recipe_path} not found: {self.folder} holds no {self.KIND}. Run one first: "
                                    f"`python train.py predict --config {self.COMMAND} {self.folder}`.")
        recipe = self.read_recipe()
        num_shards = math.ceil(recipe["num_items"] / recipe["shard_size"])
        missing = [index for index in range(num_shards) if not self.shard_path(index).is_file()]
        if missing:
            raise FileNotFoundError(f"The {self.KIND} in {self.folder} is incomplete: {len(missing)} of {num_shards} "
                                    f"shard(s) are missing (e.g. {[self.shard_path(i).name for i in missing[:5]]}). "
                                    "Run the same command again: written shards are skipped.")
        ids: list[str] = []
        losses = []
        for index in range(num_shards):
            shard_ids, shard_losses = self.read_shard(index)
            ids.extend(shard_ids)
            losses.append(shard_losses)
        if ids != sorted(ids) or len(ids) != recipe["num_items"] or ids_digest(ids) != recipe["ids"]:
            raise ValueError(f"The shards in {self.folder} do not hold the items its {self.RECIPE} names; delete the "
                             "folder and run it again.")
        return ids, torch.cat(losses)


class FeatureStore(Sweep):
    """A training set's per-item feature vectors `(items, dim)` float32 (projected, preconditioned gradients for the
    first-order estimate, TRAK and D-TRAK), computed once and read by every later pass (`SimilarityRanking`'s
    ``train_store``): ``store.json`` (the recipe: the model, its weights, the baseline and its feature settings, the
    items) and one ``shard-NNNNN.pt`` per fixed shard, written atomically, resumable shard by shard
    (``configs/attribution/gradient_store.yaml``)."""

    RECIPE = "store.json"
    KIND = "feature store"
    FIELD = "vectors"
    COMMAND = "configs/attribution/gradient_store.yaml --data.init_args.sweep_dir"


def aligned_scores(path: str | os.PathLike, train_ids: Sequence[str], query_ids: Sequence[str]) -> Tensor:
    """The score matrix an attribution pass wrote to `path` (`AttributionStore.write_scores`), verified, float64, its
    rows in the order of `query_ids` and its columns in that of `train_ids`: how a later step (an LDS evaluation, the
    cascade's candidates) reads another pass's scores.

    Raises:
        FileNotFoundError, CorruptFileError: no such file, or it fails verification.
        ValueError: a query is not scored, or the scored training set is not `train_ids`.
    """
    record = load_verified(path, AttributionStore.SCORES, "write the scores again with the pass that made them",
                           AttributionStore.SCORES_STRUCTURE)
    rows = {query: i for i, query in enumerate(record["query_ids"])}
    columns = {track: j for j, track in enumerate(record["ids"])}
    unscored = [query for query in query_ids if query not in rows]
    if unscored:
        raise ValueError(f"{path} scores none of the queries {list(unscored[:5])} ({len(unscored)} in all): score "
                         "them with the pass that wrote it.")
    if set(columns) != set(train_ids) or len(columns) != len(train_ids):
        raise ValueError(f"{path} scores {len(columns)} training tracks, the training set has {len(train_ids)}, and "
                         f"the sets differ (e.g. {sorted(set(columns) ^ set(train_ids))[:3]}): score this training set "
                         "with the pass that wrote it.")
    scores = record["scores"].double()
    return scores[[rows[query] for query in query_ids]][:, [columns[track] for track in train_ids]]


class Delta:
    """A query's unlearned weights (``delta.pt``: parameter name -> tensor, what the "after" sweep loads) and the
    settings that produced them (``delta.json`` beside it).

    Args:
        path: the weights' file; the settings go to the same path with suffix ``.json``.
    """

    WHAT = "query unlearning delta"
    REMEDY = ("unlearn the query again to rewrite it: `python train.py predict --config configs/attribution/"
              "attribute.yaml` (the same run) recomputes a bad delta, or `python train.py fit --config "
              "configs/attribution/unlearn.yaml` for a delta_path written by hand")

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.settings_path = self.path.with_suffix(".json")

    def write(self, delta: Mapping[str, Tensor], settings: dict[str, Any]) -> None:
        """Write the changed parameters and their `settings`, each atomically with its digest."""
        save_verified({name: value.detach().cpu() for name, value in delta.items()}, self.path)
        write_json_verified(self.settings_path, settings)

    def read(self) -> dict[str, Tensor]:
        """The changed parameters, verified (digest, name -> finite tensor).

        Raises:
            FileNotFoundError: the file does not exist.
            CorruptFileError: it fails verification; the message names it and how to rewrite it.
        """
        return load_verified(self.path, self.WHAT, self.REMEDY, TensorMapField(finite=True))

    def settings(self) -> dict[str, Any]:
        """The settings written beside the weights, verified."""
        what = f"settings of a {self.WHAT}"
        settings = read_json_verified(self.settings_path, what, self.REMEDY)
        if not isinstance(settings, dict):
            raise CorruptFileError(self.settings_path, what, f"holds {type(settings).__name__}, not a JSON object",
                                   self.REMEDY)
        return settings

    def settings_verified(self) -> bool:
        """Whether the settings exist and pass verification."""
        try:
            self.settings()
        except (FileNotFoundError, CorruptFileError):
            return False
        return True


class FisherFile:
    """A diagonal Fisher (parameter name -> tensor) and what it was computed from (its recipe, the item count ``count``
    N, the parameter ``names``): the preconditioner of attribution by unlearning and EWC's penalty.

    Args:
        path: the file.
    """

    WHAT = "diagonal Fisher information"
    REMEDY = ("delete it and compute it again with the command that wrote it: `python train.py predict --config "
              "configs/attribution/fisher.yaml` (model.init_args.fisher_path), or the EWC unlearning run that "
              "cached it")
    STRUCTURE = {"fisher": TensorMapField(finite=True), "info": dict}

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def save(self, fisher: Mapping[str, Tensor], **info: Any) -> None:
        """Write the Fisher and `info` (its recipe and anything else worth keeping), atomically with its digest."""
        save_verified({"fisher": {name: value.detach().cpu() for name, value in fisher.items()}, "info": info},
                      self.path)

    def read(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The Fisher and its info, verified (digest, structure, finite values), whatever its recipe.

        Raises:
            FileNotFoundError: the file does not exist.
            CorruptFileError: it fails verification; the message names it and how to rewrite it.
        """
        saved = load_verified(self.path, self.WHAT, self.REMEDY, self.STRUCTURE)
        return saved["fisher"], saved["info"]

    def readable(self) -> bool:
        """Whether the file exists and passes verification (a bad one is logged with a warning)."""
        return reusable(self.path, lambda _: self.read())

    def check(self, info: Mapping[str, Any], **expected: Any) -> None:
        """Raise a ValueError naming the file and the keys of `expected` whose values differ from `info`."""
        differs = differing_keys(info, expected)
        if differs:
            raise ValueError(f"The Fisher information in {self.path} was computed for other {', '.join(differs)} than "
                             "this run's; delete the file to recompute it, or give another path.")

    def load(self, **expected: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The Fisher and its info, after checking the recipe keys in `expected`.

        Raises:
            FileNotFoundError: the file does not exist (the message says how to compute it).
            CorruptFileError: it fails verification.
            ValueError: it was computed for another recipe (the message names the differing keys).
        """
        if not self.path.is_file():
            raise FileNotFoundError(f"No Fisher information at {self.path}; compute it first with `python train.py "
                                    "predict --config configs/attribution/fisher.yaml` (model.init_args.fisher_path).")
        fisher, info = self.read()
        self.check(info, **expected)
        return fisher, info


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: row[column] for column in columns} for row in rows)
    return buffer.getvalue()


def write_ranking_files(folder: str | os.PathLike, rows: Sequence[dict[str, Any]], per_group: Sequence[dict[str, Any]],
                        table: str, figure: Any) -> None:
    """Write a ranking into `folder`, each file atomically: ``ranking.csv`` / ``ranking.json`` (`RANKING_COLUMNS`, most
    attributed first), ``groups.csv`` / ``groups.json`` (`GROUP_COLUMNS`), ``top_tracks.md`` (`table`) and
    ``top_tracks.png`` (`figure`, a matplotlib figure)."""
    folder = Path(folder)
    write_text_atomic(folder / "ranking.csv", _csv_text(rows, RANKING_COLUMNS))
    write_json_atomic(folder / "ranking.json", list(rows))
    write_text_atomic(folder / "groups.csv", _csv_text(per_group, GROUP_COLUMNS))
    write_json_atomic(folder / "groups.json", list(per_group))
    write_text_atomic(folder / "top_tracks.md", table + "\n")
    with atomic_file(folder / "top_tracks.png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)


class AttributionStore:
    """The output folder of an attribution run: one folder per query (attribution by unlearning in ``unlearning/``,
    each similarity baseline in its own), the similarity score matrices and the summary.

    Args:
        out_dir: the folder.
    """

    SCORES = "similarity score matrix"
    SCORES_STRUCTURE = {"ids": StrListField(), "query_ids": StrListField(),
                        "scores": TensorField(ndim=2, dtype=torch.float32, finite=True)}

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)

    def query_dir(self, query_id: str, method: str = UNLEARNING) -> Path:
        """The folder of one query's attribution by `method`: by unlearning (``delta.pt``, ``delta.json``, ``sweep/``
        and the ranking files), or a similarity baseline's ranking (its name)."""
        return self.out_dir / query_id / method

    def delta(self, query_id: str) -> Delta:
        """The query's unlearned weights and their settings."""
        return Delta(self.query_dir(query_id) / "delta.pt")

    def sweep(self, query_id: str) -> Sweep:
        """The training set's losses after unlearning the query."""
        return Sweep(self.query_dir(query_id) / "sweep")

    def scores_path(self, name: str) -> Path:
        """The file of the similarity pass `name`'s whole score matrix."""
        return self.out_dir / f"scores_{name}.pt"

    def write_scores(self, name: str, ids: list[str], query_ids: list[str], scores: Tensor, baseline: str) -> None:
        """Write the score matrix `(n_queries, n_train)` of the pass `name` (`read_scores`), atomically."""
        save_verified({"ids": list(ids), "query_ids": list(query_ids), "scores": scores.detach().float().cpu(),
                       "name": name, "baseline": baseline}, self.scores_path(name))

    def read_scores(self, name: str) -> tuple[list[str], list[str], Tensor]:
        """The training ids (manifest order), the query ids and the cosine similarities `(n_queries, n_train)` float32
        the pass named `name` wrote.

        Raises:
            FileNotFoundError: no such pass was run into this folder.
            CorruptFileError: the file fails verification (digest, structure, shape, finite scores).
        """
        path = self.scores_path(name)
        command = (f"`python train.py predict --config configs/attribution/similarity_<baseline>.yaml "
                   f"--model.init_args.out_dir {self.out_dir} --model.init_args.name {name}`")
        if not path.is_file():
            raise FileNotFoundError(f"No similarity scores at {path}; run the pass first: {command}.")
        remedy = f"run the pass again to rewrite it: {command}"
        record = load_verified(path, self.SCORES, remedy, self.SCORES_STRUCTURE)
        expected = (len(record["query_ids"]), len(record["ids"]))
        if tuple(record["scores"].shape) != expected:
            raise CorruptFileError(path, self.SCORES, f"holds scores of shape {tuple(record['scores'].shape)} for "
                                   f"{expected[0]} queries and {expected[1]} items", remedy)
        return record["ids"], record["query_ids"], record["scores"]

    def write_summary(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write ``summary.json`` (one row per query: query, caption, group, query_loss, top_tracks, top_group,
        measured: the tracks its "after" sweep measured) and its table ``summary.md``, atomically."""
        write_json_atomic(self.out_dir / SUMMARY_FILE, list(rows))
        lines = ["| query | caption | top group | top tracks | query loss before -> after | tracks measured |",
                 "|---|---|---|---|---|---:|"]
        lines += [f"| {row['query']} | {row['caption']} | {row['top_group']} | {', '.join(row['top_tracks'])} | "
                  f"{row['query_loss']['before']:.4g} -> {row['query_loss']['after']:.4g} | {row['measured']} |"
                  for row in rows]
        write_text_atomic(self.out_dir / "summary.md", "\n".join(lines) + "\n")


class LdsBenchmark:
    """The linear datamodeling benchmark of a model (`lightning_modules.attribution.lds`): subset models trained on
    random halves of the training set and each one's loss on every query.

    Layout: ``lds.json``, the recipe (``train_ids``; ``query_ids``; ``split``, query id -> "validation" or "test";
    ``fraction`` of the training set per subset; ``seed``; ``num_models``; and whatever else the losses depend on, such
    as the loss draws and the subset models' training recipe), ``models/NNNN.pt`` per finished subset model (its
    training mask and its loss on every query), and ``groups/<group>.pt`` per model trained without one group's tracks
    (and ``groups/none.pt``, the model trained on all, the reference of their effects): group-level ground truth.
    Subset m is drawn from the seed and m alone, so a build stops and resumes anywhere, on any machine, and each
    model's file is written when it finishes.

    Args:
        folder: the benchmark's folder.
    """

    RECIPE_KEYS = ("train_ids", "query_ids", "split", "fraction", "seed", "num_models")
    SPLITS = ("validation", "test")
    WHAT = "LDS subset model"
    REMEDY = "delete it; the build trains that subset model again (`python scripts/lds.py build`)"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.recipe_path = self.folder / "lds.json"

    def create(self, recipe: Mapping[str, Any]) -> None:
        """Write `recipe` for a new benchmark, or check that an existing one was made with the same recipe.

        Raises:
            ValueError: a key is missing or malformed, or the folder holds a benchmark of another recipe (the message
                names the keys that differ).
        """
        missing = [key for key in self.RECIPE_KEYS if key not in recipe]
        if missing:
            raise ValueError(f"An LDS recipe needs {list(self.RECIPE_KEYS)}; missing {missing}.")
        if set(recipe["split"]) != set(recipe["query_ids"]) or not set(recipe["split"].values()) <= set(self.SPLITS):
            raise ValueError(f"The LDS recipe's split must give every query id one of {self.SPLITS}.")
        if not 0 < recipe["fraction"] < 1 or recipe["num_models"] < 3:
            raise ValueError(f"An LDS needs a subset fraction in (0, 1) and at least 3 models, got fraction "
                             f"{recipe['fraction']} and {recipe['num_models']} models.")
        if self.recipe_path.is_file():
            differ = differing_keys(self.recipe(), recipe, strict=True)
            if differ:
                raise ValueError(f"{self.folder} holds an LDS benchmark made with another recipe (keys {differ} "
                                 "differ): choose another folder, or delete it to build this one.")
            return
        write_json_verified(self.recipe_path, dict(recipe))

    def recipe(self) -> dict[str, Any]:
        """The benchmark's recipe, verified.

        Raises:
            FileNotFoundError: the folder holds no benchmark.
            CorruptFileError: the recipe fails verification.
        """
        if not self.recipe_path.is_file():
            raise FileNotFoundError(f"{self.folder} holds no LDS benchmark (no lds.json): give the folder of one.")
        recipe = read_json_verified(self.recipe_path, "LDS benchmark recipe",
                                    f"delete {self.folder} and build the benchmark again")
        missing = [key for key in self.RECIPE_KEYS if key not in recipe] if isinstance(recipe, dict) else ["all"]
        if missing:
            raise CorruptFileError(self.recipe_path, "LDS benchmark recipe", f"lacks {missing}",
                                   f"delete {self.folder} and build the benchmark again")
        return recipe

    def subset(self, index: int) -> Tensor:
        """The training mask `(n_train,)` bool of subset model `index`: a random `fraction` of the tracks, drawn from
        the recipe's seed and `index` alone."""
        return self._subset(self.recipe(), index)

    @staticmethod
    def _subset(recipe: Mapping[str, Any], index: int) -> Tensor:
        n_train = len(recipe["train_ids"])
        generator = torch.Generator().manual_seed(recipe["seed"] * 100_003 + index)
        chosen = torch.randperm(n_train, generator=generator)[: round(recipe["fraction"] * n_train)]
        return torch.zeros(n_train, dtype=torch.bool).index_fill_(0, chosen, True)

    def model_path(self, index: int) -> Path:
        return self.folder / "models" / f"{index:04d}.pt"

    def write_model(self, index: int, losses: Tensor, info: Mapping[str, Any] | None = None) -> None:
        """Record subset model `index`: its loss on every query `(n_queries,)`, in the recipe's query order, and
        `info` on how it was made (seconds, device; not part of the recipe)."""
        recipe = self.recipe()
        if not 0 <= index < recipe["num_models"] or losses.shape != (len(recipe["query_ids"]),):
            raise ValueError(f"Subset model {index} of {recipe['num_models']} needs one loss per query "
                             f"({len(recipe['query_ids'])}), got shape {tuple(losses.shape)}.")
        if not torch.isfinite(losses).all():
            raise ValueError(f"Subset model {index} has non-finite query losses; its training diverged.")
        save_verified({"index": index, "mask": self._subset(recipe, index), "losses": losses.detach().double().cpu(),
                       "info": dict(info or {})}, self.model_path(index))

    def finished(self) -> list[int]:
        """The subset models whose file is there and passes verification."""
        return sorted(self._finished_records(self.recipe()))

    def _finished_records(self, recipe: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
        """Index -> record of every finished subset model, each file read and verified once."""
        records: dict[int, dict[str, Any]] = {}
        for index in range(recipe["num_models"]):
            def read(path: Path, index: int = index) -> None:
                records[index] = self._read_model(index, recipe)
            reusable(self.model_path(index), read)
        return records

    def missing(self) -> list[int]:
        """The subset models still to train."""
        done = set(self.finished())
        return [index for index in range(self.recipe()["num_models"]) if index not in done]

    def _read_model(self, index: int, recipe: Mapping[str, Any]) -> dict[str, Any]:
        path = self.model_path(index)
        record = load_verified(path, self.WHAT, self.REMEDY,
                               {"index": int, "mask": TensorField(ndim=1, dtype=torch.bool),
                                "losses": TensorField(ndim=1, finite=True)})
        if record["index"] != index or not torch.equal(record["mask"], self._subset(recipe, index)) or (
                len(record["losses"]) != len(recipe["query_ids"])):
            raise CorruptFileError(path, self.WHAT, "belongs to another subset or another query set", self.REMEDY)
        return record

    def group_path(self, group: str) -> Path:
        """The file of the model trained without the training tracks of `group` ("" for the model trained on all)."""
        return self.folder / "groups" / f"{group.lower().replace(' ', '_') or 'none'}.pt"

    def write_group(self, group: str, losses: Tensor, info: Mapping[str, Any] | None = None) -> None:
        """Record the model trained with the recipe on every track but `group`'s ("" leaves none out): its loss on
        every query, at the draws of the subset models. Its true effect on a query is its loss there minus the
        loss of the model trained on all."""
        recipe = self.recipe()
        if losses.shape != (len(recipe["query_ids"]),) or not torch.isfinite(losses).all():
            raise ValueError(f"The model without {group!r} needs one finite loss per query "
                             f"({len(recipe['query_ids'])}), got shape {tuple(losses.shape)}.")
        save_verified({"group": group, "losses": losses.detach().double().cpu(), "info": dict(info or {})},
                      self.group_path(group))

    def groups(self) -> dict[str, Tensor]:
        """Left-out group ("" for none) -> its model's query losses `(n_queries,)`, of every verified group file."""
        n_queries = len(self.recipe()["query_ids"])
        found: dict[str, Tensor] = {}
        for path in sorted((self.folder / "groups").glob("*.pt")):
            def read(path: Path) -> None:
                record = load_verified(path, "LDS group model", self.REMEDY,
                                       {"group": str, "losses": TensorField(ndim=1, finite=True)})
                if len(record["losses"]) != n_queries or path != self.group_path(record["group"]):
                    raise CorruptFileError(path, "LDS group model", "belongs to another group or query set",
                                           self.REMEDY)
                found[record["group"]] = record["losses"]
            reusable(path, read)
        return found

    def read(self, split: str | None = None) -> tuple[list[str], list[str], Tensor, Tensor]:
        """The training ids, the query ids (of `split`, or all), the finished models' masks `(n_models, n_train)` and
        their losses `(n_models, n_queries)`.

        Raises:
            ValueError: an unknown split, or fewer than 3 finished models.
        """
        if split is not None and split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS} or None, got {split!r}.")
        recipe = self.recipe()
        finished = self._finished_records(recipe)
        records = [finished[index] for index in sorted(finished)]
        if len(records) < 3:
            raise ValueError(f"{self.folder} has {len(records)} finished subset model(s) of {recipe['num_models']}; "
                             "LDS needs at least 3: go on with `python scripts/lds.py build`.")
        keep = [i for i, query in enumerate(recipe["query_ids"]) if split is None or recipe["split"][query] == split]
        masks = torch.stack([record["mask"] for record in records])
        losses = torch.stack([record["losses"] for record in records])[:, keep]
        return recipe["train_ids"], [recipe["query_ids"][i] for i in keep], masks, losses
