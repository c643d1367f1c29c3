"""The attribution cascade's maths (`lightning_modules.attribution.cascade`): which tracks it measures, how it scores
the rest, recall@k, and its refusals of bad input. The flow through `QueryAttribution` is tested in
test_attribution_flow.py."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.attribution.cascade import (
    calibrated_scores,
    calibration_slope,
    candidate_count,
    cascade_candidates,
    recall_at_k,
)


@pytest.mark.parametrize(("tracks", "fraction", "count"), [(400, 0.05, 20), (400, 0.01, 4), (10, 0.01, 1),
                                                          (3, 1.0, 3), (100_000, 0.02, 2000), (7, 0.3, 3)])
def test_the_cascade_measures_the_ceiling_of_its_fraction(tracks, fraction, count):
    assert candidate_count(tracks, fraction) == count


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_a_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction must be in"):
        candidate_count(10, fraction)


def test_candidates_are_each_querys_top_scores_in_index_order_with_ties_to_the_lower_index():
    cheap = torch.tensor([[0.1, 0.9, 0.5, 0.9, -1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert cascade_candidates(cheap, 0.4).tolist() == [[1, 3], [0, 1]]
    assert cascade_candidates(cheap[0], 0.6).tolist() == [1, 2, 3]
    assert cascade_candidates(torch.tensor([1.0, 1.0, 1.0]), 0.34).tolist() == [0, 1]


def test_nan_cheap_scores_are_refused():
    with pytest.raises(ValueError, match="NaN or infinite"):
        cascade_candidates(torch.tensor([0.1, float("nan")]), 0.5)


def test_the_rest_are_scored_by_the_cheap_score_on_the_exact_scores_scale():
    cheap = torch.tensor([1.0, 2.0, 3.0, 4.0, -1.0])
    candidates = torch.tensor([2, 3])
    exact = torch.tensor([0.31, 0.39])  # about 0.1 x the cheap score
    slope = (3 * 0.31 + 4 * 0.39) / (9 + 16)
    assert calibration_slope(cheap[candidates], exact) == pytest.approx(slope)
    scores = calibrated_scores(cheap, candidates, exact)
    assert scores.dtype == torch.float64
    assert scores.tolist() == pytest.approx([slope, 2 * slope, 0.31, 0.39, -slope])
    assert calibration_slope(torch.zeros(2), torch.ones(2)) == 0.0  # nothing to fit: the rest score 0


@pytest.mark.parametrize(("candidates", "exact", "message"), [
    (torch.tensor([1, 1]), torch.tensor([0.1, 0.2]), "distinct track indices"),
    (torch.tensor([0, 5]), torch.tensor([0.1, 0.2]), "distinct track indices"),
    (torch.tensor([0, 1]), torch.tensor([0.1]), "one query"),
    (torch.tensor([0, 1]), torch.tensor([0.1, float("inf")]), "not finite"),
])
def test_bad_candidates_or_exact_scores_are_refused(candidates, exact, message):
    with pytest.raises(ValueError, match=message):
        calibrated_scores(torch.arange(5.0), candidates, exact)


def test_recall_at_k_is_the_share_of_the_reference_top_k_found():
    reference = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    scores = torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    assert recall_at_k(scores, reference, 2).tolist() == [0.5, 1.0]  # {0, 4} against {0, 1}
    assert recall_at_k(scores, reference, 5).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="k must be in"):
        recall_at_k(scores, reference, 6)
    with pytest.raises(ValueError, match="same tracks"):
        recall_at_k(scores[:, :4], reference, 2)
