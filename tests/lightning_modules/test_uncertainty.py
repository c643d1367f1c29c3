"""Bootstrap intervals, KAD and the per-item metrics they rest on: the maths against direct computations, the
intervals' coverage, and the metrics' per-item values in item order whatever the order of updates."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lightning_modules.metrics import (
    AudioEmbedder,
    FrechetAudioDistance,
    KernelAudioDistance,
    Recognition,
)
from lightning_modules.metrics.functional import (
    Interval,
    bootstrap,
    frechet_distance,
    frechet_distance_to_embeddings,
    gaussian_statistics,
    kernel_audio_distance,
    median_pairwise_distance,
    psd_sqrt,
)

DIM = 4


class Identity(AudioEmbedder):
    """Embeddings are given directly in these tests; the embedder only names their width."""

    sample_rate = 8000

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self._dim = dim
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)

    @property
    def name(self) -> str:
        return "identity"

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, waveform):
        return waveform[:, :self._dim].double()


def gaussian(n: int, seed: int, shift: float = 0.0, dim: int = DIM) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


# ------------------------------------------------------------------------------------------------------------- KAD


def test_kad_equals_the_direct_double_sum():
    x, y = gaussian(7, 0, 0.3), gaussian(9, 1)
    bandwidth = median_pairwise_distance(y)
    k = lambda a, b: math.exp(-float((a - b).square().sum()) / (2 * float(bandwidth) ** 2))  # noqa: E731
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(len(x)), 2)) / (len(x) * (len(x) - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(len(y)), 2)) / (len(y) * (len(y) - 1))
    xy = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    assert kernel_audio_distance(x, y, bandwidth).item() == pytest.approx(100 * (xx + yy - 2 * xy), rel=1e-12)
    distances = sorted(float((y[i] - y[j]).norm()) for i, j in itertools.combinations(range(len(y)), 2))
    assert float(bandwidth) == pytest.approx(distances[(len(distances) - 1) // 2], rel=1e-12)  # torch: lower middle


def test_kad_is_unbiased_where_fad_is_not():
    """Generated N(0.3, I) against a fixed reference of 400 draws of N(0, I) in 4 dims. KAD's mean over 300 sets of
    8 clips matches its value on 4,000 clips within 4 standard errors of that mean; FAD's mean over the same small sets
    is far above its large-set value (its bias shrinks as 1/n)."""
    reference = gaussian(400, 0)
    bandwidth = median_pairwise_distance(reference)
    large = gaussian(4000, 1, 0.3)
    target_kad = kernel_audio_distance(large, reference, bandwidth).item()
    small = gaussian(300 * 8, 2, 0.3).reshape(300, 8, DIM)
    kads = torch.stack([kernel_audio_distance(draw, reference, bandwidth) for draw in small])
    assert abs(kads.mean().item() - target_kad) < 4 * kads.std().item() / math.sqrt(len(kads))
    assert target_kad > 4 * kads.std().item() / math.sqrt(len(kads))  # the shift is resolved: the test can fail

    mean, cov = gaussian_statistics(reference.sum(0), reference.T @ reference, len(reference))

    def fad(draw):
        return frechet_distance(mean, cov, *gaussian_statistics(draw.sum(0), draw.T @ draw, len(draw)))

    fads = torch.stack([fad(draw) for draw in small])
    assert fads.mean().item() > 3 * fad(large).item()


def test_kad_metric_matches_the_function_and_fixes_its_bandwidth_by_the_reference():
    reference, generated = gaussian(30, 0), gaussian(12, 1, 0.5)
    metric = KernelAudioDistance(Identity())
    metric.set_reference(reference)
    for part in generated.split([5, 7]):
        metric.update(embeddings=part)
    bandwidth = median_pairwise_distance(reference)
    assert metric.compute().item() == pytest.approx(kernel_audio_distance(generated, reference, bandwidth).item(),
                                                    rel=1e-12)
    with pytest.raises(ValueError, match="identical"):
        metric.set_reference(torch.ones(5, DIM))
    with pytest.raises(ValueError, match="NaN"):
        metric.update(embeddings=torch.full((2, DIM), float("nan")))
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        metric.set_reference(torch.ones(5, DIM + 1))
    unset = KernelAudioDistance(Identity())
    unset.update(embeddings=generated)
    with pytest.raises(ValueError, match="set_reference"):
        unset.compute()


# -------------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_of_a_mean_has_the_normal_width():
    """n = 400 draws of N(0, 1): the 95 % percentile interval of the mean is ±1.96 σ/√n to within 10 %."""
    values = gaussian(400, 3, dim=1)[:, 0]
    interval = bootstrap(lambda s: s["x"].mean(), [{"x": values}], resamples=2000, seed=1)
    assert interval.n == 400 and interval.low < interval.value < interval.high
    assert interval.value == pytest.approx(values.mean().item())
    expected = 2 * 1.96 * values.std().item() / math.sqrt(400)
    assert interval.high - interval.low == pytest.approx(expected, rel=0.10)
    assert bootstrap(lambda s: s["x"].mean(), [{"x": values}], resamples=2000, seed=1) == interval  # seeded


def test_bootstrap_covers_the_true_mean_at_its_level():
    """200 samples of 40 draws of N(0, 1): the 90 % interval holds 0 in 80-97 % of them (binomial 99.9 % range
    around the 88 % that percentile intervals reach at this n)."""
    covered = 0
    for seed in range(200):
        values = gaussian(40, 100 + seed, dim=1)[:, 0]
        interval = bootstrap(lambda s: s["x"].mean(), [{"x": values}], resamples=300, level=0.90, seed=seed)
        covered += not interval.excludes(0.0)
    assert 160 <= covered <= 194


def test_paired_resampling_narrows_a_difference_of_correlated_values():
    """After = before + small noise: drawn together (paired), the difference's interval is far narrower than drawn
    independently, and it excludes 0 for a real shift of 0.05."""
    before = gaussian(100, 4, dim=1)[:, 0]
    after = before + 0.05 + 0.02 * gaussian(100, 5, dim=1)[:, 0]
    paired = bootstrap(lambda s: s["a"].mean() - s["b"].mean(), [{"a": after, "b": before}], seed=0)
    independent = bootstrap(lambda a, b: a["x"].mean() - b["x"].mean(), [{"x": after}, {"x": before}], seed=0)
    assert paired.excludes(0.0) and not independent.excludes(0.0)
    assert (paired.high - paired.low) < 0.1 * (independent.high - independent.low)


def test_bootstrap_of_several_outputs_and_its_errors():
    values = torch.arange(10.0)
    both = bootstrap(lambda s: {"mean": s["x"].mean(), "max": s["x"].max()}, [{"x": values}], resamples=50)
    assert set(both) == {"mean", "max"} and isinstance(both["max"], Interval) and both["max"].high == 9.0
    with pytest.raises(ValueError, match="one length"):
        bootstrap(lambda s: s["x"].mean(), [{"x": values, "y": values[:5]}])
    with pytest.raises(ValueError, match="level"):
        bootstrap(lambda s: s["x"].mean(), [{"x": values}], level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap(lambda s: s["x"].mean(), [{"x": values}], resamples=0)


# -------------------------------------------------------------------------------------------------- per-item metrics


class Labels(nn.Module):
    labels = ["a", "b", "c"]


def test_per_item_values_come_back_in_index_order_whatever_the_update_order():
    tagger = Labels()
    logits = torch.eye(3)[[0, 1, 2, 0, 1, 2, 0, 0]]
    targets = ["a", "b", "b", "a", "c", "c", "a", "b"]
    natural = Recognition(tagger)
    natural.update(targets=targets, logits=logits, index=torch.arange(8))
    shuffled = Recognition(tagger)
    order = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    for part in order.split([3, 5]):  # as two processes' interleaved shares would arrive
        shuffled.update(targets=[targets[i] for i in part], logits=logits[part], index=part)
    assert torch.equal(shuffled.samples()["predicted"], natural.samples()["predicted"])
    assert shuffled.compute().item() == natural.compute().item() == pytest.approx(5 / 8)
    assert shuffled.interval(resamples=200, seed=2) == natural.interval(resamples=200, seed=2)
    with pytest.raises(ValueError, match="indices"):
        natural.update(targets=targets[:2], logits=logits[:2], index=torch.arange(3))


def test_fad_interval_resamples_generated_clips_against_the_fixed_reference_centred_on_the_value():
    """FAD's replicates are biased upwards (a resample of 40 clips holds about 25 distinct ones), so its interval is
    their spread centred on the value (`centred`)."""
    reference, generated = gaussian(200, 0), gaussian(40, 1, 0.4)
    metric = FrechetAudioDistance(Identity())
    metric.update(embeddings=reference, real=True)
    metric.freeze_reference()
    metric.update(embeddings=generated)
    interval = metric.interval(resamples=300, seed=0)
    assert interval.value == pytest.approx(metric.compute().item()) and interval.n == 40
    assert interval.low < interval.value < interval.high
    mean, cov = gaussian_statistics(reference.sum(0), reference.T @ reference, len(reference))

    def fixed_reference(samples):
        draw = samples["x"]
        return frechet_distance(mean, cov, *gaussian_statistics(draw.sum(0), draw.T @ draw, len(draw)))

    direct = bootstrap(fixed_reference, [{"x": generated}], resamples=300, seed=0, centre=True)
    assert (interval.value, interval.low, interval.high) == pytest.approx((direct.value, direct.low, direct.high),
                                                                          rel=1e-9)


@pytest.mark.parametrize("n", [5, 40])  # fewer and more clips than dimensions (16)
def test_frechet_distance_to_embeddings_equals_the_covariance_form(n):
    """With 5 clips the 16 x 16 form has 12 zero eigenvalues that come out as ±1e-16 and ~1e-8 after the square
    root (measured 9e-9 relative here); the 5 x 5 form has none, so the two agree to 1e-7 only."""
    rel = 1e-7 if n < 16 else 1e-9
    reference = gaussian(300, 0, dim=16)
    mean, cov = gaussian_statistics(reference.sum(0), reference.T @ reference, len(reference))
    generated = gaussian(n, 1, 0.2, dim=16)
    expected = frechet_distance(mean, cov, *gaussian_statistics(generated.sum(0), generated.T @ generated, n))
    assert frechet_distance_to_embeddings(mean, cov, generated).item() == pytest.approx(expected.item(), rel=rel)
    assert frechet_distance_to_embeddings(mean, cov, generated, psd_sqrt(cov)).item() == pytest.approx(
        expected.item(), rel=rel)


def test_batched_statistics_give_the_resample_loop_values():
    """The metrics that declare batched_statistic give, in one call, the replicates one call per resample gives."""
    from lightning_modules.metrics import CLAPScore, Memorization, TagKLDivergence
    from lightning_modules.metrics.functional import bootstrap_replicates

    generator = torch.Generator().manual_seed(0)
    cases = {
        Recognition(Labels()): {"target": torch.randint(3, (20,), generator=generator),
                                "predicted": torch.randint(3, (20,), generator=generator)},
        CLAPScore(Identity()): {"similarity": torch.rand(20, generator=generator, dtype=torch.float64)},
        TagKLDivergence(Labels()): {"kl": torch.rand(20, generator=generator, dtype=torch.float64)},
        Memorization(Identity(), threshold=0.5): {"highest": torch.rand(20, generator=generator,
                                                                        dtype=torch.float64)},
    }
    for metric, samples in cases.items():
        assert metric.batched_statistic
        _, looped = bootstrap_replicates(metric.statistic, [samples], resamples=50, seed=4)
        _, batched = bootstrap_replicates(metric.statistic, [samples], resamples=50, seed=4, batched=True)
        for key in looped if isinstance(looped, dict) else [None]:
            one, many = (looped[key], batched[key]) if key else (looped, batched)
            torch.testing.assert_close(many, one, rtol=1e-12, atol=1e-12)


def test_kad_leaves_a_clip_and_its_own_copy_out_of_a_resample():
    """A resample that repeats every clip twice has the KAD of the clips themselves: the pairs of a clip with its copy
    are left out, every other pair counts as often as in the original."""
    reference, generated = gaussian(30, 0), gaussian(8, 1, 0.5)
    metric = KernelAudioDistance(Identity())
    metric.set_reference(reference)
    metric.update(embeddings=generated, index=torch.arange(8))
    doubled = {"embedding": generated.repeat_interleave(2, 0), "index": torch.arange(8).repeat_interleave(2)}
    assert metric.statistic(doubled).item() == pytest.approx(metric.compute().item(), rel=1e-12)
    naive = {"embedding": doubled["embedding"]}  # without the items' identity every copy pairs with its clip
    assert metric.statistic(naive).item() > metric.compute().item() + 1


def test_kad_replicates_are_centred_on_the_value_and_fad_replicates_are_not():
    """16 clips in 4 dimensions against 200 reference draws, 400 resamples: KAD's replicates average within 0.25 of
    their own standard deviation of the value (measured 0.05); FAD's sit above it by more than half of theirs
    (measured 1.03)."""
    from lightning_modules.metrics.functional import bootstrap_replicates

    reference, generated = gaussian(200, 0), gaussian(16, 1, 0.3)
    kad, fad = KernelAudioDistance(Identity()), FrechetAudioDistance(Identity())
    kad.set_reference(reference)
    fad.update(embeddings=reference, real=True)
    fad.freeze_reference()
    for metric in (kad, fad):
        metric.update(embeddings=generated, index=torch.arange(16))
    value, replicates = bootstrap_replicates(kad.statistic, [kad.samples()], 400, 0)
    assert abs(replicates.mean() - value) < 0.25 * replicates.std()
    value, replicates = bootstrap_replicates(fad.statistic, [fad.samples()], 400, 0)
    assert replicates.mean() - value > 0.5 * replicates.std()


def test_a_resample_of_one_distinct_clip_is_left_out_of_the_interval():
    from lightning_modules.metrics.functional import percentile_interval

    metric = KernelAudioDistance(Identity())
    metric.set_reference(gaussian(30, 0))
    one = {"embedding": gaussian(1, 1).repeat(3, 1), "index": torch.zeros(3, dtype=torch.long)}
    assert metric.statistic(one).isnan()
    replicates = torch.tensor([float("nan"), 1.0, 2.0, 3.0], dtype=torch.float64)
    assert percentile_interval(2.0, replicates, 0.5, 3) == Interval(2.0, 1.5, 2.5, 3)


def test_fad_interval_never_goes_below_zero():
    """Generated and reference clips from one distribution: FAD is near 0 and its centred replicates would spread
    below it; FAD is never negative, so they are clamped there."""
    from lightning_modules.metrics.functional import bootstrap_replicates, centred

    metric = FrechetAudioDistance(Identity())
    metric.update(embeddings=gaussian(2000, 0), real=True)
    metric.freeze_reference()
    metric.update(embeddings=gaussian(50, 1), index=torch.arange(50))  # FAD 0.219; the lowest centred draw -0.054
    value, replicates = bootstrap_replicates(metric.statistic, [metric.samples()], 300, 0)
    assert centred(value, replicates).min() < 0  # the case the clamp is for
    assert metric.interval(resamples=300).low >= 0.0


@pytest.mark.parametrize("frames", [None, 3])  # clip-level embeddings, and three frames per clip
def test_fad_and_kad_take_a_batch_of_resamples_in_one_call(frames):
    from lightning_modules.metrics.functional import bootstrap_replicates

    reference = gaussian(60, 0)
    generated = gaussian(10 * (frames or 1), 1, 0.4).reshape(10, *([frames] if frames else []), DIM)
    fad, kad = FrechetAudioDistance(Identity()), KernelAudioDistance(Identity())
    fad.update(embeddings=reference, real=True)
    fad.freeze_reference()
    kad.set_reference(reference)
    for metric in (fad, kad):
        metric.update(embeddings=generated, index=torch.arange(10))
        assert metric.batched_statistic
        _, looped = bootstrap_replicates(metric.statistic, [metric.samples()], resamples=250, seed=4)
        _, batched = bootstrap_replicates(metric.statistic, [metric.samples()], resamples=250, seed=4, batched=True)
        torch.testing.assert_close(batched, looped, rtol=1e-9, atol=1e-12, equal_nan=True)
