"""Pure maths of the metrics, free of models and Lightning: Fréchet distance from sufficient statistics, FAD-infinity,
membership-inference AUC, KL divergence of tag distributions, zero-shot classification, the kernel audio distance and
bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

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


def psd_sqrt(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (float64), for `frechet_distance_to_embeddings`."""
    return _psd_sqrt(matrix.double())


def frechet_distance_to_embeddings(mean: Tensor, cov: Tensor, embeddings: Tensor, root: Tensor | None = None
                                   ) -> Tensor:
    """`frechet_distance` of N(mean, cov) from the Gaussian fitted to `embeddings` `(..., n, dim)` (leading dimensions:
    a batch of sets, e.g. bootstrap resamples), given `root`, the square root of `cov` (`psd_sqrt`), computed once for
    many calls against one reference.

    With fewer embeddings than dimensions the trace term comes from the n x n matrix ``A Aᵀ / (n - 1)``,
    ``A = (embeddings - their mean) cov^½``, which has the non-zero eigenvalues of ``cov^½ cov₂ cov^½``: a 64-clip
    resample against a 512-dimensional reference costs a 64 x 64 eigendecomposition, not a 512 x 512 one.
    """
    x = embeddings.double()
    n, dim = x.shape[-2:]
    if n < 2:
        raise ValueError(f"A covariance needs at least 2 samples, got {n}.")
    root = psd_sqrt(cov) if root is None else root.double()
    own_mean = x.mean(-2, keepdim=True)
    centred = x - own_mean
    if n <= dim:
        product = centred @ root
        middle = product @ product.transpose(-1, -2) / (n - 1)
    else:
        middle = root @ (centred.transpose(-1, -2) @ centred / (n - 1)) @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.transpose(-1, -2)) / 2).clamp(min=0).sqrt().sum(-1)
    distance = ((mean.double() - own_mean.squeeze(-2)).square().sum(-1) + cov.double().trace()
                + centred.square().sum((-2, -1)) / (n - 1))
    return (distance - 2 * trace_sqrt).clamp(min=0)


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


def pairwise_membership_auc(member_losses: Tensor, nonmember_losses: Tensor) -> Tensor:
    """`membership_auc` as the mean over every (member, non-member) pair, batched over leading dimensions:
    `(..., m)` and `(..., k)` losses give `(...)` AUCs. O(m k) memory: for bootstrap resamples of evaluation sets, where
    one call replaces a thousand."""
    gap = nonmember_losses.double().unsqueeze(-2) - member_losses.double().unsqueeze(-1)  # (..., m, k)
    return ((gap > 0).double() + 0.5 * (gap == 0).double()).mean((-2, -1))


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


def median_pairwise_distance(embeddings: Tensor) -> Tensor:
    """Median Euclidean distance over all pairs of distinct rows of `embeddings` `(n, dim)`: KAD's bandwidth rule."""
    if len(embeddings) < 2:
        raise ValueError(f"A pairwise distance needs at least 2 embeddings, got {len(embeddings)}.")
    return torch.pdist(embeddings.double()).median()


def kernel_audio_distance(generated: Tensor, reference: Tensor, bandwidth: Tensor | float,
                          generated_pairs: Tensor | None = None, reference_mean: Tensor | None = None) -> Tensor:
    """KAD (kadtk; Chung et al., 2025): the unbiased estimate of the squared maximum mean discrepancy between the
    embedding sets `generated` `(..., m, dim)` (leading dimensions: a batch of sets) and `reference` `(n, dim)` with
    the Gaussian kernel ``exp(-|x - y|² / (2 bandwidth²))``, times 100 as kadtk reports it, in float64.

    Unbiased: the within-set means leave out the diagonal, so its expectation is the population MMD² at any m, n (it
    can be slightly negative when the sets come from one distribution). `generated_pairs` `(..., m, m)` bool, if given,
    names the pairs of generated rows the generated set's kernel mean averages over instead of all distinct ones;
    `reference_mean`, where given, is the reference set's own kernel mean (`kernel_mean`), computed once for many calls.
    """
    x, y = generated.double(), reference.double()
    if x.shape[-2] < 2 or len(y) < 2:
        raise ValueError(f"KAD needs at least 2 generated and 2 reference embeddings, got {x.shape[-2]} and "
                         f"{len(y)}.")
    gamma = 1.0 / (2.0 * torch.as_tensor(bandwidth, dtype=torch.float64) ** 2)
    across = torch.exp(-gamma * torch.cdist(x, y.expand(*x.shape[:-2], *y.shape)).square()).mean((-2, -1))
    reference_mean = kernel_mean(y, bandwidth) if reference_mean is None else reference_mean
    return 100 * (kernel_mean(x, bandwidth, generated_pairs) + reference_mean - 2 * across)


