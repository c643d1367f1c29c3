"""Helpers of the evaluation report: cache keys of what the numbers depend on, the Markdown table, mel images."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from datamodules.manifest import ManifestItem
from lightning_modules.io import update_with_folder


def describe_items(items: Sequence[ManifestItem], num_samples: int) -> list:
    """What a set's audio depends on: each item's id, file, size, modification time and crop, and the clip length."""
    described = []
    for item in items:
        stat = Path(item.path).stat()
        described.append([item.id, str(item.path), stat.st_size, stat.st_mtime_ns, item.offset, item.duration])
    return [num_samples, described]


def describe_model(folder: str | os.PathLike) -> list:
    """What a saved model's outputs depend on: its folder and every file's size and modification time."""
    folder = Path(folder).resolve()
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return [str(folder), [[str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns]
                          for path in files]]


def describe_weights(model: torch.nn.Module) -> str:
    """What an in-memory model's outputs depend on: a SHA-256 over the files its ``save_pretrained`` writes (each
    relative path and its bytes), so two models with one description load as one model (its weights, its
    configuration, its tokenizer); adapters are merged by the save, so a fresh adapter is the model it adapts."""
    with tempfile.TemporaryDirectory(prefix="ttm_describe_") as folder:
        model.save_pretrained(folder)
        return update_with_folder(hashlib.sha256(type(model).__qualname__.encode()), folder).hexdigest()


def run_hyperparameters(config_path: str | os.PathLike, fallback: dict[str, Any]) -> dict[str, Any]:
    """The method's hyperparameters as TensorBoard's hparams take them: the `LightningModule`'s ``init_args`` from the
    config the CLI saved (``config.yaml`` in the run's folder), flattened to ``optimizer.lr``-style keys (a component
    by its class, ``model`` for the backend), lists as text, unset values left out; plus the seed, the step budget and
    the forget set. `fallback` (the module's own ``hparams``) where no config was saved (a run outside the CLI)."""
    path = Path(config_path)
    if not path.is_file():
        return {name: value if isinstance(value, (int, float, str, bool)) else str(value)
                for name, value in fallback.items() if value is not None}
    config = yaml.safe_load(path.read_text()) or {}
    model = config.get("model") or {}
    params: dict[str, Any] = {"method": str(model.get("class_path", "")).rsplit(".", 1)[-1]}
    _flatten(model.get("init_args") or {}, "", params)
    data = (config.get("data") or {}).get("init_args") or {}
    for name in ("forget_groups", "forget_ids", "forget_manifest"):
        if data.get(name):
            params[f"data.{name}"] = str(data[name])
    trainer = config.get("trainer") or {}
    params.update({"seed_everything": config.get("seed_everything"), "max_steps": trainer.get("max_steps")})
    return {name: value for name, value in params.items() if value is not None}


def _flatten(values: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and "class_path" in value:
            out[key] = str(value["class_path"]).rsplit(".", 1)[-1]
            _flatten(value.get("init_args") or {}, f"{key}.", out)
        elif isinstance(value, dict):
            _flatten(value, f"{key}.", out)
        elif isinstance(value, (list, tuple)):
            out[key] = str(list(value))
        elif value is not None:
            out[key] = value


def gap_to_oracle(columns: dict[str, dict[str, dict[str, float]]], column: str) -> dict[str, dict[str, float]]:
    """`column` minus the oracle, per set and metric (empty without an oracle): 0 is the goal of unlearning."""
    if "oracle" not in columns:
        return {}
    return {split: {name: value - columns["oracle"][split][name] for name, value in values.items()
                    if name in columns["oracle"].get(split, {})}
            for split, values in columns[column].items()}


def markdown_table(columns: dict[str, dict[str, dict[str, float]]], column: str,
                   intervals: dict[str, dict[str, dict[str, dict]]] | None = None,
                   differences: dict[str, dict[str, dict[str, dict]]] | None = None, confidence: float = 0.95) -> str:
    """One row per set and metric, one column per evaluated model (``value [low, high]`` where `intervals` has the
    cell), then one per difference (``after − before``, ``after − oracle``: paired intervals, ``*`` where the interval
    excludes 0); without differences, `column`'s gap to the oracle."""
    names = list(columns)
    intervals, differences = intervals or {}, differences or {}
    gaps = {} if differences else gap_to_oracle(columns, column)
    header = ["set", "metric", *names, *differences] + ([f"{column} − oracle"] if gaps else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for split, values in columns[column].items():
        for metric in values:
            cells = [_cell(columns[name].get(split, {}).get(metric), intervals.get(name, {}).get(split, {}).get(metric))
                     for name in names]
            cells += [_cell(None, difference.get(split, {}).get(metric), signed=True)
                      for difference in differences.values()]
            if gaps:
                cells.append(_format(gaps[split].get(metric), signed=True))
            lines.append(f"| {split} | {metric} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    if intervals or differences:
        n = {interval["n"] for column_intervals in intervals.values() for metrics in column_intervals.values()
             for interval in metrics.values()}
        table += (f"\n\n[low, high]: {confidence:.0%} percentile bootstrap interval over the set's items or prompts "
                  f"(n = {', '.join(str(v) for v in sorted(n))}); differences are paired (the same items, prompts and "
                  "seeds drawn together); * marks a difference whose interval excludes 0.")
    return table


def _cell(value: float | None, interval: dict | None, signed: bool = False) -> str:
    if interval is None:
        return _format(value, signed)
    text = (f"{_format(interval['value'], signed)} [{_format(interval['low'], signed)}, "
            f"{_format(interval['high'], signed)}]")
    return text + (" *" if interval.get("excludes_zero") else "")


def _format(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
