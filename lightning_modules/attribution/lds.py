"""The linear datamodeling score (LDS; Park et al., "TRAK: Attributing Model Behavior at Scale", ICML 2023), the
counterfactual check of attribution scores used by D-TRAK, DAS and the diffusion influence-function work.

M models are trained on random subsets S_1..S_M of the training set (half of it each). For a query q, an attribution
method's scores τ(q, ·) predict each subset model's behaviour on q additively, g_m = Σ_{z ∈ S_m} τ(q, z); LDS(q) is
the Spearman rank correlation over the M models between g_m and the measured behaviour. The package's scores say how
much a track *helps* the query (unlearning it raises the query's loss; a similarity is high for a track like it), so
the behaviour is the negative of the query's loss at fixed timesteps and noise: a method that is right ranks the
subsets whose tracks help most as those with the lowest loss. A method's LDS is the mean over queries, with a
bootstrap interval over the queries.
"""

from __future__ import annotations

import torch
from scipy.stats import rankdata
from torch import Tensor

from lightning_modules.metrics.functional import Interval, bootstrap
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.passes import check_finite, measuring


def spearman(x: Tensor, y: Tensor) -> Tensor:
    """Spearman's rank correlation of `x` and `y` `(n, k)` per column `(k,)`, or `(n,)` into a scalar (ties at their
    mean rank); NaN where a column is constant."""
    rx = torch.from_numpy(rankdata(x.double().cpu().numpy(), axis=0))
    ry = torch.from_numpy(rankdata(y.double().cpu().numpy(), axis=0))
    rx, ry = rx - rx.mean(0), ry - ry.mean(0)
    return (rx * ry).sum(0) / (rx.pow(2).sum(0) * ry.pow(2).sum(0)).sqrt()


def linear_datamodeling_scores(scores: Tensor, masks: Tensor, losses: Tensor) -> Tensor:
    """LDS per query `(n_queries,)`: `scores` `(n_queries, n_train)` of a method, `masks` `(n_models, n_train)` the
    training subsets (true: the track was in the model's training set), `losses` `(n_models, n_queries)` each subset
    model's loss on each query.

    Raises:
        ValueError: the shapes disagree, fewer than 3 models, or a score or loss is not finite.
    """
    n_queries, n_train = scores.shape
    if masks.shape[1] != n_train or losses.shape != (masks.shape[0], n_queries):
        raise ValueError(f"LDS needs scores (queries, train), masks (models, train) and losses (models, queries) that "
                         f"agree; got {tuple(scores.shape)}, {tuple(masks.shape)} and {tuple(losses.shape)}.")
    if masks.shape[0] < 3:
        raise ValueError(f"LDS needs at least 3 subset models for a rank correlation, got {masks.shape[0]}.")
    for name, values in (("scores", scores), ("losses", losses)):
        if not torch.isfinite(values).all():
            raise ValueError(f"LDS got non-finite {name}; a method's scores and the subset losses must be finite.")
    predicted = masks.double() @ scores.double().T  # (models, queries): g_m for each query
    return spearman(predicted, -losses.double())


def mean_lds(per_query: Tensor, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """The mean LDS over queries with its percentile bootstrap interval over queries (queries whose LDS is undefined,
    a constant prediction, are left out)."""
    defined = per_query[~per_query.isnan()]
    if len(defined) == 0:
        raise ValueError("No query has a defined LDS (every prediction is constant over the subset models).")
    return bootstrap(lambda sample: sample["lds"].mean(-1), [{"lds": defined}], resamples, level, seed, batched=True)


def spearman_interval(x: Tensor, y: Tensor, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Spearman's correlation of `x` and `y` `(n,)` with its percentile bootstrap interval over the n pairs (resamples
    on which either is constant are left out)."""
    return bootstrap(lambda sample: spearman(sample["x"].movedim(-1, 0), sample["y"].movedim(-1, 0)),
                     [{"x": x, "y": y}], resamples, level, seed, batched=True)


def paired_lds_difference(
    first: Tensor, second: Tensor, resamples: int = 1000, level: float = 0.95, seed: int = 0,
) -> Interval:
    """The mean over queries of the difference of two methods' LDS on the same queries, `first` − `second` (each
    `(n_queries,)`, in the same order), with its paired bootstrap interval: each resample draws the same queries for
    both, so what the queries share (an easy query is easy for every method) cancels. Whether two methods differ is
    read from this interval, not from whether their own intervals overlap. Queries undefined for either method are
    left out."""
    if first.shape != second.shape:
        raise ValueError(f"A paired difference needs both methods' LDS on the same queries; got {tuple(first.shape)} "
                         f"and {tuple(second.shape)}.")
    return mean_lds(first - second, resamples, level, seed)  # NaN where either is undefined: left out


def query_losses(model: TextToMusicModel, batch: Batch, draws: int, seed: int) -> Tensor:
    """The behaviour an LDS measures: each query's loss `(n_queries,)` float64, the mean over `draws` (timestep, noise)
    draws fixed by its id (`fixed_loss_inputs`, seeds ``seed .. seed + draws - 1``), so every subset model is measured
    at the same draws; in eval mode, without gradients, on the model's device, its modes and random state left as they
    were (`measuring`).

    Raises:
        NonFiniteLossError: a query's loss is NaN or infinite (the model diverged).
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    device = next(iter(model.parameters())).device
    batch = {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}  # type: ignore[assignment]
    with measuring(model, device):
        total = torch.zeros(len(batch["id"]), dtype=torch.float64, device=device)
        for draw in range(draws):
            total += model.loss(batch, **model.fixed_loss_inputs(list(batch["id"]), seed + draw)).double()
    losses = (total / draws).cpu()
    check_finite(losses, list(batch["id"]), "query loss of an LDS subset model")
    return losses
