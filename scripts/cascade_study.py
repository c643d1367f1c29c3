"""How much of attribution by unlearning the cascade keeps (issue 20), on an LDS benchmark: at each fraction S of the
training set measured exactly, the cascade's recall@k against the full sweep's ranking and its LDS beside the full
sweep's, with bootstrap intervals over the queries.

    python scripts/cascade_study.py --cheap <first-order scores_*.pt> --exact <unlearning scores_*.pt> \\
        [--benchmark checkpoints/toy/lds] [--fractions 0.01 0.02 0.05 0.1] [--split test] [--out reports/...]

The cascade's exact scores are the full sweep's on the tracks it measures (the same query delta, draws and tracks: a
test checks that `QueryAttribution` with candidates writes exactly these numbers), so its result follows from two score
matrices, the cheap pass's (`FirstOrderUnlearning`) and the full sweep's (`QueryAttribution`), both as the passes
write them (`AttributionStore.write_scores`); each cascade's matrix is written too (``scores_cascade_<S>.pt``). Its
cost per query is counted in track-loss evaluations (tracks × draws of the "after" sweep). `--repeat` gives other
full sweeps of the same queries (fewer draws, another step size): their recall@k against the reference says how much
of a top k the full sweep itself would change on a second measurement. Seconds on a CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.attribution_store import AttributionStore, LdsBenchmark, aligned_scores  # noqa: E402
from lightning_modules.attribution.cascade import (  # noqa: E402
    calibrated_scores,
    candidate_count,
    cascade_candidates,
    recall_at_k,
)
from lightning_modules.attribution.lds import linear_datamodeling_scores, mean_lds, paired_lds_difference  # noqa: E402
from lightning_modules.io import write_json_verified, write_text_atomic  # noqa: E402


def cascade_matrix(cheap: torch.Tensor, exact: torch.Tensor, fraction: float) -> torch.Tensor:
    """Every query's cascade scores `(queries, tracks)`: `exact` on its candidates by `cheap`, calibrated `cheap`
    elsewhere."""
    candidates = cascade_candidates(cheap, fraction)
    return torch.stack([calibrated_scores(c, index, e[index])
                        for c, e, index in zip(cheap, exact, candidates, strict=True)])


def study(benchmark: LdsBenchmark, cheap_path: Path, exact_path: Path, fractions: list[float], split: str | None,
          ks: list[int], out: Path, repeats: list[Path] = ()) -> dict[str, Any]:
    train_ids, query_ids, masks, losses = benchmark.read(split)
    cheap = aligned_scores(cheap_path, train_ids, query_ids)
    exact = aligned_scores(exact_path, train_ids, query_ids)
    full = linear_datamodeling_scores(exact, masks, losses)
    result: dict[str, Any] = {
        "benchmark": str(benchmark.folder), "split": split, "queries": len(query_ids), "tracks": len(train_ids),
        "models": len(masks), "cheap": str(cheap_path), "exact": str(exact_path),
        "full_sweep": {"lds": mean_lds(full).as_dict()},
        "cheap_alone": {"lds": mean_lds(linear_datamodeling_scores(cheap, masks, losses)).as_dict(),
                        **{f"recall@{k}": mean_lds(recall_at_k(cheap, exact, k)).as_dict() for k in ks}},
        "cascades": {},
        "repeats": {str(path): {f"recall@{k}": mean_lds(recall_at_k(aligned_scores(path, train_ids, query_ids), exact,
                                                                    k)).as_dict() for k in ks} for path in repeats},
    }
    store = AttributionStore(out)
    for fraction in fractions:
        scores = cascade_matrix(cheap, exact, fraction)
        per_query = linear_datamodeling_scores(scores, masks, losses)
        measured = candidate_count(len(train_ids), fraction)
        result["cascades"][f"{fraction:g}"] = {
            "fraction": fraction, "measured_tracks": measured, "fewer_evaluations": len(train_ids) / measured,
            "lds": mean_lds(per_query).as_dict(), "lds_minus_full": paired_lds_difference(per_query, full).as_dict(),
            **{f"recall@{k}": mean_lds(recall_at_k(scores, exact, k)).as_dict() for k in ks},
        }
        store.write_scores(f"cascade_{fraction:g}", train_ids, query_ids, scores.float(), "cascade")
    write_json_verified(out / "cascade.json", result)
    write_text_atomic(out / "cascade.md", report(result, ks))
    return result


def _cell(interval: dict[str, float]) -> str:
    return f"{interval['value']:.2f} [{interval['low']:.2f}, {interval['high']:.2f}]"


def report(result: dict[str, Any], ks: list[int]) -> str:
    lines = [f"Cascade against the full sweep on {result['benchmark']} ({result['split'] or 'all'} split: "
             f"{result['queries']} queries, {result['tracks']} tracks, {result['models']} subset models); 95 % "
             "bootstrap intervals over the queries.", "",
             f"- cheap scores: `{result['cheap']}`", f"- full sweep: `{result['exact']}`", "",
             "| scores | tracks measured | fewer evaluations | " + " | ".join(f"recall@{k}" for k in ks)
             + " | LDS | LDS − full sweep (paired) |",
             "|---|---:|---:|" + "---:|" * len(ks) + "---:|---:|",
             f"| full sweep | {result['tracks']} | 1 | " + " | ".join("1" for _ in ks)
             + f" | {_cell(result['full_sweep']['lds'])} | |",
             "| cheap alone | 0 | – | " + " | ".join(_cell(result["cheap_alone"][f"recall@{k}"]) for k in ks)
             + f" | {_cell(result['cheap_alone']['lds'])} | |"]
    for name, row in result["cascades"].items():
        lines.append(f"| cascade, S = {100 * float(name):g} % | {row['measured_tracks']} | "
                     f"{row['fewer_evaluations']:.0f} | "
                     + " | ".join(_cell(row[f"recall@{k}"]) for k in ks)
                     + f" | {_cell(row['lds'])} | {_cell(row['lds_minus_full'])} |")
    for path, row in result["repeats"].items():
        lines.append(f"| another full sweep: `{path}` | {result['tracks']} | 1 | "
                     + " | ".join(_cell(row[f"recall@{k}"]) for k in ks) + " | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", type=Path, default=Path("checkpoints/toy/lds"))
    parser.add_argument("--cheap", required=True, type=Path, help="the cheap pass's score matrix (first-order)")
    parser.add_argument("--exact", required=True, type=Path, help="the full sweep's score matrix (unlearning)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 50], help="the k of recall@k")
    parser.add_argument("--split", choices=[*LdsBenchmark.SPLITS, "all"], default="test")
    parser.add_argument("--repeat", type=Path, nargs="*", default=[], help="other full sweeps' score matrices of "
                        "the same queries (other draws): their recall@k against --exact is the reference's own noise")
    parser.add_argument("--out", type=Path, default=Path("reports/attribution_scale"))
    args = parser.parse_args(argv)
    result = study(LdsBenchmark(args.benchmark), args.cheap, args.exact, args.fractions,
                   None if args.split == "all" else args.split, args.k, args.out, args.repeat)
    print(report(result, args.k))
    return result


if __name__ == "__main__":
    main()
