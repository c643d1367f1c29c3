"""Attribution scores and rankings (Wang et al., "Data Attribution for Text-to-Image Models by Unlearning Synthesized
Images", NeurIPS 2024; Choi et al., "Large-Scale Training Data Attribution for Music Generative Models via
Unlearning", 2025): the score of a training track for a query is its loss after unlearning the query minus its loss
before, each measured at the same fixed timesteps and noise and averaged over the draws; tracks are ranked by score
(rank 1 is the most attributed), scores are aggregated per group (which artists the piece owes most to), and the
ranking is written as CSV and JSON, a markdown table and a bar plot of the top tracks (files and TensorBoard).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from datamodules.attribution_store import write_ranking_files

UNLEARNING_SCORE_LABEL = "score: loss after unlearning - loss before"


def attribution_scores(before: Tensor, after: Tensor) -> Tensor:
    """Per-track scores ``mean_d (after - before)``, `(tracks,)` float64.

    Args:
        before: `(tracks, draws)` (or `(tracks,)`) losses at the original weights.
        after: the same tracks' losses at the unlearned weights, same shape and draws.

    Raises:
        ValueError: the shapes differ, or a loss is not finite.
    """
    if before.shape != after.shape or before.dim() not in (1, 2):
        raise ValueError(f"before {tuple(before.shape)} and after {tuple(after.shape)} must have the same shape, "
                         "(tracks,) or (tracks, draws): measure both sweeps over the same tracks and draws.")
    difference = after.double() - before.double()
    if not torch.isfinite(difference).all():
        raise ValueError("A loss before or after unlearning is not finite; check the sweeps (and the unlearning "
                         "learning rate).")
    return difference if difference.dim() == 1 else difference.mean(dim=1)


def rank(scores: Tensor) -> Tensor:
    """Ranks `(tracks,)` float64 of `scores`: 1 for the highest score (the most attributed track); tied scores share
    the mean of the ranks they span (1, 2.5, 2.5, 4), so ties never make a rank look better than it is.

    Raises:
        ValueError: `scores` is not 1-D or holds NaN.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (tracks,), got shape {tuple(scores.shape)}.")
    if torch.isnan(scores).any():
        raise ValueError("scores hold NaN; check the sweeps.")
    values = scores.double()
    order = torch.argsort(values, descending=True, stable=True)
    sorted_values = values[order]
    ranks = torch.empty_like(values)
    start = 0
    n = len(values)
    while start < n:
        end = start + 1
        while end < n and sorted_values[end] == sorted_values[start]:
            end += 1
        ranks[order[start:end]] = (start + 1 + end) / 2  # mean of the 1-based ranks start+1 .. end
        start = end
    return ranks


def rank_value(value: Tensor | float) -> int | float:
    """A rank as written: an int (3), or the mean rank of a tie where it falls between two (2.5)."""
    value = float(value)
    return int(value) if value.is_integer() else value


def ranking_rows(ids: Sequence[str], captions: Sequence[str], groups: Sequence[str], scores: Tensor
                 ) -> list[dict[str, Any]]:
    """One row per track (id, caption, group, score, rank), most attributed first (ties in id order).

    Raises:
        ValueError: the lengths differ or an id repeats.
    """
    n = len(ids)
    if not (len(captions) == len(groups) == scores.numel() == n):
        raise ValueError(f"Got {n} ids, {len(captions)} captions, {len(groups)} groups and {scores.numel()} scores; "
                         "give one of each per track.")
    if len(set(ids)) != n:
        raise ValueError("Track ids repeat; each track must be scored once.")
    ranks = rank(scores.reshape(-1))
    rows = [{"id": ids[i], "caption": captions[i], "group": groups[i], "score": float(scores.reshape(-1)[i]),
             "rank": rank_value(ranks[i])} for i in range(n)]
    return sorted(rows, key=lambda row: (row["rank"], row["id"]))


