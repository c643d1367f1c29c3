"""Scores of an unlearned model against the oracle, as LLM unlearning condenses them (open-unlearning, TOFU, MUSE;
../shared/reference/papers.md section 5), computed from the evaluation's per-item values and paired bootstrap
replicates:

- forget quality: the p-value of a two-sample Kolmogorov-Smirnov test between a per-item statistic of the forget set
  under the unlearned model and under the oracle (the fixed-noise losses; each generation's highest CLAP similarity to
  the forget tracks). High: indistinguishable from the oracle.
- privacy leakage (MUSE's privleak): (AUC − AUC_oracle) / AUC_oracle × 100 of the loss-threshold membership attack on
  the forget set against held-out non-members. 0 is ideal; negative is over-forgetting.
- model utility: the harmonic mean of the retain-side measures, each as a ratio to the base model's (inverted where
  lower is better), so one collapsed measure drags it down; the oracle's beside it.

The verdict names the axis whose gap to the oracle is the strongest evidence: each axis's gap as a two-sided normal
score (from the KS p-value, or the gap over its bootstrap standard error).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import torch
from scipy.stats import ks_2samp
from torch import Tensor

from lightning_modules.metrics.functional import percentile_interval

Replicates = dict[str, dict[str, tuple[float, Tensor, int]]]  # split -> metric -> (value, replicates, n)

# retain-side measures of model utility, and whether higher is better
UTILITY_MEASURES = {"loss": False, "fad": False, "clap_score": True, "recognition": True, "recognition_judge": True}
UTILITY_SETS = ("retain", "near")


def ks_pvalue(first: Tensor, second: Tensor) -> float:
    """Two-sided two-sample Kolmogorov-Smirnov p-value (exact for small samples, as scipy chooses)."""
    return float(ks_2samp(first.double().cpu().numpy(), second.double().cpu().numpy()).pvalue)


def _normal_score(p_value: float) -> float:
    """The two-sided normal score of a p-value: 1.96 for 0.05; from the lower tail, which stays exact where
    ``1 - p / 2`` rounds to 1 (p below about 1e-16, as a KS test of two clearly different sets gives)."""
    return -NormalDist().inv_cdf(min(max(p_value, 1e-300), 1.0) / 2)


def _gap_score(gap: Tensor | float, replicates: Tensor) -> float:
    """|gap| over the bootstrap standard error of its replicates."""
    spread, gap = replicates.double().std().item(), float(gap)
    return abs(gap) / spread if spread > 0 else (math.inf if gap != 0 else 0.0)


def utility(replicates: Replicates, base: Replicates) -> tuple[Tensor, Tensor, list[str]] | None:
    """Harmonic mean of the retain-side measures as ratios to `base` (value and replicates), and the measures used:
    those present in both with positive values (a ratio of a non-positive score has no meaning)."""
    ratios, draws, used = [], [], []
    for split in UTILITY_SETS:
        for name, higher in UTILITY_MEASURES.items():
            if name not in replicates.get(split, {}) or name not in base.get(split, {}):
                continue
            value, rep, _ = replicates[split][name]
            base_value, base_rep, _ = base[split][name]
            if not (value > 0 and base_value > 0 and (rep > 0).all() and (base_rep > 0).all()):
                continue
            ratios.append(value / base_value if higher else base_value / value)
            draws.append(rep / base_rep if higher else base_rep / rep)
            used.append(f"{split}/{name}")
    if not ratios:
        return None
    harmonic = lambda xs: len(xs) / sum(1 / x for x in xs)  # noqa: E731
    return torch.as_tensor(harmonic(ratios), dtype=torch.float64), harmonic(draws), used


def scores_against_oracle(samples: dict[str, Any], replicates: dict[str, Replicates], column: str,
                          confidence: float) -> dict[str, Any]:
    """Forget quality, privacy leakage, model utility and the verdict for `column` against ``oracle`` (both in
    `samples` and `replicates`, per column); ``before`` is the base of model utility."""
    scores: dict[str, Any] = {}
    evidence: dict[str, tuple[float, str]] = {}
    forget, oracle_forget = samples[column].get("forget", {}), samples["oracle"].get("forget", {})
    quality = {}
    if "loss" in forget and "loss" in oracle_forget:
        quality["loss"] = ks_pvalue(forget["loss"][0]["loss"], oracle_forget["loss"][0]["loss"])
    if "memorization" in forget and "memorization" in oracle_forget:
        quality["clap_similarity"] = ks_pvalue(forget["memorization"][0]["highest"],
                                               oracle_forget["memorization"][0]["highest"])
    if quality:
        scores["forget_quality"] = quality
        worst = min(quality, key=quality.get)
        evidence["forget quality"] = (_normal_score(quality[worst]),
                                      f"KS p = {quality[worst]:.3g} on the forget set's {worst.replace('_', ' ')}")
    mine, oracle = replicates[column].get("forget", {}), replicates["oracle"].get("forget", {})
    if "mia_auc" in mine and "mia_auc" in oracle:
        (value, rep, n), (oracle_value, oracle_rep, _) = mine["mia_auc"], oracle["mia_auc"]
        leak, leak_rep = (value - oracle_value) / oracle_value * 100, (rep - oracle_rep) / oracle_rep * 100
        interval = percentile_interval(leak, leak_rep, confidence, n)
        scores["privacy_leakage"] = interval.as_dict()
        evidence["privacy leakage"] = (_gap_score(leak, leak_rep),
                                       f"{interval.value:+.1f} % [{interval.low:+.1f}, {interval.high:+.1f}]")
    if "before" in replicates:
        mine_utility = utility(replicates[column], replicates["before"])
        oracle_utility = utility(replicates["oracle"], replicates["before"])
        if mine_utility is not None and oracle_utility is not None:
            value, rep, used = mine_utility
            n = min(replicates[column][split][name][2] for split, name in (key.split("/") for key in used))
            scores["model_utility"] = {
                column: percentile_interval(value, rep, confidence, n).as_dict(),
                "oracle": percentile_interval(oracle_utility[0], oracle_utility[1], confidence, n).as_dict(),
                "measures": used}
            gap = value - oracle_utility[0]
            evidence["model utility"] = (_gap_score(gap, rep - oracle_utility[1]),
                                         f"{value.item():.3f} against the oracle's {oracle_utility[0].item():.3f}")
    if evidence:
        axis = max(evidence, key=lambda name: evidence[name][0])
        scores["verdict"] = (f"Furthest from the oracle: {axis} ({evidence[axis][1]}). "
                             + "; ".join(f"{name}: {detail}" for name, (_, detail) in evidence.items() if name != axis)
                             + ("." if len(evidence) > 1 else ""))
        scores["evidence"] = {name: score for name, (score, _) in evidence.items()}
    return scores
