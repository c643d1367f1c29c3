"""Attribution scores, ranks with ties, group aggregation and the written ranking files."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from lightning_modules.attribution.scoring import (
    attribution_scores,
    bar_plot,
    group_scores,
    log_ranking,
    markdown_table,
    plot_title,
    rank,
    write_ranking,
)


def test_scores_are_the_mean_over_draws_of_after_minus_before():
    before = torch.tensor([[1.0, 2.0], [3.0, 3.0], [0.5, 0.5]])
    after = torch.tensor([[2.0, 4.0], [3.0, 2.0], [0.5, 0.5]])
    assert attribution_scores(before, after).tolist() == [1.5, -0.5, 0.0]
    assert attribution_scores(before[:, 0], after[:, 0]).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="same shape"):
        attribution_scores(before, after[:2])
    with pytest.raises(ValueError, match="not finite"):
        attribution_scores(before, after.clone().fill_(float("nan")))


def test_rank_one_is_the_highest_score_and_ties_share_their_mean_rank():
    assert rank(torch.tensor([0.1, 0.9, 0.5])).tolist() == [3.0, 1.0, 2.0]
    assert rank(torch.tensor([3.0, 1.0, 2.0, 2.0, -1.0])).tolist() == [1.0, 4.0, 2.5, 2.5, 5.0]
    assert rank(torch.zeros(4)).tolist() == [2.5] * 4  # all tied: no track looks attributed
    with pytest.raises(ValueError, match="NaN"):
        rank(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        rank(torch.zeros(2, 2))


def test_group_scores_sum_and_mean_sorted_by_sum():
    rows = group_scores(["a", "b", "a", "c", "b"], torch.tensor([1.0, 5.0, 2.0, -1.0, -4.0]))
    assert [row["group"] for row in rows] == ["a", "b", "c"]
    assert rows[0] == {"group": "a", "sum": 3.0, "mean": 1.5, "count": 2, "rank": 1.0}
    assert rows[1]["sum"] == 1.0 and rows[1]["mean"] == 0.5 and rows[2]["rank"] == 3.0
    with pytest.raises(ValueError, match="one group per track"):
        group_scores(["a"], torch.zeros(2))


def test_write_ranking_writes_csv_json_groups_table_and_plot(tmp_path):
    ids, captions = ["t0", "t1", "t2", "t3"], ["a piece, by A", "b|piece", "c", "d"]
    groups, scores = ["A", "B", "A", "B"], torch.tensor([0.2, 0.7, 0.2, -0.1], dtype=torch.float64)
    rows = write_ranking(tmp_path / "out", ids, captions, groups, scores, top_k=3)
    assert [row["id"] for row in rows] == ["t1", "t0", "t2", "t3"]
    with open(tmp_path / "out" / "ranking.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["id", "caption", "group", "score", "rank"]
    assert [(r["id"], r["caption"], r["group"], float(r["score"]), r["rank"]) for r in table] == [
        ("t1", "b|piece", "B", 0.7, "1"), ("t0", "a piece, by A", "A", 0.2, "2.5"), ("t2", "c", "A", 0.2, "2.5"),
        ("t3", "d", "B", -0.1, "4")]  # whole ranks as integers, a tie's mean rank as it is
    assert json.loads((tmp_path / "out" / "ranking.json").read_text()) == rows
    assert [g["group"] for g in json.loads((tmp_path / "out" / "groups.json").read_text())] == ["B", "A"]
    with open(tmp_path / "out" / "groups.csv", newline="") as f:
        assert next(csv.reader(f)) == ["group", "sum", "mean", "count", "rank"]
    markdown = (tmp_path / "out" / "top_tracks.md").read_text()
    assert markdown.count("\n") == 2 + 3 and "b\\|piece" in markdown  # header, rule, top 3; pipes escaped
    assert (tmp_path / "out" / "top_tracks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary file left
    with pytest.raises(ValueError, match="one of each per track"):
        write_ranking(tmp_path / "bad", ids, captions[:2], groups, scores)
    with pytest.raises(ValueError, match="repeat"):
        write_ranking(tmp_path / "bad", ["t0", "t0", "t2", "t3"], captions, groups, scores)


def test_log_ranking_adds_a_text_table_and_an_image_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    rows = write_ranking(tmp_path / "out", ["x", "y"], ["cx", "cy"], ["g", "h"], torch.tensor([1.0, 2.0]))
    with SummaryWriter(tmp_path / "tb") as writer:
        log_ranking(writer, rows, tag="query0", top_k=2)
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert events.Tags()["images"] == ["query0/top_tracks"]
    assert "query0/top_tracks/text_summary" in events.Tags()["tensors"]
    assert markdown_table(rows, 1).splitlines()[-1].startswith("| 1 | y | h |")


def test_the_plot_names_the_query_and_colours_each_group():
    rows = [{"id": "t1", "group": "Kestrel Drive", "score": 0.7}, {"id": "t0", "group": "Neon Harbor", "score": 0.2},
            {"id": "t2", "group": "Kestrel Drive", "score": 0.1}]
    figure = bar_plot(rows, 3, plot_title("query0, “a piece by Kestrel Drive”"))
    axes = figure.axes[0]

    assert axes.get_title() == "Most attributed training tracks: query0, “a piece by Kestrel Drive”"
    colours = [bar.get_facecolor() for bar in axes.patches]
    assert colours[0] == colours[2] != colours[1]  # one colour per group
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["Kestrel Drive", "Neon Harbor"]
