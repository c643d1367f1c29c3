"""Benchmark: what the evaluation costs, end to end, on the quickstart.

Runs ``train.py fit --config configs/quickstart.yaml`` as a subprocess in each variant below, each with a cache of its
own (so every run embeds its references and measures its oracle), and records the process's wall time, the training
seconds and the bootstrap seconds its ``results.json`` reports:

- ``fp32``: the quickstart as shipped (``--trainer.max_steps`` from ``--steps``);
- ``bf16-mixed``: the same with ``--trainer.precision=bf16-mixed``, whose cost on CPU should stay within 2x fp32;
- ``baseline`` (with ``--baseline REPO``): the fp32 run of another checkout (e.g. a git worktree of the commit before
  a change), so that the change's cost is a ratio measured on the same machine in the same session.

The evaluation's own cost is the process time less training; the bootstrap's share of it is what the intervals add.

    python benchmarks/evaluation.py                       # writes benchmarks/results/evaluation.json
    git worktree add /tmp/before HEAD~3 && python benchmarks/evaluation.py --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def run(repo: Path, overrides: list[str], scratch: Path) -> dict:
    """One quickstart in `repo` with `overrides`, its cache and run folder under `scratch`."""
    environment = {**os.environ, "TTM_UNLEARNING_CACHE": str(scratch / "cache"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "train.py", "fit", "--config", "configs/quickstart.yaml",
               f"--trainer.default_root_dir={scratch / 'runs'}", "--trainer.enable_progress_bar=false", *overrides]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=repo, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {repo}:\n{result.stderr[-3000:]}")
    (report,) = (scratch / "runs").rglob("results.json")
    results = json.loads(report.read_text())
    train = results.get("timing", {}).get("train_seconds", 0.0)
    return {"process_seconds": seconds, "train_seconds": train, "evaluation_seconds": seconds - train,
            "bootstrap_seconds": results.get("bootstrap", {}).get("seconds"),
            "forget_loss_after": results["columns"]["after"]["forget"]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps of each quickstart run")
    parser.add_argument("--baseline", type=Path, help="another checkout whose fp32 quickstart is the baseline")
    parser.add_argument("--out", default=str(RESULTS / "evaluation.json"))
    args = parser.parse_args()
    steps = [f"--trainer.max_steps={args.steps}"]
    variants = {"fp32": (REPO, steps), "bf16-mixed": (REPO, [*steps, "--trainer.precision=bf16-mixed"])}
    if args.baseline:
        variants["baseline"] = (args.baseline.resolve(), steps)
    measured = {}
    for name, (repo, overrides) in variants.items():
        with tempfile.TemporaryDirectory() as scratch:
            measured[name] = run(repo, overrides, Path(scratch))
        print(f"{name}: {json.dumps(measured[name])}", flush=True)
    fp32 = measured["fp32"]
    ratios = {"bf16_over_fp32": measured["bf16-mixed"]["process_seconds"] / fp32["process_seconds"],
              "bootstrap_share_of_evaluation": (fp32["bootstrap_seconds"] or 0.0) / fp32["evaluation_seconds"]}
    if "baseline" in measured:
        ratios["fp32_over_baseline"] = fp32["process_seconds"] / measured["baseline"]["process_seconds"]
        ratios["evaluation_over_baseline"] = fp32["evaluation_seconds"] / measured["baseline"]["evaluation_seconds"]
    result = {"steps": args.steps, "runs": measured, "ratios": ratios, "baseline": str(args.baseline or ""),
              "machine": platform.platform(), "cpus": os.cpu_count(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
