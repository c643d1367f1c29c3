"""The attribution cascade: a cheap score for every training track, then the exact unlearning score of the top
fraction only.

Attribution by unlearning measures every training track's loss after unlearning each query (the "after" sweep), so a
query costs one forward pass per track and draw: for Choi et al.'s 115K-track catalogue, hours of GPUs per query. The
first-order prediction of the same score (``∇L(z)ᵀ Δθ(q)``, with ``Δθ(q)`` the very update unlearning the query
makes: `FirstOrderUnlearning` with a ``step``, ``configs/attribution/cascade_scores.yaml``) costs one inner product
per track once the training set's projected gradients are stored. The cascade keeps what matters of both: it ranks
every track by the cheap score, measures the exact score of the top `fraction` of them, and ranks the rest by the
cheap score put on the exact score's scale (`calibrated_scores`), so a ranking and a score matrix still cover every
track.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_fraction(fraction: float) -> float:
    """`fraction`, if it is a share of the training set the cascade can measure: in (0, 1].

    Raises:
        ValueError: it is not.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"The cascade's fraction must be in (0, 1] (0.05 measures the top 5 % of tracks exactly), got "
                         f"{fraction}.")
    return fraction


def candidate_count(num_tracks: int, fraction: float) -> int:
    """How many tracks the cascade measures exactly: ``ceil(fraction · num_tracks)``, at least one.

    Raises:
        ValueError: `fraction` is not in (0, 1] or there are no tracks.
    """
    check_fraction(fraction)
    if num_tracks < 1:
        raise ValueError("The cascade needs at least one training track.")
    return max(1, math.ceil(fraction * num_tracks - 1e-9))


def cascade_candidates(cheap: Tensor, fraction: float) -> Tensor:
    """The tracks the cascade measures exactly: for each query (row of `cheap`, `(queries, tracks)` or `(tracks,)`),
    the indices of its `candidate_count` highest cheap scores, in increasing index order (ties broken towards the
    lower index, so the choice is reproducible).

    Raises:
        ValueError: a cheap score is not finite.
    """
    if not torch.isfinite(cheap).all():
        raise ValueError("The cascade's cheap scores hold NaN or infinite values; recompute them (the first-order "
                         "pass, or the gradient store it reads).")
    count = candidate_count(cheap.shape[-1], fraction)
    order = torch.argsort(cheap.double(), dim=-1, descending=True, stable=True)
    return order[..., :count].sort(dim=-1).values


def calibration_slope(cheap: Tensor, exact: Tensor) -> float:
    """The least-squares slope through the origin of the exact scores on the cheap ones, over the measured tracks:
    the first-order estimate from the query's gradient is a derivative (the loss change per unit step), the exact
    score the change of a finite step, so the two differ by about the step's size; the prediction from the update
    itself (``cascade_scores.yaml``) is in loss units already (a slope near 1, below it where the second order damps
    the rise). 0 when every cheap score is 0."""
    cheap, exact = cheap.double().reshape(-1), exact.double().reshape(-1)
    if cheap.shape != exact.shape:
        raise ValueError(f"Got {cheap.numel()} cheap and {exact.numel()} exact scores; give one of each per measured "
                         "track.")
    denominator = float(cheap.pow(2).sum())
    return float((cheap * exact).sum()) / denominator if denominator > 0 else 0.0


def calibrated_scores(cheap: Tensor, candidates: Tensor, exact: Tensor) -> Tensor:
    """One query's cascade scores `(tracks,)` float64: the `exact` scores `(k,)` at the `candidates` indices, and
    elsewhere the cheap score times `calibration_slope` fitted on the candidates.

    Raises:
        ValueError: the shapes disagree, an index repeats or falls outside the tracks, or an exact score is not
            finite.
    """
    if cheap.dim() != 1 or candidates.dim() != 1 or exact.shape != candidates.shape:
        raise ValueError(f"calibrated_scores takes one query: cheap (tracks,), candidates (k,) and exact (k,); got "
                         f"{tuple(cheap.shape)}, {tuple(candidates.shape)} and {tuple(exact.shape)}.")
    if len(candidates.unique()) != len(candidates) or (len(candidates) and not (
            0 <= int(candidates.min()) and int(candidates.max()) < len(cheap))):
        raise ValueError(f"The candidates must be distinct track indices in [0, {len(cheap)}).")
    if not torch.isfinite(exact).all():
        raise ValueError("An exact (unlearning) score of a candidate is not finite; check its sweeps.")
    scores = cheap.double() * calibration_slope(cheap[candidates], exact)
    scores[candidates] = exact.double()
    return scores


def recall_at_k(scores: Tensor, reference: Tensor, k: int) -> Tensor:
    """Per query (rows of `(queries, tracks)`), the share of the `reference` ranking's top `k` tracks that `scores`
    also ranks in its top `k` (ties broken towards the lower index in both), `(queries,)` float64."""
    if scores.shape != reference.shape:
        raise ValueError(f"recall@k compares two rankings of the same tracks; got {tuple(scores.shape)} and "
                         f"{tuple(reference.shape)}.")
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be in [1, {scores.shape[-1]}], got {k}.")
    top = torch.argsort(scores.double(), dim=-1, descending=True, stable=True)[..., :k]
    top_reference = torch.argsort(reference.double(), dim=-1, descending=True, stable=True)[..., :k]
    hits = (top.unsqueeze(-1) == top_reference.unsqueeze(-2)).any(-1).sum(-1)
    return hits.double() / k
