"""The maths of attribution's consistency evaluation, as pure torch functions: k-means selection of spread-out training
tracks to unlearn, the self-influence rank and its mean R (1.0 = every unlearned track ranks itself first), the mean
CLAP similarity of the top- and bottom-scored tracks to the target, Spearman and Pearson correlation between two
attributions, and precision@k against known relevance (the toy world's artist labels), as in Choi et al.'s
training-data attribution for music by unlearning (Sony AI, arXiv 2506.18312) after Wang et al. (NeurIPS 2024, arXiv
2406.09408). Ties are never broken by position: where a cut-off (top-k, bottom-k, precision@k) falls inside a group of
equal scores, the result is the expectation over a uniformly random order of that group; the self-influence rank
counts ties against the track (pessimistic) unless asked to average them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def _vector(values: Tensor, name: str, min_length: int = 1) -> Tensor:
    """`values` as a finite float64 vector `(n,)`, or a ValueError naming `name`."""
    if values.dim() != 1 or values.numel() < min_length:
        raise ValueError(f"{name} must be a vector (n,) with at least {min_length} element(s), got shape "
                         f"{tuple(values.shape)}.")
    values = values.detach().to(torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} holds NaN or infinite values; ranks and correlations are undefined for them.")
    return values


def _check_k(k: int, n: int, what: str) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, {n}] (the number of {what}), got {k}.")


def kmeans_select(embeddings: Tensor, k: int, seed: int = 0, max_iterations: int = 100) -> Tensor:
    """`k` distinct rows of `embeddings` spread over its space: k-means (k-means++ initialisation from `seed`, then
    Lloyd iterations until the assignment stops changing), then for each centroid the member nearest to it.

    Args:
        embeddings: `(n, d)` vectors (e.g. L2-normalised CLAP embeddings of the training tracks).
        k: how many rows to select, ``1 <= k <= n``.
        seed: seeds the initialisation; the same inputs and seed give the same selection.
        max_iterations: cap on Lloyd iterations.

    Returns:
        `(k,)` int64 row indices, distinct, in ascending order. A centroid whose nearest row was already taken by an
        earlier centroid (duplicate embeddings) gets its nearest untaken row.
    """
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be (n, d) with n >= 1, got shape {tuple(embeddings.shape)}.")
    points = embeddings.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(points).all():
        raise ValueError("embeddings hold NaN or infinite values; k-means cannot place them.")
    n = points.shape[0]
    _check_k(k, n, "embeddings")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}.")
    generator = torch.Generator().manual_seed(seed)
    # k-means++: each next centre drawn with probability proportional to the squared distance to the nearest centre
    centres = [int(torch.randint(n, (1,), generator=generator))]
    nearest = torch.cdist(points, points[centres]).squeeze(1).square()
    for _ in range(1, k):
        if nearest.sum() > 0:
            index = int(torch.multinomial(nearest, 1, generator=generator))
        else:  # every point coincides with a centre: take the first point not yet a centre
            index = next(i for i in range(n) if i not in centres)
        centres.append(index)
        nearest = torch.minimum(nearest, (points - points[index]).square().sum(dim=1))
    centroids = points[centres].clone()
    assignment = torch.full((n,), -1, dtype=torch.long)
    for _ in range(max_iterations):
        new_assignment = torch.cdist(points, centroids).argmin(dim=1)
        if torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for cluster in range(k):
            members = assignment == cluster
            if members.any():
                centroids[cluster] = points[members].mean(dim=0)
            else:  # an emptied cluster moves to the point farthest from its own centroid
                distances = torch.cdist(points, centroids).gather(1, assignment[:, None]).squeeze(1)
                centroids[cluster] = points[int(distances.argmax())]
    distances = torch.cdist(centroids, points)  # (k, n)
    chosen: list[int] = []
    for cluster in range(k):
        order = torch.argsort(distances[cluster], stable=True)
        chosen.append(next(int(i) for i in order if int(i) not in chosen))
    return torch.tensor(sorted(chosen), dtype=torch.long)


def self_influence_rank(scores: Tensor, query_train_index: Tensor,
                        ties: Literal["pessimistic", "average"] = "pessimistic") -> Tensor:
    """Where each unlearned training track ranks itself among all training tracks (1 = first).

    Args:
        scores: `(n_queries, n_train)` attribution scores, higher = more influential; row q was obtained by unlearning
            training track ``query_train_index[q]``.
        query_train_index: `(n_queries,)` int column of each query's own track.
        ties: "pessimistic" counts every other track with an equal score as ranked above (a constant row gives rank
            n_train, not 1); "average" counts half of them (the expected rank under a random order of ties).

    Returns:
        `(n_queries,)` float64 ranks in ``[1, n_train]``.
    """
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be (n_queries, n_train), got shape {tuple(scores.shape)}.")
    if query_train_index.dim() != 1 or query_train_index.shape[0] != scores.shape[0]:
        raise ValueError(f"query_train_index must be (n_queries,) = ({scores.shape[0]},), got shape "
                         f"{tuple(query_train_index.shape)}.")
    if ties not in ("pessimistic", "average"):
        raise ValueError(f"ties must be 'pessimistic' or 'average', got {ties!r}.")
    index = query_train_index.detach().to(device=scores.device, dtype=torch.long)
    n_train = scores.shape[1]
    if ((index < 0) | (index >= n_train)).any():
        raise ValueError(f"query_train_index must lie in [0, {n_train}), got {index.tolist()}.")
    values = scores.detach().to(torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError("scores hold NaN or infinite values; ranks are undefined for them.")
    own = values.gather(1, index[:, None])  # (n_queries, 1)
    above = (values > own).sum(dim=1).to(torch.float64)
    tied = (values == own).sum(dim=1).to(torch.float64) - 1  # the track itself is not a tie
    weight = 1.0 if ties == "pessimistic" else 0.5
    return (1 + above + weight * tied).cpu()


def mean_self_influence_rank(scores: Tensor, query_train_index: Tensor,
                             ties: Literal["pessimistic", "average"] = "pessimistic") -> float:
    """R: the mean of `self_influence_rank` over the queries (1.0 = each unlearned track ranks itself first)."""
    return float(self_influence_rank(scores, query_train_index, ties).mean())


def _top_k_mean(order_by: Tensor, values: Tensor, k: int) -> float:
    """Mean of `values` over the `k` largest of `order_by`, averaging over random orders of ties at the cut-off."""
    threshold = torch.topk(order_by, k).values[-1]
    above = order_by > threshold
    tied = order_by == threshold
    remaining = k - int(above.sum())
    return float((values[above].sum() + remaining * values[tied].mean()) / k)


def top_bottom_similarity(scores: Tensor, similarity: Tensor, k: int) -> tuple[float, float]:
    """Mean similarity to the target of the `k` highest-scored and of the `k` lowest-scored training tracks.

    Args:
        scores: `(n_train,)` attribution scores of one query.
        similarity: `(n_train,)` e.g. CLAP cosine similarity of each training track to the query.
        k: tracks at each end, ``1 <= k <= n_train`` (the two ends overlap when ``2 k > n_train``).

    Returns:
        ``(top_mean, bottom_mean)``; ties in `scores` at a cut-off contribute their mean similarity.
    """
    scores = _vector(scores, "scores")
    similarity = _vector(similarity, "similarity")
    if scores.shape != similarity.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and similarity {tuple(similarity.shape)} must have the same "
                         "length: one value per training track.")
    _check_k(k, scores.numel(), "training tracks")
    return _top_k_mean(scores, similarity, k), _top_k_mean(-scores, similarity, k)


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks `(n,)` float64 of a vector `(n,)` in ascending order, tied values sharing their mean rank."""
    values = _vector(values, "values")
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    _, counts = torch.unique_consecutive(sorted_values, return_counts=True)
    ends = torch.cumsum(counts, dim=0).to(torch.float64)  # 1-based rank of each group's last member
    group_ranks = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(values)
    ranks[order] = torch.repeat_interleave(group_ranks, counts)
    return ranks


