"""The unlearning methods side by side on the toy world: each config of ``configs/unlearn`` runs with the same
trainer, data and evaluation (same seeds, prompts and items), and the evaluation reports become one table with the
base model and the oracle (retrained without the artist) as reference rows.

    python scripts/compare_methods.py --out reports/methods            # every method, ~90 s each on 2 CPU cores
    python scripts/compare_methods.py --methods esd npo -- --trainer.max_steps=50

A method whose run finished is not run again (delete its folder under ``<out>/runs`` or pass ``--force``); the table
is rebuilt from every finished run. Arguments after ``--`` go to every ``train.py fit``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.io import write_json_atomic, write_text_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# (set, metric, column title): what the table shows of each report
COLUMNS = [
    ("forget", "loss", "forget loss ↑"),
    ("retain", "loss", "retain loss"),
    ("forget", "fad", "FAD forget ↑"),
    ("retain", "fad", "FAD retain ↓"),
    ("retain", "clap_score", "CLAP retain ↑"),
    ("forget", "recognition", "recognition ↓"),
    ("forget", "mia_auc", "MIA AUC"),
]


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
    parser.add_argument("--methods", nargs="*", help="config names under configs/unlearn (default: all)")
    parser.add_argument("--trainer", default="configs/trainer/toy.yaml")
    parser.add_argument("--data", default="configs/data/toy_forget.yaml")
    parser.add_argument("--force", action="store_true", help="rerun methods that have a finished run")
    args, extra = parser.parse_known_args()
    extra = [arg for arg in extra if arg != "--"]
    methods = args.methods or sorted(path.stem for path in (REPO / "configs" / "unlearn").glob("*.yaml"))
    unknown = [name for name in methods if not (REPO / "configs" / "unlearn" / f"{name}.yaml").is_file()]
    if unknown:
        raise SystemExit(f"No config configs/unlearn/<name>.yaml for {unknown}.")
    out = Path(args.out).resolve()
    reports = {name: run_method(name, out, args.trainer, args.data, extra, args.force) for name in methods}
    markdown, rows = table(reports)
    write_text_atomic(out / "methods.md", markdown + "\n")
    write_json_atomic(out / "methods.json", {"rows": rows, "runs": {name: r["run"] for name, r in reports.items()},
                                             "trainer": args.trainer, "data": args.data, "extra": extra})
    print(markdown)


if __name__ == "__main__":
    main()