def group_scores(groups: Sequence[str], scores: Tensor) -> list[dict[str, Any]]:
    """Per group: the sum, mean and count of its tracks' scores and the group's rank by sum, largest sum first
    (ties by name).

    Raises:
        ValueError: the lengths differ.
    """
    if len(groups) != scores.numel():
        raise ValueError(f"Got {len(groups)} groups for {scores.numel()} scores; give one group per track.")
    totals: dict[str, list[float]] = {}
    for group, score in zip(groups, scores.reshape(-1).tolist(), strict=True):
        totals.setdefault(group, []).append(score)
    sums = torch.tensor([math.fsum(values) for values in totals.values()], dtype=torch.float64)
    ranks = rank(sums) if len(totals) else sums
    rows = [{"group": group, "sum": math.fsum(values), "mean": math.fsum(values) / len(values), "count": len(values),
             "rank": rank_value(group_rank)} for (group, values), group_rank in zip(totals.items(), ranks, strict=True)]
    return sorted(rows, key=lambda row: (row["rank"], row["group"]))


def markdown_table(rows: Sequence[dict[str, Any]], top_k: int = 10) -> str:
    """The first `top_k` ranking rows as a markdown table (for TensorBoard's text tab and reports)."""
    lines = ["| rank | id | group | score | caption |", "|---:|---|---|---:|---|"]
    for row in rows[:top_k]:
        caption = str(row["caption"]).replace("|", "\\|")
        lines.append(f"| {row['rank']:g} | {row['id']} | {row['group']} | {row['score']:.6g} | {caption} |")
    return "\n".join(lines)


def bar_plot(rows: Sequence[dict[str, Any]], top_k: int = 10, title: str = "Most attributed training tracks",
             score_label: str = UNLEARNING_SCORE_LABEL):
    """A matplotlib figure: horizontal bars of the first `top_k` rows' scores, the top track at the top, coloured by
    group (artist) with a legend, titled `title` (name the query there), the x axis labelled `score_label` (what the
    score is: a loss difference, a cosine similarity)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    shown = list(rows[:top_k])
    groups = sorted({row["group"] for row in shown})
    palette = matplotlib.colormaps["tab10"]
    colour = {group: palette(i % palette.N) for i, group in enumerate(groups)}
    figure = Figure(figsize=(8, 0.4 * max(len(shown), 1) + 1.4))
    axes = figure.add_subplot()
    axes.barh(range(len(shown)), [row["score"] for row in shown], color=[colour[row["group"]] for row in shown])
    axes.set_yticks(range(len(shown)), [str(row["id"]) for row in shown], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(score_label)
    axes.set_title(title, fontsize=10)
    if any(groups):
        axes.legend(handles=[Patch(color=colour[group], label=group or "(no group)") for group in groups],
                    fontsize=7, loc="lower right", title="group", title_fontsize=7)
    figure.tight_layout()
    return figure


def write_ranking(folder: str | os.PathLike, ids: Sequence[str], captions: Sequence[str], groups: Sequence[str],
                  scores: Tensor, top_k: int = 20, score_label: str = UNLEARNING_SCORE_LABEL, query: str = ""
                  ) -> list[dict[str, Any]]:
    """Write ``ranking.csv`` / ``ranking.json`` (id, caption, group, score, rank; most attributed first),
    ``groups.csv`` / ``groups.json`` (group, sum, mean, count, rank), ``top_tracks.md`` and ``top_tracks.png`` (the
    first `top_k` tracks, the plot titled by the `query` and its axis labelled `score_label`) into `folder`, each
    atomically; returns the ranking rows."""
    rows = ranking_rows(ids, captions, groups, scores)
    write_ranking_files(folder, rows, group_scores(groups, scores), markdown_table(rows, top_k),
                        bar_plot(rows, top_k, plot_title(query), score_label))
    return rows


def plot_title(query: str) -> str:
    return f"Most attributed training tracks: {query}" if query else "Most attributed training tracks"


def log_ranking(experiment: Any, rows: Sequence[dict[str, Any]], tag: str = "attribution", top_k: int = 20,
                step: int = 0, score_label: str = UNLEARNING_SCORE_LABEL, query: str = "") -> None:
    """Add the top-`top_k` table (text, markdown) and bar plot (image, axis labelled `score_label`) to a
    TensorBoard ``SummaryWriter`` (``trainer.logger.experiment`` of a `TensorBoardLogger`) under `tag`."""
    experiment.add_text(f"{tag}/top_tracks", markdown_table(rows, top_k), global_step=step)
    figure = bar_plot(rows, top_k, plot_title(query), score_label)
    experiment.add_figure(f"{tag}/top_tracks", figure, global_step=step, close=False)
