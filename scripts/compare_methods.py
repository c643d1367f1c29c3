"""The unlearning methods side by side on the toy world: each config of ``configs/unlearn`` runs with the same
trainer, data and evaluation (same prompts, items and evaluation seed), and the evaluation reports become one table
with the base model and the oracle (retrained without the artist) as reference rows.

With ``--seeds N`` every method trains N times, with ``seed_everything`` 0 .. N-1 (the order of the training batches
and every random draw of training; the evaluation's prompts and noise stay fixed). Each cell is then the mean ± the
standard deviation over the seeds, beside the bootstrap interval of the evaluation (the mean of the seeds' interval
bounds), and a method is called better than another on a column only where it is better in every seed.

    python scripts/compare_methods.py --out reports/methods            # every method, 64 generations per set
    python scripts/compare_methods.py --methods esd npo --seeds 3 -- --trainer.max_steps=50
    python scripts/compare_methods.py --out reports/methods_aurora_vale \
        --data configs/data/toy_forget_aurora_vale.yaml --oracle checkpoints/toy/oracle_aurora_vale
    python scripts/compare_methods.py --out reports/methods_musicgen --model configs/model/toy_musicgen.yaml \
        --trainer configs/trainer/toy_musicgen.yaml                    # the same methods on the toy MusicGen

A run that finished is not run again (delete its folder under ``<out>/runs`` or pass ``--force``), so a stopped
comparison resumes; the table is rebuilt from every finished run. Each run leaves a small record,
``<out>/runs/<method>/seed<k>/results.json`` with its digest, which git keeps (the rest of ``runs`` is ignored), so a
comparison longer than a session resumes on another machine from a commit. A record is reused only with the inputs it
was run with (the digests of the three configs, the extra arguments, the seed); otherwise the script stops and says
which differ. Arguments after ``--`` go to every ``train.py fit``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from callbacks.plots import TRADEOFFS, tradeoff_figure  # noqa: E402
from lightning_modules.io import (  # noqa: E402
    atomic_file,
    read_json_verified,
    update_with_folder,
    write_json_atomic,
    write_json_verified,
    write_text_atomic,
)

REPO = Path(__file__).resolve().parents[1]
# (set, metric, column title, which way is better for unlearning: +1 higher, -1 lower, 0 neither): what the table
# shows of each report
COLUMNS = [
    ("forget", "loss", "forget loss ↑", 1),
    ("near", "loss", "near loss", 0),
    ("retain", "loss", "retain loss ↓", -1),
    ("forget", "fad", "FAD forget ↑", 1),
    ("near", "fad", "FAD near ↓", -1),
    ("retain", "fad", "FAD retain ↓", -1),
    ("retain", "clap_score", "CLAP retain ↑", 1),
    ("forget", "recognition", "recognition ↓ (CLAP)", -1),
    ("forget", "recognition_judge", "recognition ↓ (features)", -1),
    ("near", "recognition", "near recognition ↑ (CLAP)", 1),
    ("near", "recognition_judge", "near recognition ↑ (features)", 1),
    ("forget", "mia_auc", "MIA AUC", 0),
]
# how far two runs' "before" columns may differ (relative) and still be the same measurement (`_same_measurement`)
BEFORE_TOLERANCE = 1e-2
# the keys of a run's report that its record under <out>/runs keeps
RECORDED = ("columns", "intervals", "differences", "against_oracle", "gap_to_oracle", "timing")


def toy_methods() -> list[str]:
    """The configs of ``configs/unlearn`` that unlearn the toy model (the others need a hub checkpoint)."""
    return sorted(path.stem for path in (REPO / "configs" / "unlearn").glob("*.yaml")
                  if "model/toy_base.yaml" in path.read_text())


def run_method(name: str, out: Path, trainer: str, data: str, extra: list[str], force: bool, seed: int = 0,
               model: str | None = None) -> dict:
    """The evaluation report of one method's run with `seed`, running it unless a finished run is there; `model`: a
    model config in place of the method config's."""
    folder = out / "runs" / name / f"seed{seed}"
    report = folder / "results.json"
    inputs = run_inputs(name, trainer, data, extra, seed, model)
    if report.exists() and not force:
        results = read_json_verified(report, f"{name}'s record of seed {seed}", "delete its folder and run again")
        if results.get("inputs") != inputs:
            raise SystemExit(f"{report} was run with other inputs than this comparison's (its configs, data config, "
                             f"arguments or seed differ: {_changed(results.get('inputs'), inputs)}); rerun it with "
                             "--force, or delete its folder.")
        return results
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "train.py", "fit", "--config", trainer, "--config", f"configs/unlearn/{name}.yaml",
               "--data", data, f"--trainer.default_root_dir={folder}", "--trainer.enable_progress_bar=false",
               f"--seed_everything={seed}", *([f"--model.init_args.model={model}"] if model else []), *extra]
    print(f"[{name} seed {seed}] {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"[{name} seed {seed}] failed with exit code {result.returncode}:\n{result.stderr[-4000:]}")
    (run,) = (folder / "lightning_logs").iterdir()
    full = json.loads((run / "results.json").read_text())
    # what the table needs, small enough to commit (a comparison that outlives a machine resumes from these); the
    # full report, with the datasets' listing and the history, stays in the run's folder
    results = {key: full[key] for key in RECORDED if key in full}
    results.update(run=str(run.relative_to(REPO) if run.is_relative_to(REPO) else run),
                   process_seconds=time.perf_counter() - started, inputs=inputs)
    write_json_verified(report, results)
    print(f"[{name} seed {seed}] done in {results['process_seconds']:.0f} s", flush=True)
    return results


def run_inputs(name: str, trainer: str, data: str, extra: list[str], seed: int, model: str | None = None) -> dict:
    """What decides a run's result: the text of its three configs (by digest), of the model config that replaces the
    method's (where one does), the contents of every model folder they load (`loaded_models`: a retrained oracle in the
    same folder is another oracle), its extra arguments and its seed."""
    digest = lambda path: hashlib.sha256((REPO / path).read_bytes()).hexdigest()[:16]  # noqa: E731
    configs = [trainer, f"configs/unlearn/{name}.yaml", data, *([model] if model else [])]
    inputs = {"trainer": digest(trainer), "method": digest(f"configs/unlearn/{name}.yaml"), "data": digest(data),
              "extra": list(extra), "seed": seed, "models": loaded_models(configs)}
    return inputs | ({"model": digest(model)} if model else {})


MODEL_KEYS = ("pretrained", "oracle", "text_encoder")  # the config keys that name a saved model's folder


def loaded_models(configs: list[str]) -> dict[str, str]:
    """The model folders `configs` load (the values of `MODEL_KEYS`, in them and in the configs they name), each with
    a SHA-256 of its files (`update_with_folder`)."""
    found: dict[str, str] = {}
    pending, read = list(configs), set()
    while pending:
        config = pending.pop()
        if config in read:
            continue
        read.add(config)
        for key, value in _items(yaml.safe_load((REPO / config).read_text())):
            if not isinstance(value, str):
                continue
            named = ((REPO / config).parent / value).resolve()  # jsonargparse reads a config's paths from its folder
            if value.endswith((".yaml", ".yml")) and named.is_file():
                pending.append(str(named))  # a config naming another (a method's model config)
            elif key in MODEL_KEYS and (REPO / value).is_dir():
                found[value] = update_with_folder(hashlib.sha256(), REPO / value).hexdigest()[:16]
    return dict(sorted(found.items()))


def _items(node):
    """Every (key, value) pair of a parsed YAML tree (list items under their list's key)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            if isinstance(value, list):
                for item in value:
                    yield key, item
            yield from _items(value)
    elif isinstance(node, list):
        for item in node:
            yield from _items(item)


def _changed(old: dict | None, new: dict) -> str:
    if old is None:
        return "it records none"
    return ", ".join(key for key in new if old.get(key) != new[key])


def with_evaluation(trainer: str, out: Path, oracle: str | None = None, generations: int | None = None) -> str:
    """A copy of the `trainer` config, in `out`, whose `UnlearningEvaluation` compares against `oracle` and generates
    `generations` clips per set, where given (a list of callbacks cannot be edited from the command line)."""
    config = yaml.safe_load((REPO / trainer).read_text())
    evaluations = [callback for callback in config.get("trainer", {}).get("callbacks", [])
                   if callback.get("class_path", "").endswith("UnlearningEvaluation")]
    if len(evaluations) != 1:
        raise SystemExit(f"--oracle / --generations need one UnlearningEvaluation callback in {trainer}; it has "
                         f"{len(evaluations)}.")
    changes = []
    if oracle is not None:
        if not Path(oracle).is_dir():
            raise SystemExit(f"--oracle {oracle}: no such model folder.")
        evaluations[0]["init_args"]["oracle"] = os.path.relpath(Path(oracle).resolve(), REPO)  # train.py runs in REPO
        changes.append(f"the oracle {oracle}")
    if generations is not None:
        if generations < 2:
            raise SystemExit(f"--generations must be at least 2 (FAD needs two clips), got {generations}.")
        evaluations[0]["init_args"]["num_prompts"] = generations
        changes.append(f"{generations} generations per set")
    path = out / "runs" / "trainer.yaml"
    write_text_atomic(path, f"# {trainer} with {' and '.join(changes) or 'no change'} (written by "
                      "scripts/compare_methods.py)\n" + yaml.safe_dump(config, sort_keys=False))
    return str(path)


def table(reports: dict[str, list[dict]]) -> tuple[str, list[dict], list[str]]:
    """Markdown, rows and the comparisons that hold over every seed: base, oracle, then each method's "after" column
    over its seeds (`reports`: method -> one report per seed)."""
    first = next(iter(reports.values()))[0]
    rows = [{"method": "base (before)", **_cells([first], "before")}]
    if "oracle" in first["columns"]:
        rows.append({"method": "oracle (retrained)", **_cells([first], "oracle")})
    for name, runs in reports.items():
        for report in runs:
            if not _same_measurement(report["columns"]["before"], first["columns"]["before"]):
                raise SystemExit(f"{name}'s 'before' column differs from the others' by more than {BEFORE_TOLERANCE:g} "
                                 "(relative): the runs did not share the evaluation's items, prompts or seed; rerun "
                                 "them with --force.")
        seconds = [report.get("timing", {}).get("train_seconds") for report in runs]
        rows.append({"method": name, **_cells(runs, "after"),
                     "train seconds": {"mean": sum(seconds) / len(seconds)} if None not in seconds else None})
    header = ["method", *(title for _, _, title, _ in COLUMNS), "train seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(key)) for key in header) + " |")
    seeds = len(next(iter(reports.values())))
    lines += ["", (f"Each method: mean ± standard deviation over {seeds} training seeds; " if seeds > 1 else
                   "One training seed per method; ") + "[low, high]: the evaluation's 95 % bootstrap interval over its "
              "prompts or items" + (" (the mean of the seeds' bounds)." if seeds > 1 else ".")]
    wins = _wins(reports)
    comparisons = consistent_wins(reports, wins)
    if comparisons:
        lines += ["", f"Leaders: the methods no other beats in every one of the {seeds} seed(s), per column:",
                  *(f"- {title}: {', '.join(names)}" for title, names in unbeaten(reports, wins).items()),
                  "", f"Better in every one of the {seeds} seed(s):", *(f"- {line}" for line in comparisons)]
    return "\n".join(lines), rows, comparisons


def oracle_table(reports: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """Markdown and rows of the three numbers against the oracle (open-unlearning's condensation), per method over its
    seeds: forget quality (the KS test's p-value of the forget set's per-item losses against the oracle's, each seed's:
    p-values do not average), privacy leakage (membership AUC relative to the oracle's, %) and model utility (harmonic
    mean of the retain and near measures over the base's; the oracle's is about 1)."""
    rows = []
    for name, runs in reports.items():
        scores = [run.get("against_oracle") or {} for run in runs]
        quality = [score.get("forget_quality", {}).get("loss") for score in scores]
        row = {"method": name, "forget quality (KS p, loss) ↑": None if None in quality else quality}
        for key, title, path in (("privacy_leakage", "privacy leakage (%) → 0", ()),
                                 ("model_utility", "model utility ↑", ("after",))):
            cells = [score.get(key) for score in scores]
            for step in path:
                cells = [cell.get(step) if cell else None for cell in cells]
            if None in cells:
                row[title] = None
                continue
            row[title] = _over_seeds([cell["value"] for cell in cells], cells)
        rows.append(row)
    header = ["method", "forget quality (KS p, loss) ↑", "privacy leakage (%) → 0", "model utility ↑"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        quality = row[header[1]]
        cells = [row["method"], "–" if quality is None else ", ".join(f"{p:.1e}" for p in quality),
                 *(_format(row[key]) for key in header[2:])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def _same_measurement(a: dict, b: dict) -> bool:
    """Whether two columns hold the same sets and metrics with values equal up to `BEFORE_TOLERANCE`: float
    reductions differ with the number of threads (measured between 2 threads and 1, same weights and prompts: 5e-9
    relative on a loss, 6e-4 on a FAD of 64 clips, 1.2e-3 on a KL; the tolerance is 8 times the largest), while other
    items, prompts or seeds move the metrics by percents."""
    if a.keys() != b.keys() or any(a[split].keys() != b[split].keys() for split in a):
        return False
    return all(math.isclose(a[split][metric], b[split][metric], rel_tol=BEFORE_TOLERANCE, abs_tol=1e-9)
               for split in a for metric in a[split])


def _cells(runs: list[dict], column: str) -> dict:
    """Each table column's value over `runs` (mean, standard deviation over the runs, the mean interval bounds)."""
    cells = {}
    for split, metric, title, _ in COLUMNS:
        values = [run["columns"][column].get(split, {}).get(metric) for run in runs]
        if None in values:
            cells[title] = None
            continue
        intervals = [run.get("intervals", {}).get(column, {}).get(split, {}).get(metric) for run in runs]
        cells[title] = _over_seeds(values, intervals if None not in intervals else None)
    return cells


def _over_seeds(values: list[float], intervals: list[dict] | None) -> dict:
    """One cell over seeds: the mean, the standard deviation (from two seeds on) and the mean interval bounds."""
    mean = sum(values) / len(values)
    cell = {"mean": mean, "values": values}
    if len(values) > 1:
        cell["std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    if intervals is not None:
        cell["low"] = sum(i["low"] for i in intervals) / len(intervals)
        cell["high"] = sum(i["high"] for i in intervals) / len(intervals)
    return cell


def tradeoff_points(reports: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, dict]]]:
    """The trade-off figure's points: base and oracle (from the first run), then each method's "after" over its seeds
    (the mean value and the mean interval bounds), for the sets and metrics of `plots.TRADEOFFS`."""
    first = next(iter(reports.values()))[0]
    axes = [axis[:2] for pair in TRADEOFFS for axis in pair]
    sources = {"base (before)": [(first, "before")]}
    if "oracle" in first.get("intervals", {}):
        sources["oracle"] = [(first, "oracle")]
    sources.update({name: [(run, "after") for run in runs] for name, runs in reports.items()})
    points: dict[str, dict[str, dict[str, dict]]] = {}
    for name, cells in sources.items():
        for split, metric in axes:
            found = [run.get("intervals", {}).get(column, {}).get(split, {}).get(metric) for run, column in cells]
            if None in found:
                continue
            points.setdefault(name, {}).setdefault(split, {})[metric] = {
                key: sum(cell[key] for cell in found) / len(found) for key in ("value", "low", "high")}
    return points


def _wins(reports: dict[str, list[dict]]) -> dict[str, list[tuple[str, str]]]:
    """Per column with a direction, the pairs (A, B) of methods where A is better than B in every seed (paired by
    seed); the comparison needs the same number of seeds for every method."""
    names, wins = list(reports), {}
    for split, metric, title, direction in COLUMNS:
        if not direction:
            continue
        wins[title] = []
        for a in names:
            for b in names:
                pairs = list(zip(reports[a], reports[b], strict=True))
                values = [(x["columns"]["after"].get(split, {}).get(metric),
                           y["columns"]["after"].get(split, {}).get(metric)) for x, y in pairs]
                if a != b and values and all(u is not None and v is not None and direction * (u - v) > 0
                                             for u, v in values):
                    wins[title].append((a, b))
    return wins


def consistent_wins(reports: dict[str, list[dict]], wins: dict | None = None) -> list[str]:
    """The pairs of `_wins` (given, or computed) as "column: A > B, ..." lines, for the columns that have any."""
    wins = _wins(reports) if wins is None else wins
    return [f"{title}: " + ", ".join(f"{a} > {b}" for a, b in pairs) for title, pairs in wins.items() if pairs]


def unbeaten(reports: dict[str, list[dict]], wins: dict | None = None) -> dict[str, list[str]]:
    """Per column with a direction, the methods no other method beats in every seed: the leaders a table may name
    (one where a single method beats every other, several where the seeds cannot order them)."""
    wins = _wins(reports) if wins is None else wins
    return {title: [name for name in reports if not any(b == name for _, b in pairs)]
            for title, pairs in wins.items() if pairs}


def _format(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):
        digits = 0 if max(abs(value["mean"]), value.get("std", 0.0)) >= 10 else 3  # one precision per cell
        number = lambda x: f"{x:.{digits}f}"  # noqa: E731
        text = number(value["mean"]) + (f" ± {number(value['std'])}" if "std" in value else "")
        return text + (f" [{number(value['low'])}, {number(value['high'])}]" if "low" in value else "")
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/methods", help="folder of the runs and the table")
    parser.add_argument("--methods", nargs="*",
                        help="config names under configs/unlearn (default: those of the toy model)")
    parser.add_argument("--trainer", default="configs/trainer/toy.yaml")
    parser.add_argument("--data", default="configs/data/toy_forget.yaml")
    parser.add_argument("--model", help="a model config for every method in place of the toy model (e.g. "
                        "configs/model/toy_musicgen.yaml); the methods' other settings stay theirs")
    parser.add_argument("--oracle", help="the oracle model folder, in place of the trainer config's (an oracle "
                        "retrained without the data config's forget set)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per method (seed_everything 0..N-1)")
    parser.add_argument("--generations", type=int, default=64,
                        help="generations per evaluation set (the trainer config's num_prompts otherwise: 0)")
    parser.add_argument("--force", action="store_true", help="rerun methods that have a finished run")
    args, extra = parser.parse_known_args()
    extra = [arg for arg in extra if arg != "--"]
    methods = args.methods or toy_methods()
    unknown = [name for name in methods if not (REPO / "configs" / "unlearn" / f"{name}.yaml").is_file()]
    if unknown:
        raise SystemExit(f"No config configs/unlearn/<name>.yaml for {unknown}.")
    out = Path(args.out).resolve()
    generations = args.generations or None
    changed = args.oracle or generations
    trainer = with_evaluation(args.trainer, out, args.oracle, generations) if changed else args.trainer
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {args.seeds}.")
    if args.model and not (REPO / args.model).is_file():
        raise SystemExit(f"--model {args.model}: no such config file (paths are taken from {REPO}).")
    reports = {name: [run_method(name, out, trainer, args.data, extra, args.force, seed, args.model)
                      for seed in range(args.seeds)] for name in methods}
    markdown, rows, comparisons = table(reports)
    against, oracle_rows = oracle_table(reports)
    markdown += ("\n\nAgainst the oracle (forget quality: each seed's p-value, high is indistinguishable from the "
                 "oracle; privacy leakage and model utility: mean ± sd over the seeds [mean 95 % interval]):\n\n"
                 + against)
    write_text_atomic(out / "methods.md", markdown + "\n")
    with atomic_file(out / "tradeoff.png") as tmp:
        tradeoff_figure(tradeoff_points(reports), f"{out.name}: forget against retain (mean over seeds; bars: the "
                        "mean 95 % interval)").savefig(tmp, format="png", dpi=100)
    write_json_atomic(out / "methods.json", {"rows": rows, "against_oracle": oracle_rows, "comparisons": comparisons,
                                             "seeds": args.seeds,
                                             "runs": {name: [r["run"] for r in runs] for name, runs in reports.items()},
                                             "trainer": args.trainer, "oracle": args.oracle, "data": args.data,
                                             "model": args.model,
                                             "generations": generations,
                                             "extra": extra})
    print(markdown)


if __name__ == "__main__":
    main()
