"""The linear datamodeling score (LDS) of an attribution method's scores on an LDS benchmark
(`datamodules.attribution_store.LdsBenchmark`: subset models and their losses on every query).

    python scripts/lds.py evaluate --benchmark <folder> --scores <out_dir>/scores_<name>.pt [--split test]

`--scores` is a score matrix as the attribution passes write it (`AttributionStore.write_scores`: training ids, query
ids, scores of shape (queries, training tracks), higher meaning the track helps the query more). The benchmark's
queries of the split must all be scored, and the scored training ids must be the benchmark's. Prints the mean LDS with
its 95 % bootstrap interval over queries and writes every query's LDS to `--out` (JSON). Seconds on a CPU.

Not here yet: ``build``, the training of the subset models (issue 18).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.attribution_store import AttributionStore, LdsBenchmark  # noqa: E402
from lightning_modules.attribution.lds import linear_datamodeling_scores, mean_lds  # noqa: E402
from lightning_modules.io import load_verified, write_json_atomic  # noqa: E402


def aligned_scores(path: Path, train_ids: list[str], query_ids: list[str]) -> torch.Tensor:
    """The score matrix in `path`, its rows in the order of `query_ids` and its columns in that of `train_ids`.

    Raises:
        ValueError: a query of the benchmark is not scored, or the scored training set is not the benchmark's.
    """
    record = load_verified(path, AttributionStore.SCORES, "write the scores again with the pass that made them",
                           AttributionStore.SCORES_STRUCTURE)
    rows = {query: i for i, query in enumerate(record["query_ids"])}
    columns = {track: j for j, track in enumerate(record["ids"])}
    unscored = [query for query in query_ids if query not in rows]
    if unscored:
        raise ValueError(f"{path} scores none of the benchmark's queries {unscored[:5]} ({len(unscored)} in all): "
                         "score the benchmark's queries (its lds.json lists them).")
    if set(columns) != set(train_ids):
        raise ValueError(f"{path} scores {len(columns)} training tracks, the benchmark has {len(train_ids)}, and the "
                         f"sets differ (e.g. {sorted(set(columns) ^ set(train_ids))[:3]}): score the training set "
                         "the benchmark's subset models were drawn from.")
    scores = record["scores"].double()
    return scores[[rows[query] for query in query_ids]][:, [columns[track] for track in train_ids]]


def evaluate(benchmark: LdsBenchmark, scores_path: Path, split: str | None) -> dict:
    """Every query's LDS and their mean with its bootstrap interval."""
    train_ids, query_ids, masks, losses = benchmark.read(split)
    per_query = linear_datamodeling_scores(aligned_scores(scores_path, train_ids, query_ids), masks, losses)
    interval = mean_lds(per_query)
    return {"scores": str(scores_path), "benchmark": str(benchmark.folder), "split": split, "models": len(masks),
            "lds": interval.as_dict(), "per_query": dict(zip(query_ids, per_query.tolist(), strict=True))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("evaluate", help="LDS of a score matrix")
    run.add_argument("--benchmark", required=True, type=Path, help="the LDS benchmark folder (lds.json, models/)")
    run.add_argument("--scores", required=True, type=Path, help="a score matrix (scores_<name>.pt)")
    run.add_argument("--split", choices=[*LdsBenchmark.SPLITS, "all"], default="test")
    run.add_argument("--out", type=Path, help="JSON of every query's LDS (default: beside the scores)")
    args = parser.parse_args(argv)
    result = evaluate(LdsBenchmark(args.benchmark), args.scores, None if args.split == "all" else args.split)
    lds = result["lds"]
    print(f"LDS ({args.split} queries, {len(result['per_query'])}; {result['models']} subset models): "
          f"{lds['value']:.3f} [{lds['low']:.3f}, {lds['high']:.3f}]")
    write_json_atomic(args.out or args.scores.with_name(f"lds_{args.scores.stem}.json"), result)
    return result


if __name__ == "__main__":
    main()
