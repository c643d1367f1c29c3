"""Attribution by unlearning on the toy world, where the truth is known: consistency, ground truth and counterfactuals.

Three studies of the shipped toy model's training set (400 tracks of 10 fictional artists), each writing a JSON and
a Markdown report into ``--out`` and caching every intermediate result in ``--cache``, so an interrupted run resumes.
Each study's grid and recipe is its YAML in ``configs/attribution/study/`` (after ``common.yaml``, the settings they
share); any setting can be replaced on the command line (``--lrs [1e-6,1e-5]``) or by ``--config my.yaml``:

- ``consistency``: self-influence (Choi et al. 2025). Training tracks chosen by k-means on their CLAP embeddings are
  cropped to a zero-padded excerpt and unlearned as queries; R is the mean rank at which each finds its own track
  (1.0 = always first), over a grid of learning rate x steps x parameter groups x silence masking (table, heatmap).
- ``ground-truth``: generations prompted "a piece by <artist>" (`datamodules.toy_queries.ToyQueries`) are attributed
  by unlearning (the best grid cell) and by the CLAP, activation and gradient similarity baselines: precision@k
  (share of the top-k tracks by the prompted artist), top-/bottom-k CLAP similarity and rank correlations.
- ``counterfactual``: for prompted generations, the top-K tracks of each method are removed from the training set
  and the model is fine-tuned again from a warm start that never saw the prompted artist (the shipped oracle, which
  was trained without Kestrel Drive); the rise of the query's loss is compared with removing K random tracks
  (Wang et al. 2024's leave-K-out test, on a short schedule).

    python scripts/attribution_study.py consistency
    python scripts/attribution_study.py ground-truth
    python scripts/attribution_study.py counterfactual
    python scripts/attribution_study.py counterfactual --print_config  # the settings a run would use
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.cli import OptimizerCallable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import ToyCorpus, read_manifest, write_manifest  # noqa: E402
from datamodules.audio import AudioTextDataset  # noqa: E402
from datamodules.toy_queries import ToyQueries  # noqa: E402
from lightning_modules.attribution.consistency import (  # noqa: E402
    kmeans_select,
    precision_at_k,
    rank_correlation,
    self_influence_rank,
    top_bottom_similarity,
)
from lightning_modules.attribution.fisher import write_fisher  # noqa: E402
from lightning_modules.attribution.query import FisherAscent  # noqa: E402
from lightning_modules.attribution.scoring import attribution_scores  # noqa: E402
from lightning_modules.attribution.settings import AscentSettings  # noqa: E402
from lightning_modules.attribution.similarity import (  # noqa: E402
    activation_features,
    clap_features,
    cosine_scores,
    gradient_features,
)
from lightning_modules.attribution.sweep import set_weights, sweep_losses  # noqa: E402
from lightning_modules.gradients import weights_digest  # noqa: E402
from lightning_modules.io import (  # noqa: E402
    load_verified,
    reusable,
    save_verified,
    write_json_atomic,
    write_text_atomic,
)
from lightning_modules.metrics import ClapEmbedder  # noqa: E402
from lightning_modules.models import ToyTextToMusic  # noqa: E402

log = logging.getLogger("attribution_study")

GROUPS = ("cross_attention_kv", "cross_attention", "self_attention", "all")
MASKINGS = ("none", "mixed", "dual")


def collate(items, model, with_targets: bool = True) -> dict:
    dataset = AudioTextDataset(items, model.sample_rate, model.num_samples)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    if with_targets:
        with torch.no_grad():
            batch["targets"] = model.encode_audio(batch["audio"], batch["mask"])
    return batch


def cached(path: Path, compute):
    """`compute()`, saved to `path` with its digest the first time and read back, verified, afterwards (a file that
    fails verification is computed again, with a warning)."""
    def read(file: Path):
        return load_verified(file, "attribution study cache entry", f"delete {file} to compute it again")

    if reusable(path, read):
        return read(path)
    value = compute()
    save_verified(value, path)
    return value


def model_digest(model: torch.nn.Module) -> str:
    """The SHA-256 of a model's weights: the cache key of everything computed from them."""
    return weights_digest(sorted(model.state_dict().items()))