def kernel_mean(embeddings: Tensor, bandwidth: Tensor | float, pairs: Tensor | None = None) -> Tensor:
    """Mean Gaussian kernel over the pairs of distinct rows of `embeddings` `(..., n, dim)`, or over `pairs`
    `(..., n, n)` (NaN where a set has no pair)."""
    z = embeddings.double()
    gamma = 1.0 / (2.0 * torch.as_tensor(bandwidth, dtype=torch.float64) ** 2)
    kernel = torch.exp(-gamma * torch.cdist(z, z).square())
    if pairs is not None:
        return (kernel * pairs).sum((-2, -1)) / pairs.sum((-2, -1))
    n = z.shape[-2]
    return (kernel.sum((-2, -1)) - kernel.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))


Samples = dict[str, Tensor]  # per-item values sharing their first dimension, resampled together


@dataclass(frozen=True)
class Interval:
    """A statistic's value on the measured items, its bootstrap percentile interval and the number of items."""

    value: float
    low: float
    high: float
    n: int

    def excludes(self, point: float = 0.0) -> bool:
        return not self.low <= point <= self.high

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


Statistic = Callable[..., "Tensor | dict[str, Tensor]"]
_CHUNK = 100  # resamples per call of a batched statistic


def bootstrap_replicates(
    statistic: Statistic, samples: Sequence[Samples], resamples: int = 1000, seed: int = 0, batched: bool = False,
) -> tuple[Tensor | dict[str, Tensor], Tensor | dict[str, Tensor]]:
    """``statistic(*samples)`` and its values on `resamples` bootstrap resamples, `(resamples,)` (a dict of both
    where `statistic` returns a dict).

    Each mapping in `samples` holds per-item tensors of one length, drawn with replacement together (a clip's target
    and prediction); different mappings are drawn independently (the members and non-members of a membership test).
    The draws depend only on `seed` and the lengths, so two models measured on the same items get the same draws, and
    the difference of their replicates is the paired bootstrap of their difference. `batched`: `statistic` accepts
    tensors with a leading resample dimension and returns `(resamples,)` values in one call (a mean over the last
    dimension does), instead of one call per resample.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}.")
    lengths = []
    for group in samples:
        sizes = {name: len(values) for name, values in group.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Samples drawn together must have one length each, got {sizes}.")
        lengths.append(next(iter(sizes.values())))
    generator = torch.Generator().manual_seed(seed)
    draws = [torch.randint(n, (resamples, n), generator=generator) for n in lengths]
    value = statistic(*samples)

    def resample(r: slice | int) -> list[Samples]:
        return [{name: values[draw[r].to(values.device)] for name, values in group.items()}
                for group, draw in zip(samples, draws, strict=True)]

    if batched:  # in chunks, so that a batched statistic's intermediates stay small
        chunks = [statistic(*resample(slice(start, start + _CHUNK))) for start in range(0, resamples, _CHUNK)]
        replicates = ({key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
                      if isinstance(chunks[0], dict) else torch.cat(chunks))
    else:
        each = [statistic(*resample(r)) for r in range(resamples)]
        replicates = ({key: torch.stack([one[key] for one in each]) for key in value} if isinstance(value, dict)
                      else torch.stack(each))
    return value, replicates


def centred(value: Tensor | float, replicates: Tensor, minimum: float | None = None) -> Tensor:
    """`replicates` shifted so that their median is `value`: for a statistic that resampling itself biases (a resample
    repeats items), the spread of the replicates around the value, without the shift; clamped at the statistic's
    `minimum` where it has one (FAD: 0)."""
    replicates = replicates.double()
    shifted = replicates - replicates.nanmedian() + float(value)
    return shifted if minimum is None else shifted.clamp(min=minimum)


def percentile_interval(value: Tensor | float, replicates: Tensor, level: float, n: int) -> Interval:
    """The `level` percentile interval of bootstrap `replicates` around `value`, measured on `n` items. Replicates
    that are NaN (a resample on which the statistic is undefined: KAD of a resample holding a single distinct clip)
    are left out."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}.")
    tail = (1 - level) / 2
    low, high = replicates.double().cpu().nanquantile(torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return Interval(float(value), float(low), float(high), n)


def bootstrap(
    statistic: Statistic, samples: Sequence[Samples], resamples: int = 1000, level: float = 0.95, seed: int = 0,
    batched: bool = False, centre: bool = False, minimum: float | None = None,
) -> Interval | dict[str, Interval]:
    """Percentile bootstrap interval of ``statistic(*samples)`` (`bootstrap_replicates`); a dict of intervals where
    `statistic` returns a dict. `n` is the smallest group's length. `centre`: the replicates are `centred` on the value
    (and clamped at `minimum`) first, for a statistic biased by resampling itself, such as FAD."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}.")
    value, replicates = bootstrap_replicates(statistic, samples, resamples, seed, batched)
    n = min(len(next(iter(group.values()))) for group in samples)

    def interval(point: Tensor, draws: Tensor) -> Interval:
        return percentile_interval(point, centred(point, draws, minimum) if centre else draws, level, n)

    if isinstance(value, dict):
        return {key: interval(point, replicates[key]) for key, point in value.items()}
    return interval(value, replicates)
