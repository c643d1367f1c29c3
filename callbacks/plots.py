"""The report's figures (matplotlib, no display): the forget-versus-retain trade-off, one point per evaluated model with
its intervals; the metrics of before / after / oracle as bars with their intervals; a clip's mel spectrogram with axes.

The evaluation puts them in ``report.html`` and TensorBoard; ``scripts/compare_methods.py`` draws the trade-off with
every method.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torchaudio
from matplotlib.figure import Figure
from torch import Tensor

# (set, metric, axis label) of the trade-off's axes: what unlearning should raise (x) against what it should keep (y),
# for losses and, where generation was measured, for generated audio
TRADEOFFS = (
    (("forget", "loss", "forget loss (higher: forgotten)"), ("retain", "loss", "retain loss (lower: kept)")),
    (("forget", "recognition", "forget recognition (lower: forgotten)"),
     ("retain", "fad", "retain FAD (lower: kept)")),
)
COLOURS = {"before": "tab:gray", "after": "tab:red", "model": "tab:red", "oracle": "tab:green"}


def tradeoff_figure(points: Mapping[str, Mapping[str, Mapping[str, dict]]], title: str = "") -> Figure:
    """Forget against retain, one panel per pair of `TRADEOFFS` the points have: `points` is name -> set -> metric ->
    interval (``value``, and ``low`` / ``high`` drawn as error bars where present)."""
    panels = [pair for pair in TRADEOFFS
              if all(_has(cell, pair[0]) and _has(cell, pair[1]) for cell in points.values())]
    figure = Figure(figsize=(5.5 * max(len(panels), 1), 4.4))
    for k, ((x_set, x_metric, x_label), (y_set, y_metric, y_label)) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), k + 1)
        for i, (name, cell) in enumerate(points.items()):
            x, y = cell[x_set][x_metric], cell[y_set][y_metric]
            axes.errorbar(x["value"], y["value"], xerr=_error(x), yerr=_error(y), fmt="o", capsize=3,
                          color=COLOURS.get(name, f"C{i % 10}"), label=name)
            axes.annotate(name, (x["value"], y["value"]), textcoords="offset points", xytext=(5, 5), fontsize=7)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.grid(alpha=0.3)
    if panels:
        figure.axes[0].legend(fontsize=7, loc="best")
    figure.suptitle(title or "Forget against retain (bars: the 95 % intervals)", fontsize=10)
    figure.tight_layout()
    return figure


def metric_bars(intervals: Mapping[str, Mapping[str, Mapping[str, dict]]]) -> Figure:
    """One panel per metric: a bar per evaluated model (column) in each set, with its interval; `intervals` is column
    -> set -> metric -> interval."""
    names = list(intervals)
    metrics = list(dict.fromkeys(metric for column in intervals.values() for values in column.values()
                                 for metric in values))
    columns = min(3, max(len(metrics), 1))
    rows = -(-len(metrics) // columns)
    figure = Figure(figsize=(4.2 * columns, 2.8 * max(rows, 1)))
    for k, metric in enumerate(metrics):
        axes = figure.add_subplot(rows, columns, k + 1)
        sets = [split for split in next(iter(intervals.values())) if any(
            metric in intervals[name].get(split, {}) for name in names)]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            cells = [intervals[name].get(split, {}).get(metric) for split in sets]
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(sets))]
            values = [cell["value"] if cell else float("nan") for cell in cells]
            errors = [[cell["value"] - cell.get("low", cell["value"]) if cell else 0 for cell in cells],
                      [cell.get("high", cell["value"]) - cell["value"] if cell else 0 for cell in cells]]
            axes.bar(xs, values, width, yerr=errors, capsize=2, label=name, color=COLOURS.get(name, f"C{i % 10}"))
        axes.set_xticks(range(len(sets)), sets, fontsize=7)
        axes.set_title(metric, fontsize=9)
        axes.tick_params(axis="y", labelsize=7)
    if metrics:
        figure.axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def mel_figure(clip: Tensor, sample_rate: int, title: str = "", n_mels: int = 64) -> Figure:
    """A `(channels, samples)` clip's log-mel spectrogram, time in seconds and frequency in Hz on the axes."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=n_mels)(
        clip.float().mean(0))
    decibels = 10 * torch.log10(mel + 1e-10)
    figure = Figure(figsize=(3.6, 2.2))
    # fixed margins instead of tight_layout: the labels are the same on every clip, and measuring them per figure
    # took a third of the rendering time
    figure.subplots_adjust(left=0.17, right=0.88, bottom=0.19, top=0.88 if title else 0.96)
    axes = figure.add_subplot()
    seconds = clip.shape[-1] / sample_rate
    image = axes.imshow(decibels.numpy(), origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, n_mels),
                        vmin=float(decibels.max()) - 80, vmax=float(decibels.max()))
    edges = torchaudio.functional.melscale_fbanks(513, 0.0, sample_rate / 2, n_mels, sample_rate).argmax(0)
    hertz = edges.float() * sample_rate / 1024
    ticks = [0, n_mels // 4, n_mels // 2, 3 * n_mels // 4, n_mels - 1]
    axes.set_yticks(ticks, [f"{hertz[t] / 1000:.1f}k" if hertz[t] >= 1000 else f"{hertz[t]:.0f}" for t in ticks],
                    fontsize=6)
    axes.tick_params(axis="x", labelsize=6)
    axes.set_xlabel("time (s)", fontsize=7)
    axes.set_ylabel("frequency (Hz, mel)", fontsize=7)
    if title:
        axes.set_title(title, fontsize=7)
    figure.colorbar(image, ax=axes, label="dB", fraction=0.08, pad=0.03).ax.tick_params(labelsize=6)
    return figure


def mel_png(clip: Tensor, sample_rate: int, title: str = "") -> bytes:
    """`mel_figure` as PNG bytes: rendered once per clip, for TensorBoard and for ``report.html``."""
    buffer = io.BytesIO()
    mel_figure(clip, sample_rate, title).savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def png_array(png: bytes) -> np.ndarray:
    """PNG bytes as a `(height, width, 4)` float array in [0, 1], as ``add_image(..., dataformats="HWC")`` takes."""
    from matplotlib.image import imread

    return imread(io.BytesIO(png), format="png")


def _has(cell: Mapping[str, Mapping[str, Any]], axis: Sequence[str]) -> bool:
    return axis[1] in cell.get(axis[0], {}) and cell[axis[0]][axis[1]] is not None


def _error(interval: dict) -> list[list[float]] | None:
    if "low" not in interval:
        return None
    return [[interval["value"] - interval["low"]], [interval["high"] - interval["value"]]]
