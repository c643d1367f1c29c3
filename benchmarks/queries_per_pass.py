"""Benchmark: the attribution pass's "after" sweeps with several queries per step (`QueryDataModule.queries_per_pass`)
against one query at a time, through ``train.py predict`` of the shipped ``configs/attribution/attribute.yaml`` on the
toy world, in one process, the runs alternated so that a busy moment of this shared machine hits both.

The queries are `--queries` held-out toy tracks (every tenth), the training set the 400 toy tracks at `--draws`
draws. The Fisher (``fisher.yaml``), the "before" sweep (``sweep.yaml``) and the queries' deltas are computed once
into `--work` (kept, so a second run reuses them); each timed run copies the deltas into a fresh folder and computes
every "after" shard, at K = 1 and at K = `--queries`, and its rankings must equal the first run's.

    python benchmarks/queries_per_pass.py     # about 15 minutes on 2 CPU cores the first time (the Fisher, the
                                              # deltas), 7 the next; writes benchmarks/results/queries_per_pass.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules import read_manifest, write_manifest  # noqa: E402
from lightning_modules.io import write_json_atomic  # noqa: E402
from train import main as train  # noqa: E402

COMMON = ["--data.init_args.source=null", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]


def timed_predict(config: str, *flags: str) -> float:
    start = time.perf_counter()
    train(["predict", "--config", f"configs/attribution/{config}.yaml", *COMMON, *flags])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "lightning_logs" / "benchmarks" / "queries_per_pass")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--draws", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each K, alternated")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "queries_per_pass.json")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the configs' relative paths (data/toy, the toy model)
    work = args.work.resolve()
    logs = ["--trainer.default_root_dir", str(work / "logs")]
    fisher, before, base = work / "fisher.pt", work / "before", work / "base"
    result: dict = {"machine": platform.processor() or platform.machine(), "queries": args.queries,
                    "draws": args.draws, "tracks": len(read_manifest(REPO / "data" / "toy" / "train.jsonl"))}
    if not fisher.is_file():
        result["fisher_seconds"] = timed_predict("fisher", "--model.init_args.fisher_path", str(fisher), *logs)
    fresh = not before.exists()
    seconds = timed_predict(  # resumes what an earlier run left, skips what it finished
        "sweep", f"--model.init_args.draws={args.draws}", "--data.init_args.sweep_dir", str(before), *logs)
    if fresh:
        result["before_sweep_seconds"] = seconds
    queries = work / "queries.jsonl"
    write_manifest(read_manifest(REPO / "data" / "toy" / "heldout.jsonl")[::10][: args.queries], queries)

    def attribute(out: Path, k: int) -> float:
        return timed_predict("attribute", "--model.init_args.fisher_path", str(fisher), "--data.init_args.queries",
                             str(queries), "--data.init_args.query_source=null", "--data.init_args.before_dir",
                             str(before), "--data.init_args.out_dir", str(out),
                             f"--data.init_args.queries_per_pass={k}", *logs)

    fresh = not base.exists()
    seconds = attribute(base, 1)  # the deltas (reused below) and the reference rankings
    if fresh:
        result["unlearning_and_sweeps_seconds"] = seconds
    reference = json.loads((base / "summary.json").read_text())
    times: dict[int, list[float]] = {1: [], args.queries: []}
    for repeat in range(args.repeats):
        for k in sorted(times, reverse=repeat % 2 == 1):
            out = work / f"queries_per_pass_{k}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(base, out)
            for shard in out.glob("*/unlearning/sweep/shard-*.pt"):
                shard.unlink()
            times[k].append(attribute(out, k))
            if json.loads((out / "summary.json").read_text()) != reference:
                raise AssertionError(f"queries_per_pass={k} ranked otherwise than one query at a time")
            print(f"queries_per_pass={k}: {times[k][-1]:.1f} s", flush=True)
    result["after_sweeps_seconds"] = {str(k): values for k, values in times.items()}
    result["speedup_of_queries_per_pass"] = (statistics.median(times[1]) / statistics.median(times[args.queries]))
    write_json_atomic(args.out, result)
    print(f"{args.queries} queries per step: {result['speedup_of_queries_per_pass']:.2f}x one at a time; "
          f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
