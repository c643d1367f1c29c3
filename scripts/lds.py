"""The linear datamodeling benchmark (`datamodules.attribution_store.LdsBenchmark`: subset models trained on random
halves of the training set and their losses on every query) and the LDS of an attribution method's scores on it.

    python scripts/lds.py queries                     # the toy world's queries (ToyLdsQueries) from the LDS base
    python scripts/lds.py build [--shard 0/2]         # train the subset models still missing; resumes anywhere
    python scripts/lds.py evaluate --benchmark <folder> --scores <out_dir>/scores_<name>.pt [--split test]

`build` trains each subset model with the training config of the model that is attributed (`--config`, by default
`configs/toy/lds_base.yaml`, which also trains that model, the LDS base, on the whole set), in this process, on a GPU
when there is one; it measures the model's loss on every query at fixed draws, writes one verified file per model
and deletes the model. A model stopped part-way resumes from its last checkpoint (in `--work-dir`); `--shard K/N`
lets N processes or machines share the models.

`--scores` is a score matrix as the attribution passes write it (`AttributionStore.write_scores`: training ids, query
ids, scores of shape (queries, training tracks), higher meaning the track helps the query more). The benchmark's
queries of the split must all be scored, and the scored training ids must be the benchmark's. Prints the mean LDS with
its 95 % bootstrap interval over queries and writes every query's LDS to `--out` (JSON). Seconds on a CPU.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from callbacks import SavePretrained  # noqa: E402
from datamodules.attribution_store import LdsBenchmark, aligned_scores  # noqa: E402
from datamodules.audio import AudioTextDataset  # noqa: E402
from datamodules.manifest import ManifestItem, read_manifest, read_queries, write_manifest  # noqa: E402
from datamodules.toy_queries import ToyLdsQueries  # noqa: E402
from lightning_modules.attribution.lds import (  # noqa: E402
    linear_datamodeling_scores,
    mean_lds,
    query_losses,
    spearman_interval,
)
from lightning_modules.io import file_sha256, read_json_verified, write_json_atomic  # noqa: E402
from lightning_modules.models import ToyTextToMusic  # noqa: E402

log = logging.getLogger("lds")


def group_effects(benchmark: LdsBenchmark, scores: torch.Tensor, train_ids: list[str], query_ids: list[str]
                  ) -> dict[str, dict[str, Any]]:
    """Group-level truth: for each group whose model left it out, the Spearman correlation over the queries between
    its true effect (the rise of each query's loss without the group) and the method's total score of the group's
    tracks, with its bootstrap interval over the queries. Empty when the benchmark has no group models."""
    groups = benchmark.groups()
    if "" not in groups:
        return {}
    recipe = benchmark.recipe()
    group_of = {item.id: item.group for item in
                read_manifest(training_manifest(recipe["training_config"], benchmark.recipe_path))}
    rows = [recipe["query_ids"].index(query) for query in query_ids]
    result = {}
    for group, losses in sorted(groups.items()):
        if group:
            effect = (losses - groups[""])[rows]
            in_group = torch.tensor([group_of[track] == group for track in train_ids])
            total = scores[:, in_group].sum(dim=1)
            interval = spearman_interval(total, effect)
            result[group] = {"spearman": interval.value, "interval": interval.as_dict(),
                             "effect": dict(zip(query_ids, effect.tolist(), strict=True)),
                             "group_score": dict(zip(query_ids, total.tolist(), strict=True))}
    return result


def evaluate(benchmark: LdsBenchmark, scores_path: Path, split: str | None, models: slice = slice(None)) -> dict:
    """Every query's LDS and their mean with its bootstrap interval, and the group-level truth (`group_effects`).
    `models`: the finished subset models to use, in index order (all by default; two disjoint halves show how much
    the score owes to which models were drawn, which the interval over queries leaves out)."""
    train_ids, query_ids, masks, losses = benchmark.read(split)
    masks, losses = masks[models], losses[models]
    scores = aligned_scores(scores_path, train_ids, query_ids)
    per_query = linear_datamodeling_scores(scores, masks, losses)
    interval = mean_lds(per_query)
    return {"scores": str(scores_path), "benchmark": str(benchmark.folder), "split": split, "models": len(masks),
            "lds": interval.as_dict(), "per_query": dict(zip(query_ids, per_query.tolist(), strict=True)),
            "groups": group_effects(benchmark, scores, train_ids, query_ids)}


def training_manifest(config: dict, config_path: Path) -> Path:
    """The training manifest the config trains on (``data.init_args.manifest``)."""
    manifest = ((config.get("data") or {}).get("init_args") or {}).get("manifest")
    if not manifest:
        raise ValueError(f"{config_path} names no data.init_args.manifest: give the training config of the model "
                         "that is attributed (e.g. configs/toy/lds_base.yaml).")
    return Path(manifest)


def build_recipe(args: argparse.Namespace) -> tuple[dict, list[ManifestItem], list[ManifestItem]]:
    """The benchmark's recipe from the build's arguments, the training items and the queries."""
    config = yaml.safe_load(args.config.read_text())
    train_items = read_manifest(training_manifest(config, args.config))
    query_items = read_queries(args.queries)
    split_path = args.queries.parent / ToyLdsQueries.SPLIT
    split = read_json_verified(split_path, "LDS query split", "generate the queries again (python scripts/lds.py "
                               "queries)") if split_path.is_file() else None
    if split is None or set(split) != {query.id for query in query_items}:
        raise ValueError(f"{split_path} must give every query of {args.queries} its half (validation or test); "
                         "make the queries with `python scripts/lds.py queries` or write that file.")
    recipe = {"train_ids": [item.id for item in train_items], "query_ids": [query.id for query in query_items],
              "split": split,
              "fraction": args.fraction, "seed": args.seed, "num_models": args.num_models, "draws": args.draws,
              "draw_seed": args.draw_seed, "training_config": config,
              "query_audio": {query.id: file_sha256(query.path) for query in query_items}}
    return recipe, train_items, query_items


def train_subset(config: Path, manifest: Path, work: Path) -> L.LightningModule:
    """The training module fitted by `config` on `manifest`, in this process, its run in `work` (resumed from the
    last checkpoint there); the config's `SavePretrained` is left out (the benchmark keeps no model) and so is
    validation."""
    cli = train.main(["--config", str(config), "--data.init_args.manifest", str(manifest),
                      "--trainer.default_root_dir", str(work), "--run_name", "subset",
                      "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                      "--trainer.limit_val_batches=0"], run=False)
    cli.trainer.callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, SavePretrained)]
    last = work / "lightning_logs" / "subset" / "checkpoints" / "last.ckpt"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(last) if last.is_file() else None)
    return cli.model


def train_and_measure(config: Path, items: list[ManifestItem], queries: list[ManifestItem], recipe: dict, work: Path
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Train the recipe's model on `items` (in `work`, deleted after) and measure its loss on every query at the
    recipe's draws; the losses and how long it took."""
    started = time.perf_counter()
    write_manifest(items, work / "train.jsonl")
    model = train_subset(config, work / "train.jsonl", work).model
    dataset = AudioTextDataset(queries, model.sample_rate, model.num_samples, split="queries")
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    losses = query_losses(model, batch, recipe["draws"], recipe["draw_seed"])
    shutil.rmtree(work)
    return losses, {"seconds": time.perf_counter() - started, "device": str(next(model.parameters()).device),
                    "threads": torch.get_num_threads(), "items": len(items)}


def build(args: argparse.Namespace) -> list[int | str]:
    """Train the shard's missing subset models, then its missing group models (each without one of `args.groups`,
    and one without none), and record their query losses; the subset indices and groups it finished."""
    recipe, train_items, query_items = build_recipe(args)
    benchmark = LdsBenchmark(args.benchmark)
    benchmark.create(recipe)
    shard, shards = args.shard
    todo = [index for index in benchmark.missing() if index % shards == shard]
    known = {item.group for item in train_items}
    unknown = [group for group in args.groups if group not in known]
    if unknown:
        raise ValueError(f"--groups {unknown} name no group of the training set; its groups: {sorted(known)}.")
    groups = [group for position, group in enumerate(["", *args.groups] if args.groups else [])
              if position % shards == shard and not benchmark.group_path(group).is_file()]
    log.info("LDS build of %s, shard %d/%d: %d of %d subset models and %d group models to train.", args.benchmark,
             shard, shards, len(todo), recipe["num_models"], len(groups))
    done: list[int | str] = []
    for index in todo:
        mask = benchmark.subset(index).tolist()
        kept = [item for item, chosen in zip(train_items, mask, strict=True) if chosen]
        losses, info = train_and_measure(args.config, kept, query_items, recipe, args.work_dir / f"{index:04d}")
        benchmark.write_model(index, losses, info)
        done.append(index)
        log.info("Subset model %d: trained and measured in %.0f s; %d of %d finished.", index, info["seconds"],
                 len(benchmark.finished()), recipe["num_models"])
    for group in groups:
        kept = [item for item in train_items if item.group != group]
        losses, info = train_and_measure(args.config, kept, query_items, recipe,
                                         args.work_dir / benchmark.group_path(group).stem)
        benchmark.write_group(group, losses, info)
        done.append(group)
        log.info("Model without %r: trained and measured in %.0f s.", group, info["seconds"])
    return done


def make_queries(args: argparse.Namespace) -> Path:
    """Generate the toy world's LDS queries (`ToyLdsQueries`) unless they are there."""
    source = ToyLdsQueries(ToyTextToMusic, root=str(args.out), model=str(args.model))
    source.prepare()
    return source.manifest


def shard(value: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard takes K/N with 0 <= K < N (e.g. 0/2), got {value!r}.")
    return index, count


def model_range(value: str) -> slice:
    try:
        start, stop = (int(part) if part else None for part in value.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--models takes START:STOP (e.g. 0:16 or 16:), got {value!r}.") from None
    return slice(start, stop)


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("queries", help="generate the toy world's LDS queries")
    make.add_argument("--model", type=Path, default=Path("checkpoints/toy/lds_base"), help="the model attributed")
    make.add_argument("--out", type=Path, default=Path("checkpoints/toy/lds/queries"))
    grow = commands.add_parser("build", help="train the missing subset models and record their query losses")
    grow.add_argument("--benchmark", type=Path, default=Path("checkpoints/toy/lds"))
    grow.add_argument("--config", type=Path, default=Path("configs/toy/lds_base.yaml"),
                      help="the training config of the model that is attributed")
    grow.add_argument("--queries", type=Path, default=Path("checkpoints/toy/lds/queries/queries.jsonl"),
                      help="the queries' manifest, with split.json beside it")
    grow.add_argument("--num-models", type=int, default=32)
    grow.add_argument("--fraction", type=float, default=0.5)
    grow.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    grow.add_argument("--draws", type=int, default=128, help="(timestep, noise) draws per query loss (the shipped "
                      "benchmark's)")
    grow.add_argument("--draw-seed", type=int, default=10_000, help="seed of the first draw (apart from the seeds "
                      "the attribution methods use)")
    grow.add_argument("--shard", type=shard, default=(0, 1), help="K/N: train the missing models whose index is K "
                      "modulo N (N processes or machines sharing a build)")
    grow.add_argument("--groups", nargs="*", default=[], help="groups (artists) of the training set to leave out "
                      "one at a time after the subset models (with a model that leaves out none): group-level truth")
    grow.add_argument("--work-dir", type=Path, default=Path("lightning_logs/lds_build"),
                      help="where each model trains (its last checkpoint: a stopped model resumes from it)")
    run = commands.add_parser("evaluate", help="LDS of a score matrix")
    run.add_argument("--benchmark", required=True, type=Path, help="the LDS benchmark folder (lds.json, models/)")
    run.add_argument("--scores", required=True, type=Path, help="a score matrix (scores_<name>.pt)")
    run.add_argument("--split", choices=[*LdsBenchmark.SPLITS, "all"], default="test")
    run.add_argument("--models", type=model_range, default=slice(None), help="START:STOP: only these of the finished "
                     "subset models, in index order (e.g. 0:16 and 16: for the two halves)")
    run.add_argument("--out", type=Path, help="JSON of every query's LDS (default: beside the scores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "queries":
        return make_queries(args)
    if args.command == "build":
        return build(args)
    result = evaluate(LdsBenchmark(args.benchmark), args.scores, None if args.split == "all" else args.split,
                      args.models)
    lds = result["lds"]
    print(f"LDS ({args.split} queries, {len(result['per_query'])}; {result['models']} subset models): "
          f"{lds['value']:.3f} [{lds['low']:.3f}, {lds['high']:.3f}]")
    for group, truth in result["groups"].items():
        interval = truth["interval"]
        print(f"Without {group}: Spearman over the queries of its true effect and its tracks' total score "
              f"{interval['value']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]")
    write_json_atomic(args.out or args.scores.with_name(f"lds_{args.scores.stem}.json"), result)
    return result


if __name__ == "__main__":
    main()
