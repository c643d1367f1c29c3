"""The unlearning methods side by side on the toy world: each config of ``configs/unlearn`` runs with the same
trainer, data and evaluation (same seeds, prompts and items), and the evaluation reports become one table with the
base model and the oracle (retrained without the artist) as reference rows.

    python scripts/compare_methods.py --out reports/methods            # every method, ~90 s each on 2 CPU cores
    python scripts/compare_methods.py --methods esd npo -- --trainer.max_steps=50
    python scripts/compare_methods.py --out reports/methods_aurora_vale \
        --data configs/data/toy_forget_aurora_vale.yaml --oracle checkpoints/toy/oracle_aurora_vale

A method whose run finished is not run again (delete its folder under ``<out>/runs`` or pass ``--force``); the table
is rebuilt from every finished run. Arguments after ``--`` go to every ``train.py fit``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from lightning_modules.io import write_json_atomic, write_text_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# (set, metric, column title): what the table shows of each report
COLUMNS = [
    ("forget", "loss", "forget loss ↑"),
    ("near", "loss", "near loss"),
    ("retain", "loss", "retain loss"),
    ("forget", "fad", "FAD forget ↑"),
    ("near", "fad", "FAD near ↓"),
    ("retain", "fad", "FAD retain ↓"),
    ("retain", "clap_score", "CLAP retain ↑"),
    ("forget", "recognition", "recognition ↓ (CLAP)"),
    ("forget", "recognition_judge", "recognition ↓ (features)"),
    ("near", "recognition", "near recognition ↑ (CLAP)"),
    ("near", "recognition_judge", "near recognition ↑ (features)"),
    ("forget", "mia_auc", "MIA AUC"),
]


def toy_methods() -> list[str]:
    """The configs of ``configs/unlearn`` that unlearn the toy model (the others need a hub checkpoint)."""
    return sorted(path.stem for path in (REPO / "configs" / "unlearn").glob("*.yaml")
                  if "model/toy_base.yaml" in path.read_text())


def run_method(name: str, out: Path, trainer: str, data: str, extra: list[str], force: bool) -> dict:
    """The evaluation report of one method's run, running it unless a finished run is there."""
    folder = out / "runs" / name
    report = folder / "results.json"
    if report.exists() and not force:
        return json.loads(report.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "train.py", "fit", "--config", trainer, "--config", f"configs/unlearn/{name}.yaml",
               "--data", data, f"--trainer.default_root_dir={folder}", "--trainer.enable_progress_bar=false", *extra]
    print(f"[{name}] {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"[{name}] failed with exit code {result.returncode}:\n{result.stderr[-4000:]}")
    (run,) = (folder / "lightning_logs").iterdir()
    results = json.loads((run / "results.json").read_text())
    results["run"] = str(run.relative_to(REPO) if run.is_relative_to(REPO) else run)
    results["process_seconds"] = time.perf_counter() - started
    write_json_atomic(report, results)
    print(f"[{name}] done in {results['process_seconds']:.0f} s", flush=True)
    return results


def with_oracle(trainer: str, oracle: str, out: Path) -> str:
    """A copy of the `trainer` config, in `out`, whose `UnlearningEvaluation` compares against `oracle` (a list of
    callbacks cannot be edited from the command line)."""
    config = yaml.safe_load((REPO / trainer).read_text())
    evaluations = [callback for callback in config.get("trainer", {}).get("callbacks", [])
                   if callback.get("class_path", "").endswith("UnlearningEvaluation")]
    if len(evaluations) != 1:
        raise SystemExit(f"--oracle needs one UnlearningEvaluation callback in {trainer}; it has {len(evaluations)}.")
    if not Path(oracle).is_dir():
        raise SystemExit(f"--oracle {oracle}: no such model folder.")
    evaluations[0]["init_args"]["oracle"] = os.path.relpath(Path(oracle).resolve(), REPO)  # train.py runs in REPO
    path = out / "runs" / "trainer.yaml"
    write_text_atomic(path, f"# {trainer} with the oracle {oracle} (written by scripts/compare_methods.py)\n"
                      + yaml.safe_dump(config, sort_keys=False))
    return str(path)


def table(reports: dict[str, dict]) -> tuple[str, list[dict]]:
    """Markdown and rows: base, oracle, then each method's "after" column."""
    first = next(iter(reports.values()))["columns"]
    rows = [{"method": "base (before)", **_cells(first["before"]), "train seconds": None}]
    if "oracle" in first:
        rows.append({"method": "oracle (retrained)", **_cells(first["oracle"]), "train seconds": None})
    for name, report in reports.items():
        if report["columns"]["before"] != first["before"]:
            raise SystemExit(f"{name}'s 'before' column differs from the others': the runs did not share seeds, "
                             "items or prompts; rerun them with --force.")
        rows.append({"method": name, **_cells(report["columns"]["after"]),
                     "train seconds": report.get("timing", {}).get("train_seconds")})
    header = ["method", *(title for _, _, title in COLUMNS), "train seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_format(row[key]) for key in header) + " |")
    return "\n".join(lines), rows


def _cells(column: dict) -> dict:
    return {title: column.get(split, {}).get(metric) for split, metric, title in COLUMNS}


def _format(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if value >= 10 else f"{value:.3f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/methods", help="folder of the runs and the table")
    parser.add_argument("--methods", nargs="*",
                        help="config names under configs/unlearn (default: those of the toy model)")
    parser.add_argument("--trainer", default="configs/trainer/toy.yaml")
    parser.add_argument("--data", default="configs/data/toy_forget.yaml")
    parser.add_argument("--oracle", help="the oracle model folder, in place of the trainer config's (an oracle "
                        "retrained without the data config's forget set)")
    parser.add_argument("--force", action="store_true", help="rerun methods that have a finished run")
    args, extra = parser.parse_known_args()
    extra = [arg for arg in extra if arg != "--"]
    methods = args.methods or toy_methods()
    unknown = [name for name in methods if not (REPO / "configs" / "unlearn" / f"{name}.yaml").is_file()]
    if unknown:
        raise SystemExit(f"No config configs/unlearn/<name>.yaml for {unknown}.")
    out = Path(args.out).resolve()
    trainer = with_oracle(args.trainer, args.oracle, out) if args.oracle else args.trainer
    reports = {name: run_method(name, out, trainer, args.data, extra, args.force) for name in methods}
    markdown, rows = table(reports)
    write_text_atomic(out / "methods.md", markdown + "\n")
    write_json_atomic(out / "methods.json", {"rows": rows, "runs": {name: r["run"] for name, r in reports.items()},
                                             "trainer": args.trainer, "oracle": args.oracle, "data": args.data,
                                             "extra": extra})
    print(markdown)


if __name__ == "__main__":
    main()
