"""Pure maths of the metrics, free of models and Lightning: Fréchet distance from sufficient statistics, FAD-infinity,
membership-inference AUC, KL divergence of tag distributions and zero-shot classification."""

from __future__ import annotations

import torch
from torch import Tensor


def gaussian_statistics(total: Tensor, outer_total: Tensor, count: Tensor | int) -> tuple[Tensor, Tensor]:
    """Mean `(dim,)` and unbiased covariance `(dim, dim)` from the sums of `x` and of `x xᵀ` over `count` samples."""
    count = float(count)
    if count < 2:
        raise ValueError(f"A covariance needs at least 2 samples, got {count:.0f}.")
    mean = total / count
    covariance = (outer_total - count * torch.outer(mean, mean)) / (count - 1)
    return mean, covariance


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix, negative rounding-error eigenvalues clamped to 0."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> Tensor:
    """Fréchet distance between the Gaussians N(mean1, cov1) and N(mean2, cov2), in float64.

    ``|mean1 - mean2|² + tr(cov1) + tr(cov2) - 2 tr((cov1^½ cov2 cov1^½)^½)``. The trace of the matrix square root
    comes from the eigenvalues of the symmetric PSD matrix ``cov1^½ cov2 cov1^½`` (which has the eigenvalues of
    ``cov1 cov2``), clamped at zero, so near-singular covariances (fewer samples than dimensions) need no ``eps``
    jitter and the result never turns complex, unlike ``scipy.linalg.sqrtm``.
    """
    mean1, cov1, mean2, cov2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return distance.clamp(min=0)


def frechet_distance_infinity(
    mean: Tensor, cov: Tensor, embeddings: Tensor, num_points: int = 15, min_samples: int = 500,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """FAD-infinity (Gui et al. 2024, as fadtk computes it): the Fréchet distance extrapolated to infinite samples.

    The distance of `num_points` random subsets of `embeddings` `(n, dim)`, of sizes from `min_samples` (at most
    ``n // 2``) to ``n``, against the reference N(mean, cov) is fitted by least squares as ``a + b / size``; `a` is
    FAD-infinity. Returns `(a, r2)`, the intercept and the fit's coefficient of determination.
    """
    embeddings = embeddings.double()
    n = len(embeddings)
    if n < 4:
        raise ValueError(f"FAD-infinity needs at least 4 embeddings, got {n}.")
    low = max(2, min(min_samples, n // 2))
    sizes = torch.linspace(low, n, num_points).round().long().unique()
    distances = []
    for size in sizes.tolist():
        subset = embeddings[torch.randperm(n, generator=generator)[:size]]
        sub_mean, sub_cov = gaussian_statistics(subset.sum(0), subset.T @ subset, size)
        distances.append(frechet_distance(mean, cov, sub_mean, sub_cov))
    y = torch.stack(distances)
    x = torch.stack([torch.ones_like(y), 1.0 / sizes.double()], dim=1)
    solution = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    residual = (y - x @ solution).square().sum()
    total = (y - y.mean()).square().sum()
    r2 = 1 - residual / total if total > 0 else torch.ones((), dtype=torch.float64)
    return solution[0], r2


def membership_auc(member_losses: Tensor, nonmember_losses: Tensor) -> float:
    """AUC of the loss-threshold membership attack: the probability that a random member has a lower loss than a random
    non-member (ties count one half). 0.5: members look like unseen data; 1.0: members are perfectly separable.

    The Mann-Whitney U statistic over tie-averaged ranks, exact in float64 for losses of any scale.
    """
    if len(member_losses) == 0 or len(nonmember_losses) == 0:
        raise ValueError(f"Membership AUC needs members and non-members, got {len(member_losses)} and "
                         f"{len(nonmember_losses)}.")
    losses = torch.cat([member_losses, nonmember_losses]).double()
    _, inverse, counts = torch.unique(-losses, return_inverse=True, return_counts=True)  # ascending member-likeness
    mean_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2  # 1-based rank of each distinct value
    m, n = len(member_losses), len(nonmember_losses)
    u = mean_rank[inverse[:m]].sum() - m * (m + 1) / 2
    return (u / (m * n)).item()


def kl_divergence(reference_logits: Tensor, generated_logits: Tensor) -> Tensor:
    """Per-pair KL(reference ‖ generated) of softmax tag distributions, `(batch,)` in nats (AudioLDM's KL_softmax)."""
    reference = reference_logits.double().log_softmax(dim=-1)
    generated = generated_logits.double().log_softmax(dim=-1)
    return (reference.exp() * (reference - generated)).sum(dim=-1)


def zero_shot_predictions(audio_embeddings: Tensor, class_embeddings: Tensor) -> Tensor:
    """Index of the closest class text embedding for each audio embedding (both L2-normalised): `(batch,)`."""
    return (audio_embeddings @ class_embeddings.T).argmax(dim=-1)


def per_class_accuracy(predictions: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Accuracy within each true class, `(num_classes,)`; NaN for a class with no item."""
    correct = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, targets, (predictions == targets).double())
    counts = torch.bincount(targets, minlength=num_classes).double()
    return correct / counts