class ToyStudy:
    """The shipped toy model, its training set, its Fisher and its "before" sweep, and attribution by unlearning."""

    def __init__(self, out: Path, cache: Path, model: str, clap: str, draws: int, micro_batch_size: int = 64) -> None:
        ToyCorpus("data/toy").prepare()
        self.out = out
        self.model = ToyTextToMusic.from_pretrained(model).eval().requires_grad_(False)
        # every cached result belongs to these weights: another model (a retrained base) starts a fresh cache
        self.digest = model_digest(self.model)
        self.cache = cache / self.digest
        self.items = sorted(read_manifest("data/toy/train.jsonl"), key=lambda item: item.id)
        self.ids = [item.id for item in self.items]
        self.groups = [item.group for item in self.items]
        self.batch = collate(self.items, self.model)
        self.draws = draws
        self.micro_batch_size = micro_batch_size
        self.fisher_path = self.cache / "fisher.pt"
        if not self.fisher_path.is_file():
            self._fisher()
        self.before = cached(self.cache / f"before-{draws}.pt", lambda: self.sweep(masked=False))
        self.clap = ClapEmbedder(clap)
        self.train_clap = cached(self.cache / "train-clap.pt", lambda: self.clap_features(self.batch))

    def _fisher(self) -> None:
        """The diagonal Fisher of every parameter over the training set, one draw per track (as the CLI's
        ``configs/attribution/fisher.yaml``)."""
        started = time.perf_counter()
        batches = [{key: value[i : i + 16] for key, value in self.batch.items()} for i in range(0, len(self.items), 16)]
        count = write_fisher(self.model, ["all"], batches, self.fisher_path, seed=0, draws=1)
        log.info("Fisher of %d tracks in %.0f s.", count, time.perf_counter() - started)

    def sweep(self, masked: bool) -> torch.Tensor:
        return sweep_losses(self.model, self.batch, self.draws, seed=0, masked=masked,
                            micro_batch_size=self.micro_batch_size)

    def clap_features(self, batch: dict) -> torch.Tensor:
        return clap_features(self.clap, [batch], self.model.sample_rate).vectors

    def scores(self, query: dict, groups: str, lr: float, steps: int, masking: str, unlearn_draws: int = 8
               ) -> tuple[torch.Tensor, dict[str, float]]:
        """Attribution scores `(n_train,)` of one query batch (one item), and its loss before / after unlearning."""
        names = self.model.parameter_names(self.model.select_parameters([groups]))
        ascent = FisherAscent(names, self.fisher_path, AscentSettings(lr=lr, steps=steps, draws=unlearn_draws,
                                                                      masking=masking))
        state = self.model.state_dict()
        base = {name: state[name].clone() for name in names}
        try:
            _, query_loss = ascent.unlearn(self.model, query)
            after = self.sweep(masked=ascent.measure_masked)
        finally:
            set_weights(self.model, base)
        before = self.before if not ascent.measure_masked else self.before_masked
        return attribution_scores(before, after).float(), query_loss

    @property
    def before_masked(self) -> torch.Tensor:
        return cached(self.cache / f"before-{self.draws}-masked.pt", lambda: self.sweep(masked=True))


def cell_name(lr: float, steps: int, groups: str, masking: str, query: str = "full") -> str:
    return f"{query}-lr{lr:g}-steps{steps}-{groups}-{masking}"


