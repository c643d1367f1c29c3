"""The fair comparison of attribution methods on an LDS benchmark (issue 18).

    python scripts/lds_study.py [--methods clap,trak] [--study configs/attribution/study/lds.yaml]

Each method of the study config runs, at each of its settings, as the ``train.py predict`` pass of its config, in this
process, attributing the benchmark's model on the benchmark's queries; the score matrix lands in
``<out>/<method>/<setting>/scores_<name>.pt`` and the pass's seconds in ``run.json`` beside it (a finished setting is
not run again; delete its folder to). The one-off passes a setting needs (`prepare`: the Fisher, the "before" sweeps)
run first, once, each timed in its own ``<out>/prepare/<name>/run.json``. Every setting's LDS is measured on the
validation half of the queries; each method is reported at its best validation setting on the test half, with the
bootstrap interval over queries, its paired difference from the study's `reference` method on the same queries, and
its cost (seconds per query on this machine, one-off seconds, and the model passes it takes). Writes
``<report>/results.json`` and ``<report>/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from datamodules.attribution_store import AttributionStore, LdsBenchmark  # noqa: E402
from lightning_modules.attribution.lds import paired_lds_difference  # noqa: E402
from lightning_modules.io import read_json_verified, write_json_verified, write_text_atomic  # noqa: E402
from scripts.lds import evaluate  # noqa: E402

log = logging.getLogger("lds_study")


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, list):
        return [_fill(item, names) for item in value]
    return value


def arguments(config: str, overrides: dict[str, Any], names: dict[str, str]) -> list[str]:
    """The ``train.py predict`` command line of `config` with `overrides` (dotted keys), placeholders filled."""
    args = ["predict", "--config", config]
    for key, value in overrides.items():
        value = _fill(value, names)
        args.append(f"--{key}={value if isinstance(value, str) else json.dumps(value)}")
    return args


def run_pass(args: list[str], record: Path) -> dict[str, Any]:
    """Run ``train.py`` with `args` unless `record` says it finished; the record (seconds, arguments, threads), kept in
    `record`. The seconds are those of the run that wrote the pass's files: delete them with the record to time it
    again (a pass finding its files already written skips them, and its seconds would say nothing)."""
    if record.is_file():
        return read_json_verified(record, "LDS study run record", f"delete {record.parent} to run it again")
    log.info("Running: train.py %s", " ".join(args))
    started = time.perf_counter()
    train.main(args)
    result = {"seconds": time.perf_counter() - started, "args": args, "threads": torch.get_num_threads()}
    write_json_verified(record, result)
    return result


def setting_needs(spec: dict[str, Any], values: dict[str, Any] | None) -> list[str]:
    """The one-off passes a setting of a method reads: the method's `needs` and the setting's own."""
    return [*spec.get("needs", []), *(values or {}).get("needs", [])]


def study(study: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    out = Path(study["out"])
    names = {"out": str(out), "model": study["model"], "queries": study["queries"], "manifest": study["manifest"]}
    benchmark = LdsBenchmark(study["benchmark"])

    def prepare(needs: list[str]) -> dict[str, float]:
        """Run the one-off passes `needs` (the Fisher, a "before" sweep) once for the whole study, each recorded in
        ``<out>/prepare/<name>/run.json``; their seconds by name."""
        return {need: run_pass(arguments(study["prepare"][need]["config"],
                                         {**study["common"], **study["prepare"][need]["overrides"]}, names),
                               out / "prepare" / need / "run.json")["seconds"] for need in needs}

    def finished(method: str) -> bool:
        spec = study["methods"][method]
        return all((out / method / setting / "run.json").is_file()
                   and all((out / "prepare" / need / "run.json").is_file() for need in setting_needs(spec, values))
                   for setting, values in spec["settings"].items())

    # every pass first: they are cached, so a study stopped part-way goes on where it was; the methods not asked for
    # are reported too where all their passes are done, so that every row is measured on the same subset models
    reported = [method for method in study["methods"] if method in methods or finished(method)]
    left_out = [method for method in study["methods"] if method not in reported]
    if left_out:
        log.warning("Not reported, some of their passes not run yet (run them with --methods): %s", left_out)
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for method in reported:
        spec = study["methods"][method]
        runs[method] = {}
        for setting, values in spec["settings"].items():
            needs = setting_needs(spec, values)
            values = {key: value for key, value in (values or {}).items() if key != "needs"}
            run = out / method / setting
            overrides = {**study["common"], **spec["overrides"], **values}
            one_off = prepare(needs)  # before the pass, which reads them (for a method not asked for: its records)
            record = run_pass(arguments(spec["config"], overrides, {**names, "run": str(run)}), run / "run.json")
            runs[method][setting] = {"seconds": record["seconds"], "needs": needs,
                                     "one_off_seconds": sum(one_off.values()),
                                     "scores": AttributionStore(run).scores_path(method)}  # each pass is named so
    results: dict[str, Any] = {"benchmark": study["benchmark"], "model": study["model"], "methods": {}}
    for method, settings in runs.items():
        rows = {}
        for setting, row in settings.items():
            scores = row.pop("scores")
            per_split = {split: evaluate(benchmark, scores, split) for split in LdsBenchmark.SPLITS}
            queries = sum(len(per_split[split]["per_query"]) for split in per_split)
            rows[setting] = {**row, "seconds_per_query": row["seconds"] / queries,
                             "models": per_split["test"]["models"],
                             **{split: per_split[split]["lds"] for split in per_split},
                             "per_query": {split: per_split[split]["per_query"] for split in per_split},
                             "groups": {split: {group: truth["interval"] for group, truth in
                                                per_split[split]["groups"].items()} for split in per_split}}
            log.info("%s / %s: LDS validation %.3f, test %.3f (%.0f s)", method, setting,
                     rows[setting]["validation"]["value"], rows[setting]["test"]["value"], row["seconds"])
        best = max(rows, key=lambda name: rows[name]["validation"]["value"])
        results["methods"][method] = {"passes": study["methods"][method]["passes"], "best": best, "settings": rows}
    return results


def compare(results: dict[str, Any], reference: str) -> None:
    """Each method's paired difference from `reference` on the test queries (both at their best validation
    settings), into its entry's ``versus_reference``."""
    if reference not in results["methods"]:
        raise ValueError(f"The study's reference method {reference!r} has no results; run it "
                         f"(--methods {reference}) or name one of {list(results['methods'])}.")
    results["reference"] = reference
    base = results["methods"][reference]
    base = base["settings"][base["best"]]["per_query"]["test"]
    queries = sorted(base)
    for entry in results["methods"].values():
        mine = entry["settings"][entry["best"]]["per_query"]["test"]
        if sorted(mine) != queries:
            raise ValueError("Methods were measured on different test queries; run the study again on one benchmark.")
        entry["versus_reference"] = paired_lds_difference(
            torch.tensor([mine[query] for query in queries]), torch.tensor([base[query] for query in queries])
        ).as_dict()


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# LDS of attribution methods on {results['benchmark']} (model {results['model']})", "",
             "Each method at the setting with the best LDS on the validation queries; LDS on the test queries with the "
             "95 % bootstrap interval over queries (the subset models fixed), and its difference from "
             f"{results['reference']} on the same test queries with the paired bootstrap interval (a difference "
             "whose interval holds 0 is not one this benchmark shows). Cost: seconds of the method's pass per query "
             "(the training-set part amortised over the queries), one-off passes apart.", "",
             f"| method | setting | test LDS | − {results['reference']} (paired) | validation LDS | s / query | "
             "one-off s | passes |",
             "|---|---|---|---|---|---|---|---|"]

    def interval(value: dict[str, float]) -> str:
        return f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"

    for method, entry in results["methods"].items():
        row = entry["settings"][entry["best"]]
        difference = "" if method == results["reference"] else interval(entry["versus_reference"])
        lines.append(f"| {method} | {entry['best']} | {interval(row['test'])} | {difference} | "
                     f"{row['validation']['value']:.3f} | {row['seconds_per_query']:.1f} | "
                     f"{row['one_off_seconds']:.0f} | {entry['passes']} |")
    groups = sorted({group for entry in results["methods"].values()
                     for group in entry["settings"][entry["best"]]["groups"]["test"]})
    if groups:
        lines += ["", "Group-level truth (models trained without one artist): Spearman correlation over the test "
                  "queries between the rise of each query's loss without the artist and the method's total score of "
                  "the artist's tracks, with its 95 % bootstrap interval over the queries.", "",
                  "| method | " + " | ".join(groups) + " |",
                  "|---|" + "---|" * len(groups)]
        for method, entry in results["methods"].items():
            truth = entry["settings"][entry["best"]]["groups"]["test"]
            lines.append(f"| {method} | " + " | ".join(interval(truth[group]) if group in truth else ""
                                                       for group in groups) + " |")
    lines += ["", "Every setting (validation / test LDS):", ""]
    for method, entry in results["methods"].items():
        for setting, row in entry["settings"].items():
            lines.append(f"- {method} / {setting}: {row['validation']['value']:.3f} / {row['test']['value']:.3f} "
                         f"({row['seconds']:.0f} s, {row['models']} subset models)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path("configs/attribution/study/lds.yaml"))
    parser.add_argument("--methods", help="comma-separated methods of the study to run (default: all); every method "
                        "whose passes are all done is reported")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = yaml.safe_load(args.study.read_text())
    methods = args.methods.split(",") if args.methods else list(spec["methods"])
    unknown = [method for method in methods if method not in spec["methods"]]
    if unknown:
        raise ValueError(f"{args.study} has no methods {unknown}; it has {list(spec['methods'])}.")
    report = Path(spec["report"])
    results = study(spec, methods)
    compare(results, spec["reference"])
    write_json_verified(report / "results.json", results)
    write_text_atomic(report / "README.md", markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
