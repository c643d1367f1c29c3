"""Scores against the oracle (forget quality, privacy leakage, model utility, the verdict) on per-item values whose
answer is known."""

from __future__ import annotations

import pytest
import torch

from callbacks.oracle_scores import ks_pvalue, scores_against_oracle, utility
from lightning_modules.metrics.functional import bootstrap_replicates, membership_auc


def column(forget_loss, heldout_loss, retain_loss, highest):
    """Per-item values and paired replicates of one model, as `UnlearningEvaluation` keeps them."""
    samples = {"forget": {"loss": [{"loss": forget_loss}], "mia_auc": [{"loss": forget_loss}, {"loss": heldout_loss}],
                          "memorization": [{"highest": highest}]},
               "retain": {"loss": [{"loss": retain_loss}]}}
    statistics = {"loss": (lambda g: g["loss"].mean(-1), True),
                  "mia_auc": (lambda m, h: torch.tensor(membership_auc(m["loss"], h["loss"])), False),
                  "memorization": (lambda g: g["highest"].mean(-1), True)}
    replicates = {}
    for split, measures in samples.items():
        replicates[split] = {}
        for name, groups in measures.items():
            statistic, batched = statistics[name]
            value, draws = bootstrap_replicates(statistic, groups, 300, 0, batched)
            replicates[split][name] = (value, draws, len(groups[0][next(iter(groups[0]))]))
    return samples, replicates


def draws(seed, n=40, shift=0.0):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_the_oracle_itself_scores_as_the_oracle():
    oracle = column(draws(0), draws(1), draws(2), draws(3))
    scores = scores_against_oracle({"after": oracle[0], "oracle": oracle[0], "before": oracle[0]},
                                   {"after": oracle[1], "oracle": oracle[1], "before": oracle[1]}, "after", 0.95)
    assert scores["forget_quality"] == {"loss": 1.0, "clap_similarity": 1.0}
    assert scores["privacy_leakage"] == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 40}
    assert scores["model_utility"]["after"]["value"] == pytest.approx(1.0)
    assert scores["model_utility"]["measures"] == ["retain/loss"]


def test_a_model_whose_forget_losses_stayed_low_is_far_on_forget_quality_and_privacy():
    """The oracle never saw the forget items: their losses look like held-out ones (AUC about 0.5). The 'unlearned'
    model kept them 0.5 lower (members again): KS rejects, the leakage is large and positive, the verdict names it;
    utility is untouched."""
    heldout, retain = draws(1), draws(2)
    oracle = column(draws(0), heldout, retain, draws(3))
    after = column(draws(0) - 0.5, heldout, retain, draws(3))
    scores = scores_against_oracle({"after": after[0], "oracle": oracle[0], "before": oracle[0]},
                                   {"after": after[1], "oracle": oracle[1], "before": oracle[1]}, "after", 0.95)
    assert scores["forget_quality"]["loss"] < 1e-6 and scores["forget_quality"]["clap_similarity"] == 1.0
    leak = scores["privacy_leakage"]
    assert leak["low"] > 20 and leak["value"] > 40
    assert scores["verdict"].startswith("Furthest from the oracle: forget quality")
    assert scores["model_utility"]["after"]["value"] == pytest.approx(scores["model_utility"]["oracle"]["value"])


def test_utility_is_the_harmonic_mean_of_ratios_to_the_base_and_skips_non_positive_scores():
    one = lambda value: (torch.tensor(value, dtype=torch.float64), torch.full((5,), value, dtype=torch.float64), 5)  # noqa: E731
    base = {"retain": {"loss": one(1.0), "clap_score": one(0.5), "recognition": one(1.0)}}
    after = {"retain": {"loss": one(2.0), "clap_score": one(-0.1), "recognition": one(0.5)}}
    value, replicates, used = utility(after, base)
    assert used == ["retain/loss", "retain/recognition"]  # the negative CLAP score has no ratio
    assert value.item() == pytest.approx(0.5) and torch.allclose(replicates, torch.full((5,), 0.5,
                                                                                       dtype=torch.float64))


def test_ks_pvalue():
    assert ks_pvalue(draws(0), draws(0)) == 1.0
    assert ks_pvalue(draws(0), draws(1, shift=2.0)) < 1e-10


def test_the_normal_score_of_a_p_value_holds_far_into_the_tail():
    """A KS p-value of 1e-20 (measured on a 64-generation methods run) once raised: 1 - p/2 rounds to 1."""
    from callbacks.oracle_scores import _normal_score

    assert _normal_score(0.05) == pytest.approx(1.959964, abs=1e-6)
    assert _normal_score(1.0) == 0.0
    assert _normal_score(1e-20) == pytest.approx(9.336045, abs=1e-5)  # scipy.stats.norm.isf(5e-21)
    assert _normal_score(0.0) == pytest.approx(37.065788, abs=1e-5)  # capped at p = 1e-300: norm.isf(5e-301)