def grid_cells(args: Namespace) -> list[tuple[str, float, int, str, str]]:
    """(query, lr, steps, groups, masking) of the grid: whole tracks over lr x steps x groups (no padding, so the
    masking variants coincide: computed with "mixed" and one check cell per variant), and the zero-padded excerpts
    over lr x groups x masking at one step ("dual" equals "mixed" unless training tracks are padded)."""
    full = [("full", lr, steps, groups, "mixed")
            for lr, steps, groups in itertools.product(args.lrs, args.steps, GROUPS)]
    middle = args.lrs[len(args.lrs) // 2]
    checks = [("full", middle, args.steps[0], GROUPS[-1], masking) for masking in ("none", "dual")]
    crop = [("crop", lr, 1, groups, masking) for lr, groups, masking
            in itertools.product(args.crop_lrs, args.crop_groups, MASKINGS)]
    return full + checks + crop


def consistency(study: ToyStudy, args: Namespace) -> dict:
    """Self-influence R over the grid, on training tracks chosen by k-means on CLAP embeddings."""
    chosen = kmeans_select(torch.nn.functional.normalize(study.train_clap, dim=1), args.queries, seed=0).tolist()
    queries = {"full": [dataclasses.replace(study.items[i], id=f"self-{study.items[i].id}") for i in chosen],
               "crop": [dataclasses.replace(study.items[i], id=f"self-{study.items[i].id}", duration=args.crop)
                        for i in chosen]}
    batches = {key: [collate([item], study.model, with_targets=False) for item in items]
               for key, items in queries.items()}
    own = torch.tensor(chosen)
    cells = []
    for query, lr, steps, groups, masking in grid_cells(args):
        name = cell_name(lr, steps, groups, masking, query)

        def compute(query=query, lr=lr, steps=steps, groups=groups, masking=masking) -> dict:
            started = time.perf_counter()
            rows = [study.scores(batch, groups, lr, steps, masking) for batch in batches[query]]
            return {"scores": torch.stack([row[0] for row in rows]), "query_loss": [row[1] for row in rows],
                    "seconds": time.perf_counter() - started}

        result = cached(study.cache / "grid" / f"{name}-d{study.draws}.pt", compute)
        ranks = self_influence_rank(result["scores"], own)
        top = torch.topk(result["scores"], 10, dim=1).indices
        same_artist = sum(study.groups[j] == study.groups[chosen[q]] for q in range(len(chosen))
                          for j in top[q].tolist()) / top.numel()
        cells.append({"query": query, "lr": lr, "steps": steps, "groups": groups, "masking": masking,
                      "R": float(ranks.mean()), "median_rank": float(ranks.median()), "ranks": ranks.tolist(),
                      "first": int((ranks == 1).sum()), "same_artist_top10": same_artist,
                      "seconds": result["seconds"]})
        log.info("%s: R = %.2f (%d of %d first)", name, cells[-1]["R"], cells[-1]["first"], len(chosen))
    best = min((cell for cell in cells if cell["query"] == "full"), key=lambda cell: (cell["R"], cell["lr"]))
    report = {"queries": [item.id for item in queries["full"]], "crop_seconds": args.crop, "sweep_draws": study.draws,
              "n_train": len(study.items), "cells": cells, "best": best}
    write_json_atomic(study.out / "consistency.json", report)
    write_text_atomic(study.out / "consistency.md", grid_table(cells) + "\n")
    heatmap(cells, study.out / "consistency.png")
    return report


def _columns(cells: list[dict]) -> list[tuple[float, int]]:
    return sorted({(cell["lr"], cell["steps"]) for cell in cells})


def _rows(cells: list[dict]) -> list[tuple[str, str, str]]:
    present = {(cell["query"], cell["groups"], cell["masking"]) for cell in cells}
    return [row for row in itertools.product(("full", "crop"), GROUPS, MASKINGS) if row in present]


def _cell(cells: list[dict], row: tuple[str, str, str], column: tuple[float, int]) -> dict | None:
    return next((c for c in cells if (c["query"], c["groups"], c["masking"]) == row
                 and (c["lr"], c["steps"]) == column), None)


def grid_table(cells: list[dict]) -> str:
    columns = _columns(cells)
    lines = ["| query | groups | masking | " + " | ".join(f"lr {lr:g}, {steps} step{'s' * (steps > 1)}"
                                                        for lr, steps in columns) + " |",
             "|---|---|---|" + "---:|" * len(columns)]
    best = min(cell["R"] for cell in cells if cell["query"] == "full")
    for row in _rows(cells):
        values = []
        for column in columns:
            cell = _cell(cells, row, column)
            values.append("" if cell is None else f"**{cell['R']:.2f}**" if cell["R"] == best and row[0] == "full"
                          else f"{cell['R']:.2f}")
        lines.append(f"| {row[0]} | {row[1]} | {row[2]} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def heatmap(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    columns, rows = _columns(cells), _rows(cells)
    grid = torch.full((len(rows), len(columns)), float("nan"))
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            cell = _cell(cells, row, column)
            if cell is not None:
                grid[i, j] = cell["R"]
    figure = Figure(figsize=(1.1 * len(columns) + 3.5, 0.32 * len(rows) + 1.6))
    axes = figure.add_subplot()
    image = axes.imshow(grid.log10().numpy(), cmap="viridis_r", aspect="auto")
    for i, j in itertools.product(range(len(rows)), range(len(columns))):
        if not torch.isnan(grid[i, j]):
            dark = float(grid[i, j].log10()) > float(grid.nan_to_num(1).log10().max()) / 2
            axes.text(j, i, f"{float(grid[i, j]):.1f}", ha="center", va="center", fontsize=7,
                      color="white" if dark else "black")
    axes.set_xticks(range(len(columns)), [f"lr {lr:g}\n{steps} st" for lr, steps in columns], fontsize=7)
    axes.set_yticks(range(len(rows)), [" / ".join(row) for row in rows], fontsize=7)
    axes.set_title("Self-influence rank R (1 = each unlearned track ranks itself first)", fontsize=9)
    figure.colorbar(image, label="log10 R")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def prompted_queries(study: ToyStudy, args: Namespace) -> tuple[list, list[dict]]:
    """The artist-prompted generations (written on first use) and their batches."""
    source = ToyQueries(ToyTextToMusic, root=args.queries_dir, per_artist=args.per_artist)
    source.prepare()
    items = read_manifest(source.manifest)
    return items, [collate([item], study.model, with_targets=False) for item in items]


def method_scores(study: ToyStudy, args: Namespace, items: list, batches: list[dict]) -> dict:
    """`(n_queries, n_train)` scores of unlearning (the best grid cell) and of each similarity baseline."""
    best = json.loads((study.out / "consistency.json").read_text())["best"] if not args.cell else dict(
        zip(("lr", "steps", "groups", "masking"), args.cell, strict=True))
    setting = {"lr": float(best["lr"]), "steps": int(best["steps"]), "groups": best["groups"],
               "masking": best["masking"]}
    name = cell_name(**setting)

    def unlearning() -> torch.Tensor:
        return torch.stack([study.scores(batch, **setting)[0] for batch in batches])

    train = [{key: value[i : i + 32] for key, value in study.batch.items()} for i in range(0, len(study.ids), 32)]
    model = study.model
    activation = {"module": args.activation_module, "timestep": args.activation_timestep, "draws": 4}
    gradient = {"parameter_groups": ["cross_attention"], "timestep": args.activation_timestep, "draws": 4}
    key = f"{Path(args.queries_dir).name}-{args.per_artist}"
    return {
        "setting": setting,
        f"unlearning ({name})": cached(study.cache / f"scores-unlearning-{name}-{key}.pt", unlearning),
        "CLAP similarity": cosine_scores(torch.cat([study.clap_features(batch) for batch in batches]),
                                         study.train_clap),
        "activation similarity": cached(study.cache / f"scores-activation-{key}.pt", lambda: cosine_scores(
            activation_features(model, batches=batches, **activation).vectors,
            activation_features(model, batches=train, **activation).vectors)),
        "gradient similarity": cached(study.cache / f"scores-gradient-{key}.pt", lambda: cosine_scores(
            gradient_features(model, batches=batches, **gradient).vectors,
            gradient_features(model, batches=train, **gradient).vectors)),
    }


def ground_truth(study: ToyStudy, args: Namespace) -> dict:
    """Precision@k against the prompted artist, top-/bottom-k CLAP similarity and rank correlations."""
    items, batches = prompted_queries(study, args)
    methods = method_scores(study, args, items, batches)
    setting = methods.pop("setting")
    clap_similarity = methods["CLAP similarity"]
    unlearning = next(name for name in methods if name.startswith("unlearning"))
    per_method = {}
    for name, scores in methods.items():
        precision = {k: [precision_at_k(scores[q], torch.tensor([g == item.group for g in study.groups]), k)
                         for q, item in enumerate(items)] for k in args.ks}
        top_bottom = [top_bottom_similarity(scores[q], clap_similarity[q], args.ks[0]) for q in range(len(items))]
        per_method[name] = {
            "precision": {str(k): sum(values) / len(values) for k, values in precision.items()},
            "precision_per_query": {str(k): values for k, values in precision.items()},
            "top_clap": sum(t for t, _ in top_bottom) / len(items),
            "bottom_clap": sum(b for _, b in top_bottom) / len(items),
        }
        if name != unlearning:
            correlations = [rank_correlation(methods[unlearning][q], scores[q]) for q in range(len(items))]
            per_method[name]["spearman_with_unlearning"] = sum(c["spearman"] for c in correlations) / len(items)
            per_method[name]["pearson_with_unlearning"] = sum(c["pearson"] for c in correlations) / len(items)
    artists = sorted({item.group for item in items})
    k = str(args.ks[0])
    per_artist = {name: {artist: sum(v for v, item in zip(result["precision_per_query"][k], items, strict=True)
                                     if item.group == artist) / sum(item.group == artist for item in items)
                         for artist in artists} for name, result in per_method.items()}
    report = {"queries": [item.id for item in items], "setting": setting, "ks": args.ks, "methods": per_method,
              "per_artist_precision": per_artist, "sweep_draws": study.draws}
    write_json_atomic(study.out / "ground_truth.json", report)
    lines = ["| method | " + " | ".join(f"precision@{k}" for k in args.ks)
             + f" | top-{args.ks[0]} CLAP | bottom-{args.ks[0]} CLAP | Spearman / Pearson with unlearning |",
             "|---|" + "---:|" * (len(args.ks) + 3)]
    for name, result in per_method.items():
        correlation = (f"{result['spearman_with_unlearning']:.2f} / {result['pearson_with_unlearning']:.2f}"
                       if name != unlearning else "–")
        lines.append(f"| {name} | " + " | ".join(f"{result['precision'][str(k)]:.2f}" for k in args.ks)
                     + f" | {result['top_clap']:.2f} | {result['bottom_clap']:.2f} | {correlation} |")
    lines += ["", f"precision@{k} per prompted artist:", "",
              "| method | " + " | ".join(artists) + " |", "|---|" + "---:|" * len(artists)]
    lines += [f"| {name} | " + " | ".join(f"{values[artist]:.2f}" for artist in artists) + " |"
              for name, values in per_artist.items()]
    write_text_atomic(study.out / "ground_truth.md", "\n".join(lines) + "\n")
    return report


def fine_tune(study: ToyStudy, args: Namespace, removed: list[str], name: str) -> Path:
    """Fine-tune the warm start on the training set without `removed` by the recipe `args.fine_tune` (in
    counterfactual.yaml: the toy base's, for fewer steps); returns the saved model folder, cached by the warm start's
    weights and `name` (not by the recipe: after changing it, use another cache)."""
    import lightning as L

    from datamodules import AudioTextDataModule
    from lightning_modules.training import TextToMusicTraining

    start = ToyTextToMusic.from_pretrained(args.warm_start)
    folder = study.cache / "counterfactual" / f"from-{model_digest(start)}" / name
    if (folder / "model" / "toy_ttm.json").is_file():
        return folder / "model"
    folder.mkdir(parents=True, exist_ok=True)
    kept = [item for item in read_manifest("data/toy/train.jsonl") if item.id not in set(removed)]
    write_manifest(kept, folder / "train.jsonl")
    recipe = args.fine_tune
    L.seed_everything(recipe.seed, verbose=False)
    module = TextToMusicTraining(
        start, caption_dropout=recipe.caption_dropout,
        optimizer=recipe.optimizer, lr_scheduler=lambda optimizer: recipe.lr_scheduler(optimizer, recipe.steps))
    data = AudioTextDataModule(manifest=str(folder / "train.jsonl"), batch_size=recipe.batch_size,
                               sample_rate=study.model.sample_rate, num_samples=study.model.num_samples)
    trainer = L.Trainer(accelerator=recipe.accelerator, max_steps=recipe.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    module.model.save_pretrained(folder / "model")
    log.info("Fine-tuned %s (%d tracks) in %.0f s.", name, len(kept), time.perf_counter() - started)
    return folder / "model"


def query_loss(model_dir: Path, batch: dict, draws: int) -> float:
    model = ToyTextToMusic.from_pretrained(model_dir).eval()
    with torch.no_grad():
        losses = [model.loss(batch, **model.fixed_loss_inputs(list(batch["id"]), 7_000 + d)) for d in range(draws)]
    return float(torch.stack(losses).mean())


def against_chance(rise: dict[str, float]) -> tuple[list[float] | None, dict[str, bool]]:
    """The test's own noise: the range of the loss rises of the random removals (names "random <seed>"), and for
    each method whether its rise is above all of them (False for all when there is no random removal)."""
    chance = [value for name, value in rise.items() if name.startswith("random")]
    above = {name: bool(chance) and value > max(chance) for name, value in rise.items()
             if not name.startswith("random")}
    return ([min(chance), max(chance)] if chance else None), above


def counterfactual(study: ToyStudy, args: Namespace) -> dict:
    """Leave-K-out: the rise of each query's loss when its top-K tracks by each method (or K random tracks) are left
    out of a short fine-tuning from a warm start that never saw the prompted artist."""
    items, batches = prompted_queries(study, args)
    methods = method_scores(study, args, items, batches)
    setting = methods.pop("setting")
    chosen = [q for q, item in enumerate(items) if item.group == args.counterfactual_artist]
    chosen = chosen[: args.counterfactual_queries]
    if not chosen:
        raise ValueError(f"No prompted query of {args.counterfactual_artist!r}; choose one of the toy artists.")
    full = fine_tune(study, args, [], "full")
    rows = []
    for q in chosen:
        baseline = query_loss(full, batches[q], args.loss_draws)
        row = {"query": items[q].id, "full": baseline, "rise": {}, "share_of_artist": {}}
        removals = {name: torch.topk(scores[q], args.k).indices.tolist() for name, scores in methods.items()}
        for seed in range(args.random_repeats):
            generator = torch.Generator().manual_seed(seed)
            removals[f"random {seed}"] = torch.randperm(len(study.ids), generator=generator)[: args.k].tolist()
        for name, indices in removals.items():
            removed = [study.ids[i] for i in indices]
            slug = name.split(" (")[0].replace(" ", "-")
            model_dir = fine_tune(study, args, removed, f"{items[q].id}-{slug}-K{args.k}")
            row["rise"][name] = query_loss(model_dir, batches[q], args.loss_draws) - baseline
            row["share_of_artist"][name] = sum(study.groups[i] == items[q].group for i in indices) / args.k
            log.info("%s, without the top %d of %s: query loss rise %.5f", items[q].id, args.k, name,
                     row["rise"][name])
        rows.append(row)
    for row in rows:
        row["random_range"], row["above_random"] = against_chance(row["rise"])
    report = {"setting": setting, "k": args.k, "train_steps": args.fine_tune.steps, "warm_start": args.warm_start,
              "warm_start_digest": model_digest(ToyTextToMusic.from_pretrained(args.warm_start)),
              "loss_draws": args.loss_draws,
              "random_repeats": args.random_repeats, "queries": rows}
    write_json_atomic(study.out / "counterfactual.json", report)
    names = list(rows[0]["rise"])
    lines = [f"| removed (K = {args.k}) | " + " | ".join(row["query"] for row in rows)
             + " | share of the prompted artist |", "|---|" + "---:|" * (len(rows) + 1)]
    for name in names:
        share = sum(row["share_of_artist"][name] for row in rows) / len(rows)
        cells = [f"{row['rise'][name]:+.5f}" + (" (above every random)" if row["above_random"].get(name) else "")
                 for row in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {share:.2f} |")
    lines.append("| (query loss with nothing removed) | " + " | ".join(f"{row['full']:.5f}" for row in rows) + " | |")
    write_text_atomic(study.out / "counterfactual.md", "\n".join(lines) + "\n")
    return report


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "attribution" / "study"
Schedule = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]


def study_parser(study: str, configs: Path) -> ArgumentParser:
    """The settings every study reads, with `configs`/common.yaml and then the study's own file as defaults."""
    files = [str(configs / "common.yaml"), str(configs / f"{study.replace('-', '_')}.yaml")]
    parser = ArgumentParser(default_config_files=files, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML files whose settings replace the defaults")
    parser.add_argument("--out", type=Path, required=True, help="the reports (JSON, Markdown, PNG)")
    parser.add_argument("--cache", type=Path, required=True,
                        help="intermediate results (Fisher, sweeps, scores, fine-tuned models), in a subfolder "
                        "per model weights digest: a re-run resumes")
    parser.add_argument("--model", type=str, required=True)
    parser.add_argument("--clap", type=str, required=True)
    parser.add_argument("--draws", type=int, required=True, help="(timestep, noise) draws per track in the sweeps")
    # the prompted queries and their scores, shared by ground-truth and counterfactual (one cache)
    parser.add_argument("--queries_dir", type=str, required=True)
    parser.add_argument("--per_artist", type=int, required=True)
    parser.add_argument("--cell", type=tuple[float, int, Literal[GROUPS], Literal[MASKINGS]] | None, default=None,
                        help="[lr,steps,groups,masking]: the unlearning setting of ground-truth and counterfactual "
                        "(null: the best grid cell of consistency.json)")
    parser.add_argument("--activation_module", type=str, required=True)
    parser.add_argument("--activation_timestep", type=float, required=True)
    return parser


def parser(configs: Path = CONFIGS) -> ArgumentParser:
    """The command line: a study, its settings from `configs` (one YAML per study, after common.yaml), and any
    override (``--lrs [1e-6,1e-5]``); an unknown or missing key is an error that names it."""
    root = ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    studies = root.add_subcommands(dest="study")
    grid = study_parser("consistency", configs)
    grid.add_argument("--queries", type=int, required=True, help="self-influence queries chosen by k-means")
    grid.add_argument("--crop", type=float, required=True, help="seconds of each self-influence track kept")
    grid.add_argument("--lrs", type=list[float], required=True)
    grid.add_argument("--steps", type=list[int], required=True)
    grid.add_argument("--crop_lrs", type=list[float], required=True)
    grid.add_argument("--crop_groups", type=list[Literal[GROUPS]], required=True)
    studies.add_subcommand("consistency", grid, help=consistency.__doc__)
    truth = study_parser("ground-truth", configs)
    truth.add_argument("--ks", type=list[int], required=True)
    studies.add_subcommand("ground-truth", truth, help=ground_truth.__doc__)
    leave_out = study_parser("counterfactual", configs)
    leave_out.add_argument("--k", type=int, required=True, help="tracks removed in the counterfactual")
    leave_out.add_argument("--counterfactual_artist", type=str, required=True)
    leave_out.add_argument("--counterfactual_queries", type=int, required=True)
    leave_out.add_argument("--random_repeats", type=int, required=True)
    leave_out.add_argument("--loss_draws", type=int, required=True)
    leave_out.add_argument("--warm_start", type=str, required=True)
    leave_out.add_argument("--fine_tune.steps", type=int, required=True)
    leave_out.add_argument("--fine_tune.batch_size", type=int, required=True)
    leave_out.add_argument("--fine_tune.caption_dropout", type=float, required=True)
    leave_out.add_argument("--fine_tune.seed", type=int, required=True)
    leave_out.add_argument("--fine_tune.accelerator", type=str, required=True)
    leave_out.add_argument("--fine_tune.optimizer", type=OptimizerCallable, required=True)
    leave_out.add_argument("--fine_tune.lr_scheduler", type=Schedule, required=True,
                           help="called with (optimizer, fine_tune.steps)")
    studies.add_subcommand("counterfactual", leave_out, help=counterfactual.__doc__)
    return root


def main(argv: list[str] | None = None) -> None:
    cli = parser()
    config = cli.parse_args(argv)
    args = cli.instantiate(config)[config.study]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    study = ToyStudy(args.out, args.cache, args.model, args.clap, args.draws)
    {"consistency": consistency, "ground-truth": ground_truth, "counterfactual": counterfactual}[config.study](
        study, args)
    log.info("%s done in %.0f s; reports in %s.", config.study, time.perf_counter() - started, args.out)


if __name__ == "__main__":
    main()