def _pearson(a: Tensor, b: Tensor) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def rank_correlation(a: Tensor, b: Tensor) -> dict[str, float]:
    """Spearman (Pearson of average ranks, ties sharing their mean rank) and Pearson correlation of two scorings of
    the same items, in float64.

    Args:
        a: `(n,)` e.g. the unlearning scores of the training tracks for one query.
        b: `(n,)` e.g. a baseline's similarities of the same tracks, in the same order.

    Returns:
        ``{"spearman": ..., "pearson": ...}``.

    Raises:
        ValueError: the lengths differ, fewer than 2 items, or either input is constant (correlation undefined).
    """
    a = _vector(a, "a", min_length=2)
    b = _vector(b, "b", min_length=2)
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same length: one value per item.")
    for name, values in (("a", a), ("b", b)):
        if bool((values == values[0]).all()):
            raise ValueError(f"{name} is constant; its correlation with anything is undefined.")
    return {"spearman": _pearson(average_ranks(a), average_ranks(b)), "pearson": _pearson(a, b)}


def precision_at_k(scores: Tensor, is_relevant: Tensor, k: int) -> float:
    """Share of the `k` highest-scored items that are relevant (e.g. tracks of the artist a generation was prompted
    with); ties in `scores` at the cut-off count with their share of relevant items.

    Args:
        scores: `(n_train,)` attribution scores of one query.
        is_relevant: `(n_train,)` bool.
        k: ``1 <= k <= n_train``.
    """
    scores = _vector(scores, "scores")
    if is_relevant.dtype != torch.bool or is_relevant.shape != scores.shape:
        raise ValueError(f"is_relevant must be a bool vector shaped like scores {tuple(scores.shape)}, got "
                         f"{is_relevant.dtype} {tuple(is_relevant.shape)}.")
    _check_k(k, scores.numel(), "training tracks")
    return _top_k_mean(scores, is_relevant.to(device=scores.device, dtype=torch.float64), k)
