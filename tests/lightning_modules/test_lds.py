"""The linear datamodeling score: Spearman against scipy, and LDS on a world whose losses are additive in the tracks."""

import pytest
import scipy.stats
import torch

from lightning_modules.attribution.lds import (
    linear_datamodeling_scores,
    mean_lds,
    paired_lds_difference,
    spearman,
    spearman_interval,
)


def test_spearman_matches_scipy_per_column_ties_included():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (40, 3), generator=generator).double()  # many ties
    y = x + torch.randn(40, 3, generator=generator)
    expected = [scipy.stats.spearmanr(x[:, k], y[:, k]).statistic for k in range(3)]
    torch.testing.assert_close(spearman(x, y), torch.tensor(expected, dtype=torch.float64))
    assert spearman(torch.ones(5, 1), torch.arange(5.0)[:, None]).isnan().all()  # constant: undefined
    assert float(spearman(x[:, 0], y[:, 0])) == pytest.approx(expected[0])  # one pair of vectors: a scalar


def test_the_spearman_interval_holds_the_value_and_narrows_with_more_pairs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, generator=generator)
    y = x + torch.randn(200, generator=generator)
    few, many = spearman_interval(x[:20], y[:20]), spearman_interval(x, y)
    assert few.value == pytest.approx(scipy.stats.spearmanr(x[:20], y[:20]).statistic)
    # measured: 20 pairs 0.549 [0.124, 0.823], 200 pairs 0.610 [0.507, 0.694]
    assert few.low < few.value < few.high and many.low < many.value < many.high and few.n == 20
    assert many.high - many.low < (few.high - few.low) / 2


def _world(n_models=64, n_train=40, n_queries=6, noise=0.5, seed=0):
    """Subset models whose loss on each query falls by each helpful track they saw: loss = 5 - mask @ effect + noise."""
    generator = torch.Generator().manual_seed(seed)
    effect = torch.randn(n_queries, n_train, generator=generator)
    masks = torch.rand(n_models, n_train, generator=generator) < 0.5
    losses = 5 - masks.double() @ effect.double().T + noise * torch.randn(n_models, n_queries, generator=generator)
    return effect, masks, losses


def test_the_true_effects_score_near_one_and_their_opposite_near_minus_one():
    effect, masks, losses = _world()
    true = linear_datamodeling_scores(effect, masks, losses)
    # measured on this world: the true effects 0.948-0.995 per query; random scores -0.40..0.21, mean |LDS| 0.20
    assert true.min() > 0.9
    assert linear_datamodeling_scores(-effect, masks, losses).max() < -0.9
    random = linear_datamodeling_scores(torch.randn(effect.shape, generator=torch.Generator().manual_seed(1)),
                                        masks, losses)
    assert random.abs().mean() < 0.3
    interval = mean_lds(true)
    assert interval.low <= interval.value <= interval.high and interval.n == 6 and interval.value > 0.9


def test_lds_refuses_shapes_that_disagree_too_few_models_and_non_finite_values():
    effect, masks, losses = _world(n_models=4)
    with pytest.raises(ValueError, match="agree"):
        linear_datamodeling_scores(effect[:, :-1], masks, losses)
    with pytest.raises(ValueError, match="at least 3 subset models"):
        linear_datamodeling_scores(effect, masks[:2], losses[:2])
    losses[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite losses"):
        linear_datamodeling_scores(effect, masks, losses)
    with pytest.raises(ValueError, match="No query has a defined LDS"):
        mean_lds(torch.full((3,), float("nan")))


def test_the_paired_difference_cancels_what_the_queries_share_and_finds_a_better_method():
    effect, masks, losses = _world(n_models=32, n_queries=20, noise=0.0)
    generator = torch.Generator().manual_seed(2)
    losses = losses + torch.linspace(0.5, 6, 20).double() * torch.randn(losses.shape, generator=generator).double()
    good = linear_datamodeling_scores(effect + 0.5 * torch.randn(effect.shape, generator=generator), masks, losses)
    worse = linear_datamodeling_scores(effect + 1.5 * torch.randn(effect.shape, generator=generator), masks, losses)
    # measured on this world: 0.665 [0.595, 0.734] against 0.365 [0.287, 0.446]; difference 0.300 [0.198, 0.394]
    difference = paired_lds_difference(good, worse)
    assert difference.low > 0.1 and difference.value == pytest.approx(float((good - worse).mean()))
    assert paired_lds_difference(worse, good).value == pytest.approx(-difference.value)
    # a method a constant 0.05 below another on every query: the paired interval is that constant, while their own
    # intervals overlap
    shifted = good - 0.05
    exact = paired_lds_difference(good, shifted)
    assert exact.low == pytest.approx(0.05) and exact.high == pytest.approx(0.05)
    assert mean_lds(shifted).high > mean_lds(good).low
    good[0], worse[1] = float("nan"), float("nan")  # a query undefined for either method is left out
    assert paired_lds_difference(good, worse).n == 18
    with pytest.raises(ValueError, match="same queries"):
        paired_lds_difference(good, worse[:-1])
