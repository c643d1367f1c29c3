"""Consistency maths of attribution on hand-made inputs with known answers (ties, bounds, errors)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.attribution.consistency import (
    average_ranks,
    kmeans_select,
    mean_self_influence_rank,
    precision_at_k,
    rank_correlation,
    self_influence_rank,
    top_bottom_similarity,
)


# ------------------------------------------------------------------------------------------------------ k-means
def _blobs() -> tuple[torch.Tensor, list[set[int]]]:
    """Three tight, well separated clusters of 4 points each (rows interleaved), and their members."""
    generator = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([centres + 0.1 * torch.randn(3, 2, generator=generator) for _ in range(4)])
    return points, [{c + 3 * i for i in range(4)} for c in range(3)]


def test_kmeans_selects_one_member_per_cluster_deterministically() -> None:
    points, clusters = _blobs()
    for seed in range(5):
        chosen = kmeans_select(points, 3, seed=seed)
        assert chosen.dtype == torch.long and chosen.tolist() == sorted(set(chosen.tolist()))
        assert sorted(next(c for c, members in enumerate(clusters) if int(i) in members) for i in chosen) == [0, 1, 2]
        assert torch.equal(chosen, kmeans_select(points, 3, seed=seed))


def test_kmeans_returns_the_member_nearest_each_centroid() -> None:
    # one cluster: the centroid is the origin, nearest member is row 2
    points = torch.tensor([[1.0, 0.0], [-1.0, 0.2], [0.1, 0.0], [0.0, -1.1]])
    assert kmeans_select(points, 1).tolist() == [2]
    # k = n: every row, once
    assert kmeans_select(points, 4).tolist() == [0, 1, 2, 3]


def test_kmeans_distinct_even_with_duplicate_rows() -> None:
    points = torch.tensor([[0.0, 0.0]] * 3 + [[5.0, 5.0]] * 2)
    chosen = kmeans_select(points, 4, seed=0)
    assert len(set(chosen.tolist())) == 4


@pytest.mark.parametrize("k", [0, 5])
def test_kmeans_rejects_bad_k(k: int) -> None:
    with pytest.raises(ValueError, match=r"k must lie in \[1, 4\]"):
        kmeans_select(torch.randn(4, 3), k)


def test_kmeans_rejects_bad_embeddings() -> None:
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        kmeans_select(torch.randn(4), 1)
    with pytest.raises(ValueError, match="NaN"):
        kmeans_select(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1)


# ---------------------------------------------------------------------------------------------- self-influence
def test_self_influence_rank_known_answers() -> None:
    scores = torch.tensor([
        [5.0, 1.0, 2.0, 0.0],  # query 0 unlearned track 0: first
        [3.0, 1.0, 2.0, 0.5],  # query 1 unlearned track 1: two above -> third
        [1.0, 1.0, 1.0, 1.0],  # query 2 unlearned track 3: all tied
    ])
    index = torch.tensor([0, 1, 3])
    assert self_influence_rank(scores, index).tolist() == [1.0, 3.0, 4.0]
    assert self_influence_rank(scores, index, ties="average").tolist() == [1.0, 3.0, 2.5]
    assert mean_self_influence_rank(scores, index) == pytest.approx(8 / 3)
    assert mean_self_influence_rank(scores[:1], index[:1]) == 1.0


def test_self_influence_rank_errors() -> None:
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"query_train_index must be \(n_queries,\)"):
        self_influence_rank(scores, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        self_influence_rank(scores, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="ties"):
        self_influence_rank(scores, torch.tensor([0, 1]), ties="optimistic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(n_queries, n_train\)"):
        self_influence_rank(torch.zeros(3), torch.tensor([0]))


# ---------------------------------------------------------------------------------------------- top / bottom
def test_top_bottom_similarity_known_answers() -> None:
    scores = torch.tensor([0.9, -0.2, 0.5, 0.1, -1.0])
    similarity = torch.tensor([0.8, 0.3, 0.6, 0.5, 0.1])
    assert top_bottom_similarity(scores, similarity, 2) == pytest.approx((0.7, 0.2))
    assert top_bottom_similarity(scores, similarity, 5) == pytest.approx((0.46, 0.46))


def test_top_bottom_similarity_averages_ties_at_the_cut_off() -> None:
    scores = torch.tensor([3.0, 1.0, 1.0, 0.0])
    similarity = torch.tensor([1.0, 0.0, 0.5, 0.2])
    # top-2: track 0 plus one of the tied tracks 1, 2 (expected similarity 0.25)
    top, bottom = top_bottom_similarity(scores, similarity, 2)
    assert top == pytest.approx((1.0 + 0.25) / 2)
    assert bottom == pytest.approx((0.2 + 0.25) / 2)


def test_top_bottom_similarity_errors() -> None:
    with pytest.raises(ValueError, match=r"k must lie in \[1, 3\]"):
        top_bottom_similarity(torch.zeros(3), torch.zeros(3), 4)
    with pytest.raises(ValueError, match="same length"):
        top_bottom_similarity(torch.zeros(3), torch.zeros(4), 1)


# ---------------------------------------------------------------------------------------------- correlations
def test_average_ranks_with_ties() -> None:
    assert average_ranks(torch.tensor([10.0, 20.0, 10.0, 5.0, 20.0, 20.0])).tolist() == [2.5, 5.0, 2.5, 1.0, 5.0, 5.0]


def test_rank_correlation_known_answers() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rank_correlation(a, a.exp()) == pytest.approx({"spearman": 1.0, "pearson": 0.926942}, abs=1e-6)
    assert rank_correlation(a, -a)["spearman"] == pytest.approx(-1.0)
    assert rank_correlation(a, 2 * a + 1)["pearson"] == pytest.approx(1.0)
    # hand computed: ranks of b = [1.5, 1.5, 3, 4]
    b = torch.tensor([0.0, 0.0, 1.0, 5.0])
    ra, rb = torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.5, 1.5, 3, 4])
    expected = float(((ra - ra.mean()) * (rb - rb.mean())).sum() / ((ra - ra.mean()).norm() * (rb - rb.mean()).norm()))
    assert rank_correlation(a, b)["spearman"] == pytest.approx(expected)


def test_rank_correlation_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (40,), generator=generator).float()  # many ties
    b = a + torch.randn(40, generator=generator)
    result = rank_correlation(a, b)
    x, y = a.double().numpy(), b.double().numpy()
    assert result["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert result["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_rank_correlation_errors() -> None:
    with pytest.raises(ValueError, match="constant"):
        rank_correlation(torch.ones(3), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="same length"):
        rank_correlation(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="at least 2"):
        rank_correlation(torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="NaN"):
        rank_correlation(torch.tensor([1.0, math.nan]), torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------------------------------------- precision@k
def test_precision_at_k_known_answers() -> None:
    scores = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.0])
    relevant = torch.tensor([True, False, True, True, False])
    assert precision_at_k(scores, relevant, 1) == 1.0
    assert precision_at_k(scores, relevant, 2) == 0.5
    assert precision_at_k(scores, relevant, 3) == pytest.approx(2 / 3)
    assert precision_at_k(scores, relevant, 5) == pytest.approx(3 / 5)


def test_precision_at_k_ties_count_their_share() -> None:
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0])
    relevant = torch.tensor([True, False, False, False])
    assert precision_at_k(scores, relevant, 1) == pytest.approx(0.25)
    assert precision_at_k(scores, relevant, 4) == pytest.approx(0.25)


def test_precision_at_k_errors() -> None:
    with pytest.raises(ValueError, match=r"k must lie in \[1, 2\]"):
        precision_at_k(torch.zeros(2), torch.tensor([True, False]), 3)
    with pytest.raises(ValueError, match="is_relevant must be a bool vector"):
        precision_at_k(torch.zeros(2), torch.tensor([1, 0]), 1)
