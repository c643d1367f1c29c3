"""The metrics and their maths: Fréchet distance against scipy and closed forms, FAD's states, reference handling and
resampling, CLAP score, recognition, zero-shot tagging, the feature tagger, memorisation, tag KL and membership AUC.

Most tests use `ProjectionEmbedder`, a fixed random linear map of a clip's first samples at 8 kHz, so their expected
values can be computed by hand; the CLAP tests use the tiny random CLAP of `tiny_clap_dir`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torchaudio
from torch import nn

from datamodules import read_manifest
from datamodules.audio import AudioTextDataset
from lightning_modules.io import CorruptFileError, digest_path
from lightning_modules.metrics import (
    AudioTagger,
    ClapEmbedder,
    CLAPScore,
    FrechetAudioDistance,
    Memorization,
    Recognition,
    TagKLDivergence,
    ZeroShotTagger,
)
from lightning_modules.metrics.embedder import embed_or_given
from lightning_modules.metrics.fad import reference_key
from lightning_modules.metrics.feature_tagger import FeatureTagger, add_white_noise
from lightning_modules.metrics.functional import (
    frechet_distance,
    frechet_distance_infinity,
    gaussian_statistics,
    kl_divergence,
    membership_auc,
    per_class_accuracy,
    zero_shot_predictions,
)
from tests.lightning_modules.embedders import DIM, RATE, WINDOW, ProjectionEmbedder


class FrameEmbedder(ProjectionEmbedder):
    """Frame-level variant: `(batch, FRAMES, dim)`, frame f projecting samples [f·WINDOW, (f+1)·WINDOW)."""

    FRAMES = 3

    def embed(self, waveform):
        frames = waveform[:, :self.FRAMES * WINDOW].double().reshape(len(waveform), self.FRAMES, WINDOW)
        return frames @ self.weight


class IndexTagger(AudioTagger):
    """Test tagger over labels a, b, c: the predicted class is the clip's first sample rounded; logits one-hot × 5
    plus the clip's next three samples (so the softmax distributions differ from clip to clip)."""

    sample_rate = RATE
    labels = ["a", "b", "c"]

    @property
    def name(self):
        return "index-tagger"

    def embed(self, waveform):
        index = waveform[:, 0].round().long()
        return 5.0 * nn.functional.one_hot(index, len(self.labels)).double() + waveform[:, 1:4].double()


def clips(seed, batch=40, samples=256, shift=0.0):
    """Seeded white-noise clips `(batch, samples)` at RATE, plus `shift`."""
    generator = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(batch, samples, generator=generator) + shift


def random_gaussian(dim, seed, samples=None):
    """A well-conditioned random mean and covariance (float64)."""
    generator = torch.Generator().manual_seed(seed)
    samples = samples or 4 * dim
    x = torch.randn(samples, dim, generator=generator, dtype=torch.float64)
    return torch.randn(dim, generator=generator, dtype=torch.float64), x.T @ x / samples + 0.5 * torch.eye(dim)


def scipy_frechet(mean1, cov1, mean2, cov2):
    """The classic formula (Heusel et al., as pytorch-fid computes it) with scipy's sqrtm."""
    mean1, cov1, mean2, cov2 = (t.numpy() for t in (mean1, cov1, mean2, cov2))
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    diff = mean1 - mean2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean).real)


def embedding_statistics(embeddings):
    """Mean and covariance of `(n, dim)` embeddings with torch's own routines."""
    embeddings = embeddings.double()
    return embeddings.mean(0), torch.cov(embeddings.T)


def fad(embedder, real, fake, sample_rate=RATE):
    metric = FrechetAudioDistance(embedder)
    metric.update(real, sample_rate, real=True)
    metric.update(fake, sample_rate)
    return metric.compute()


@pytest.fixture(scope="module")
def clap(tiny_clap_dir):
    return ClapEmbedder(tiny_clap_dir)


# ---------------------------------------------------------------------------------------------------------- functional


@pytest.mark.parametrize("dim", [8, 64])
def test_frechet_distance_matches_scipy_sqrtm(dim):
    first, second = random_gaussian(dim, 1), random_gaussian(dim, 2)
    expected = scipy_frechet(*first, *second)
    assert frechet_distance(*first, *second).item() == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_is_float64_and_accepts_float32():
    first, second = random_gaussian(8, 1), random_gaussian(8, 2)
    result = frechet_distance(*(t.float() for t in (*first, *second)))
    assert result.dtype == torch.float64 and result.dim() == 0
    assert result.item() == pytest.approx(frechet_distance(*first, *second).item(), rel=1e-5)


@pytest.mark.parametrize("dim", [8, 64])
def test_frechet_distance_of_identical_statistics_is_zero(dim):
    mean, cov = random_gaussian(dim, 3)
    assert 0 <= frechet_distance(mean, cov, mean, cov).item() <= 1e-8


def test_frechet_distance_is_symmetric():
    first, second = random_gaussian(16, 4), random_gaussian(16, 5)
    assert frechet_distance(*first, *second).item() == pytest.approx(frechet_distance(*second, *first).item(),
                                                                     rel=1e-10)


def test_frechet_distance_of_rank_deficient_covariances():
    """5 samples in 16 dimensions: the covariances have rank 4. The trace term is then the nuclear norm of the
    centred data's cross product, ``tr((C1^½ C2 C1^½)^½) = ‖X2 X1ᵀ‖_* / √((n1-1)(n2-1))``, an exact reference."""
    dim, n = 16, 5
    generator = torch.Generator().manual_seed(6)
    x1 = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    x2 = torch.randn(n, dim, generator=generator, dtype=torch.float64) + 0.5
    (mean1, cov1), (mean2, cov2) = embedding_statistics(x1), embedding_statistics(x2)
    assert torch.linalg.matrix_rank(cov1) == n - 1
    result = frechet_distance(mean1, cov1, mean2, cov2)
    assert torch.isfinite(result) and not result.is_complex() and result >= 0
    centred1, centred2 = x1 - mean1, x2 - mean2
    trace_sqrt = torch.linalg.matrix_norm(centred2 @ centred1.T, ord="nuc") / (n - 1)
    expected = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    assert result.item() == pytest.approx(expected.item(), rel=1e-8)
    assert frechet_distance(mean2, cov2, mean1, cov1).item() == pytest.approx(expected.item(), rel=1e-8)


def test_frechet_distance_of_one_rank_deficient_set_with_itself_is_zero():
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    mean, cov = embedding_statistics(x)
    assert 0 <= frechet_distance(mean, cov, mean, cov).item() <= 1e-8


def test_frechet_distance_closed_form_for_diagonal_covariances():
    dim = 10
    shift = torch.linspace(-1, 2, dim, dtype=torch.float64)
    eye = torch.eye(dim, dtype=torch.float64)
    expected = shift.square().sum().item() + dim * (1 + 4 - 2 * 2)
    assert frechet_distance(torch.zeros(dim), eye, shift, 4 * eye).item() == pytest.approx(expected, rel=1e-10)
    # general diagonal: sum (sqrt(a) - sqrt(b))²
    a, b = torch.rand(dim, dtype=torch.float64) + 0.1, torch.rand(dim, dtype=torch.float64) + 0.1
    expected = (a.sqrt() - b.sqrt()).square().sum().item()
    assert frechet_distance(torch.zeros(dim), a.diag(), torch.zeros(dim), b.diag()).item() == pytest.approx(
        expected, rel=1e-9)


def test_gaussian_statistics_match_torch_cov():
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 3 + 1
    mean, cov = gaussian_statistics(x.sum(0), x.T @ x, len(x))
    expected_mean, expected_cov = embedding_statistics(x)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, expected_cov, rtol=1e-10, atol=1e-10)
    # the count may be a tensor (a metric state)
    _, cov_from_tensor = gaussian_statistics(x.sum(0), x.T @ x, torch.tensor(30.0, dtype=torch.float64))
    torch.testing.assert_close(cov_from_tensor, expected_cov, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("count", [0, 1, torch.tensor(1.0)])
def test_gaussian_statistics_need_two_samples(count):
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_statistics(torch.zeros(3), torch.zeros(3, 3), count)


def test_frechet_distance_infinity_needs_four_embeddings():
    mean, cov = random_gaussian(4, 9)
    with pytest.raises(ValueError, match="at least 4"):
        frechet_distance_infinity(mean, cov, torch.randn(3, 4))


def test_membership_auc_extremes_and_ties():
    members, nonmembers = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5])
    assert membership_auc(members, nonmembers) == 1.0
    assert membership_auc(nonmembers, members) == 0.0
    same = torch.tensor([0.7, 0.7, 0.7])
    assert membership_auc(same, same) == pytest.approx(0.5)
    # one tie among four pairs counts one half: (1 + 1 + 1 + 0.5) / 4
    assert membership_auc(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 3.0])) == pytest.approx(3.5 / 4)


def brute_force_auc(members, nonmembers):
    pairs = members.unsqueeze(1) - nonmembers.unsqueeze(0)
    return ((pairs < 0).double().sum() + 0.5 * (pairs == 0).double().sum()).item() / pairs.numel()


def test_membership_auc_equals_pairwise_count():
    generator = torch.Generator().manual_seed(10)
    # rounded to one decimal so that ties occur; members shifted lower
    members = (torch.rand(37, generator=generator) * 2).round(decimals=1)
    nonmembers = (torch.rand(23, generator=generator) * 2 + 0.4).round(decimals=1)
    expected = brute_force_auc(members, nonmembers)
    assert 0.5 < expected < 1.0
    assert membership_auc(members, nonmembers) == pytest.approx(expected, abs=1e-12)
    identical = torch.rand(50, generator=generator)
    assert membership_auc(identical, identical.flip(0)) == pytest.approx(0.5, abs=1e-12)


def test_pairwise_membership_auc_is_membership_auc_batched():
    from lightning_modules.metrics.functional import pairwise_membership_auc

    generator = torch.Generator().manual_seed(5)
    members = torch.randint(0, 6, (3, 7), generator=generator).double()  # ties, within and across the sets
    nonmembers = torch.randint(0, 6, (3, 9), generator=generator).double()
    batched = pairwise_membership_auc(members, nonmembers)
    assert batched.shape == (3,)
    for row in range(3):
        assert batched[row].item() == pytest.approx(membership_auc(members[row], nonmembers[row]), abs=1e-12)


def test_membership_auc_of_large_or_negative_losses():
    assert membership_auc(torch.tensor([800.0, 900.0]), torch.tensor([1000.0, 1100.0])) == 1.0
    assert membership_auc(torch.tensor([-100.0, -90.0]), torch.tensor([-50.0, -40.0])) == 1.0


@pytest.mark.parametrize("members, nonmembers", [([], [1.0]), ([1.0], [])])
def test_membership_auc_needs_both_sides(members, nonmembers):
    with pytest.raises(ValueError, match="members and non-members"):
        membership_auc(torch.tensor(members), torch.tensor(nonmembers))


def test_kl_divergence_matches_torch_distributions():
    generator = torch.Generator().manual_seed(11)
    reference, generated = torch.randn(2, 6, 5, generator=generator)
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=reference.double()),
                                                 torch.distributions.Categorical(logits=generated.double()))
    result = kl_divergence(reference, generated)
    assert result.shape == (6,) and result.dtype == torch.float64
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-12)
    assert (result > 0).all()
    torch.testing.assert_close(kl_divergence(reference, reference), torch.zeros(6, dtype=torch.float64))
    # invariant to a constant added to the logits (softmax)
    shifted = kl_divergence(reference.double() + 3, generated.double() - 2)
    torch.testing.assert_close(shifted, expected, rtol=1e-10, atol=1e-12)


def test_zero_shot_predictions_and_per_class_accuracy():
    classes = torch.eye(3)
    audio = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0], [0.1, 0, 1], [0, 1, 0.9], [0.3, 0.9, 0]]), dim=1)
    predictions = zero_shot_predictions(audio, classes)
    assert predictions.tolist() == [0, 2, 1, 1]
    accuracy = per_class_accuracy(predictions, torch.tensor([0, 2, 2, 1]), num_classes=4)
    assert accuracy[:3].tolist() == [1.0, 1.0, 0.5] and math.isnan(accuracy[3])


# ----------------------------------------------------------------------------------------------------------- embedders


def test_embed_or_given():
    embedder = ProjectionEmbedder()
    audio, embeddings = clips(0, batch=2), torch.ones(2, DIM)
    with pytest.raises(ValueError, match="not both or neither"):
        embed_or_given(embedder, audio, RATE, embeddings)
    with pytest.raises(ValueError, match="not both or neither"):
        embed_or_given(embedder, None, RATE, None)
    with pytest.raises(ValueError, match="sample_rate"):
        embed_or_given(embedder, audio, None, None)
    assert embed_or_given(embedder, None, None, embeddings) is embeddings
    torch.testing.assert_close(embed_or_given(embedder, audio, RATE, None), embedder.embed(audio))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_embedder_rejects_non_finite_audio(bad):
    audio = clips(0, batch=2)
    audio[1, 5] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        ProjectionEmbedder()(audio, RATE)


@pytest.mark.parametrize("shape", [(100,), (2, 1), (1, 2, 3, 100)])
def test_embedder_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="Expected audio of shape"):
        ProjectionEmbedder()(torch.zeros(shape), RATE)


def test_embedder_downmixes_channels():
    embedder = ProjectionEmbedder()
    stereo = torch.stack([clips(1, batch=3), clips(2, batch=3)], dim=1)  # (batch, channels, samples)
    result = embedder(stereo, RATE)
    assert result.shape == (3, DIM)
    torch.testing.assert_close(result, embedder(stereo.mean(dim=1), RATE))
    assert not torch.allclose(result, embedder(stereo[:, 0], RATE))


def test_embedder_resamples_to_its_rate():
    embedder = ProjectionEmbedder()
    audio = clips(3, batch=4, samples=512)
    resampled = torchaudio.functional.resample(audio, 16000, RATE)
    torch.testing.assert_close(embedder(audio, 16000), embedder(resampled, RATE), rtol=0, atol=0)
    assert not torch.allclose(embedder(audio, 16000), embedder(audio, RATE))


def test_embedder_stays_in_eval_mode():
    embedder = ProjectionEmbedder()
    embedder.train()
    assert not embedder.training and not embedder.dropout.training
    metric = FrechetAudioDistance(embedder)
    metric.train()
    assert not embedder.training and not embedder.dropout.training
    assert not any(parameter.requires_grad for parameter in embedder.parameters())


# ----------------------------------------------------------------------------------------------------------------- FAD


def test_fad_of_a_set_with_itself_is_zero():
    audio = clips(0)
    assert 0 <= fad(ProjectionEmbedder(), audio, audio).item() <= 1e-8


def test_fad_equals_frechet_distance_of_the_embeddings():
    embedder = ProjectionEmbedder()
    real, fake = clips(0), clips(1, shift=0.2)
    expected = frechet_distance(*embedding_statistics(embedder.embed(real)),
                                *embedding_statistics(embedder.embed(fake)))
    result = fad(embedder, real, fake)
    assert result.dtype == torch.float64
    assert result.item() == pytest.approx(expected.item(), rel=1e-9)


def test_fad_grows_with_the_shift_of_the_generated_set():
    embedder = ProjectionEmbedder()
    real = clips(0, batch=200)
    values = [fad(embedder, real, clips(1, batch=200, shift=shift)).item() for shift in (0.0, 0.1, 0.3, 1.0)]
    assert values[0] < values[1] / 2 < values[2] / 4 < values[3] / 40


def test_fad_does_not_depend_on_batching():
    embedder = ProjectionEmbedder()
    real, fake = clips(0), clips(1, shift=0.2)
    whole = fad(embedder, real, fake)
    metric = FrechetAudioDistance(embedder)
    for part in real.split([5, 17, 18]):
        metric.update(part, RATE, real=True)
    for part in fake.split([1, 30, 9]):  # a batch of one clip too
        metric.update(part, RATE)
    assert metric.real_count.item() == len(real) and len(metric.samples()["embedding"]) == len(fake)
    assert metric.compute().item() == pytest.approx(whole.item(), rel=1e-12)


def test_fad_pools_frame_level_embeddings_as_samples():
    embedder = FrameEmbedder()
    real, fake = clips(0, batch=10), clips(1, batch=12, shift=0.2)
    metric = FrechetAudioDistance(embedder)
    metric.update(real, RATE, real=True)
    metric.update(fake, RATE)
    assert metric.real_count.item() == 10 * FrameEmbedder.FRAMES
    assert metric.samples()["embedding"].shape == (12, FrameEmbedder.FRAMES, DIM)  # a clip per item
    real_frames = embedder.embed(real).reshape(-1, DIM)
    fake_frames = embedder.embed(fake).reshape(-1, DIM)
    expected = frechet_distance(*embedding_statistics(real_frames), *embedding_statistics(fake_frames))
    assert metric.compute().item() == pytest.approx(expected.item(), rel=1e-9)
    # precomputed frame embeddings, 3-d or flattened, give the same value
    for shape in ((-1, FrameEmbedder.FRAMES, DIM), (-1, DIM)):
        given = FrechetAudioDistance(embedder)
        given.update(embeddings=real_frames.reshape(shape), real=True)
        given.update(embeddings=fake_frames.reshape(shape))
        assert given.compute().item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("real_clips, fake_clips, what", [(0, 0, "seen no item"), (1, 5, "at least 2 reference"),
                                                          (5, 1, "at least 2 generated"), (5, 0, "seen no item")])
@pytest.mark.filterwarnings("ignore:The ``compute`` method.*before the ``update``")
def test_fad_needs_two_embeddings_on_each_side(real_clips, fake_clips, what):
    metric = FrechetAudioDistance(ProjectionEmbedder())
    if real_clips:
        metric.update(clips(0, batch=real_clips), RATE, real=True)
    if fake_clips:
        metric.update(clips(1, batch=fake_clips), RATE)
    with pytest.raises(ValueError, match=what):
        metric.compute()


def test_fad_rejects_wrong_width_and_non_finite_embeddings():
    metric = FrechetAudioDistance(ProjectionEmbedder())
    with pytest.raises(ValueError, match="width"):
        metric.update(embeddings=torch.zeros(4, DIM + 1))
    with pytest.raises(ValueError, match="NaN or infinite"):
        metric.update(embeddings=torch.full((4, DIM), float("nan")))


def test_fad_frozen_reference_survives_reset():
    embedder = ProjectionEmbedder()
    real, fake, other = clips(0), clips(1, shift=0.2), clips(2, shift=0.5)
    metric = FrechetAudioDistance(embedder)
    metric.update(real, RATE, real=True)
    metric.update(fake, RATE)
    stats = metric.freeze_reference()
    assert metric.has_reference and stats["count"].item() == len(real)
    torch.testing.assert_close(stats["sum"], embedder.embed(real).sum(0))
    assert metric.compute().item() == pytest.approx(fad(embedder, real, fake).item(), rel=1e-12)
    metric.reset()
    assert metric.has_reference and metric.index == []
    metric.update(other, RATE)
    assert metric.compute().item() == pytest.approx(fad(embedder, real, other).item(), rel=1e-12)
    with pytest.raises(ValueError, match="frozen"):
        metric.update(real, RATE, real=True)
    metric.clear_reference()
    assert not metric.has_reference
    metric.update(real[:3], RATE, real=True)  # allowed again, and counted from zero
    assert metric.real_count.item() == 3


def test_fad_reference_round_trip(tmp_path):
    embedder = ProjectionEmbedder()
    real, fake = clips(0), clips(1, shift=0.2)
    metric = FrechetAudioDistance(embedder)
    with pytest.raises(ValueError, match="No reference"):
        metric.save_reference(tmp_path / "none.pt")
    metric.update(real, RATE, real=True)
    metric.freeze_reference()
    path = tmp_path / "refs" / "reference.pt"
    metric.save_reference(path)
    assert sorted(path.parent.iterdir()) == [path, digest_path(path)]  # the file, its digest, no temporary file
    fresh = FrechetAudioDistance(ProjectionEmbedder())
    fresh.load_reference(path)
    fresh.update(fake, RATE)
    assert fresh.compute().item() == pytest.approx(fad(embedder, real, fake).item(), rel=1e-12)
    with pytest.raises(ValueError, match="frozen or loaded"):
        fresh.update(real, RATE, real=True)
    other = FrechetAudioDistance(ProjectionEmbedder(label="other"))
    with pytest.raises(ValueError, match="projection-8") as error:
        other.load_reference(path)
    assert "other-8" in str(error.value)


def test_a_bad_fad_reference_file_is_refused_by_name(tmp_path):
    metric = FrechetAudioDistance(ProjectionEmbedder())
    metric.update(clips(0), RATE, real=True)
    stats = metric.freeze_reference()
    path = tmp_path / "reference.pt"
    metric.save_reference(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="reference.pt \\(FAD reference statistics\\) does not match"):
        FrechetAudioDistance(ProjectionEmbedder()).load_reference(path)
    metric.set_reference({**stats, "outer_sum": stats["outer_sum"] * float("inf")})
    metric.save_reference(path)  # well formed, with its digest, but not finite
    with pytest.raises(CorruptFileError, match="'outer_sum'.*infinite") as error:
        FrechetAudioDistance(ProjectionEmbedder()).load_reference(path)
    assert "weights_only" not in str(error.value)


def test_fad_set_reference_validates():
    metric = FrechetAudioDistance(ProjectionEmbedder())
    with pytest.raises(ValueError, match="lack"):
        metric.set_reference({"sum": torch.zeros(DIM), "count": torch.tensor(3.0)})
    with pytest.raises(ValueError, match="width"):
        metric.set_reference({"sum": torch.zeros(3), "outer_sum": torch.eye(3), "count": torch.tensor(3.0)})


def test_fad_compute_follows_a_new_reference():
    embedder = ProjectionEmbedder()
    real, other_real, fake = clips(0), clips(2, shift=0.5), clips(1, shift=0.2)
    metric = FrechetAudioDistance(embedder)
    metric.update(real, RATE, real=True)
    metric.update(fake, RATE)
    first = metric.compute().item()
    other = FrechetAudioDistance(embedder)
    other.update(other_real, RATE, real=True)
    metric.set_reference(other.freeze_reference())
    expected = fad(embedder, other_real, fake).item()
    assert expected != pytest.approx(first)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-12)


def test_reference_key():
    embedder = ProjectionEmbedder()
    description = {"items": ["a.wav", "b.wav"], "crop": 4.0}
    key = reference_key(embedder, 16000, description)
    assert len(key) == 24 and all(c in "0123456789abcdef" for c in key)
    assert reference_key(ProjectionEmbedder(), 16000, dict(reversed(description.items()))) == key
    changed = [reference_key(ProjectionEmbedder(label="other"), 16000, description),
               reference_key(embedder, 22050, description),
               reference_key(embedder, 16000, {"items": ["a.wav", "c.wav"], "crop": 4.0})]
    assert len({key, *changed}) == 4


def test_fad_resamples_audio_to_the_embedder_rate():
    embedder = ProjectionEmbedder()
    real, fake = clips(0, samples=512), clips(1, samples=512, shift=0.2)
    at_16k = fad(embedder, real, fake, sample_rate=16000)
    resampled = [torchaudio.functional.resample(audio, 16000, RATE) for audio in (real, fake)]
    assert at_16k.item() == pytest.approx(fad(embedder, *resampled).item(), rel=1e-12)
    assert at_16k.item() != pytest.approx(fad(embedder, real, fake).item(), rel=1e-3)  # i.e. it did resample


def test_fad_infinity_extrapolates_below_the_biased_fad():
    """Generated N(0.5, I) against the exact reference N(0, I) in 16 dims: the plain FAD of 200 samples is biased
    upwards; the extrapolated intercept is below it. compute_infinity is frechet_distance_infinity on the metric's
    reference and kept embeddings."""
    dim, n = 16, 200
    generated = torch.randn(n, dim, generator=torch.Generator().manual_seed(12), dtype=torch.float64) + 0.5
    metric = FrechetAudioDistance(ProjectionEmbedder(dim=dim))
    count = torch.tensor(1e6, dtype=torch.float64)
    metric.set_reference({"sum": torch.zeros(dim), "outer_sum": (count - 1) * torch.eye(dim), "count": count})
    for part in generated.split([150, 50]):
        metric.update(embeddings=part)
    plain = metric.compute()
    intercept, r2 = metric.compute_infinity(min_samples=20, seed=3)
    assert torch.isfinite(intercept) and 0 <= r2.item() <= 1
    assert intercept.item() < plain.item() - 0.1
    expected = frechet_distance_infinity(torch.zeros(dim), torch.eye(dim), generated, min_samples=20,
                                         generator=torch.Generator().manual_seed(3))
    assert intercept.item() == pytest.approx(expected[0].item(), rel=1e-9)
    assert r2.item() == pytest.approx(expected[1].item(), rel=1e-9)
    metric.reset()
    metric.update(embeddings=generated[:3])
    with pytest.raises(ValueError, match="at least 4"):
        metric.compute_infinity()


# ---------------------------------------------------------------------------------------------------------- CLAP score


def test_clap_score_is_the_mean_cosine_similarity(clap):
    audio = clips(13, batch=5, samples=8192)
    prompts = ["a piece by Aurora Vale", "soft flute", "a gentle melody", "dreamy and calm music", "unknown words"]
    expected = (clap(audio, 16000).double() * clap.embed_text(prompts).double()).sum(-1).mean()
    metric = CLAPScore(clap)
    metric.update(audio[:2], 16000, prompts[:2])
    metric.update(audio[2:], 16000, prompts[2:])
    result = metric.compute()
    assert result.dtype == torch.float64 and -1 <= result.item() <= 1
    assert result.item() == pytest.approx(expected.item(), abs=1e-6)
    from_audio, given = CLAPScore(clap), CLAPScore(clap)
    from_audio.update(audio, 16000, prompts)
    given.update(embeddings=clap(audio, 16000), prompts=prompts)
    assert given.compute().item() == pytest.approx(from_audio.compute().item(), rel=1e-12, abs=1e-12)
    assert given.compute().item() == pytest.approx(result.item(), abs=1e-6)


def test_clap_score_resamples_audio(clap):
    audio = clips(14, batch=2, samples=8192)
    at_8k = torchaudio.functional.resample(audio, 16000, 8000)
    prompts = ["soft flute", "a piece by"]
    metric = CLAPScore(clap)
    metric.update(at_8k, 8000, prompts)
    expected = (clap(torchaudio.functional.resample(at_8k, 8000, 16000), 16000) * clap.embed_text(prompts)).sum(-1)
    assert metric.compute().item() == pytest.approx(expected.double().mean().item(), abs=1e-6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method.*before the ``update``")
def test_clap_score_errors(clap):
    metric = CLAPScore(clap)
    with pytest.raises(ValueError, match="seen no item"):
        metric.compute()
    with pytest.raises(ValueError, match="one prompt per clip"):
        metric.update(clips(0, batch=3, samples=8192), 16000, ["one", "two"])


# --------------------------------------------------------------------------------------------------------- recognition


def labelled_clips(predicted, seed=15):
    """Clips whose first sample is the class `IndexTagger` will predict."""
    audio = clips(seed, batch=len(predicted))
    audio[:, 0] = torch.tensor(predicted, dtype=torch.float32)
    return audio


def test_recognition_accuracy_and_per_label():
    tagger = IndexTagger()
    targets = ["a", "a", "b", "c", "c", "c"]
    audio = labelled_clips([0, 1, 1, 2, 0, 2])
    metric = Recognition(tagger)
    metric.update(audio[:4], RATE, targets[:4])
    metric.update(audio[4:], RATE, targets[4:])
    assert metric.compute().item() == pytest.approx(4 / 6)
    assert metric.per_label() == pytest.approx({"a": 1 / 2, "b": 1.0, "c": 2 / 3})
    expected_confusion = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]], dtype=torch.float64)
    torch.testing.assert_close(metric.confusion(), expected_confusion)
    # the same from the tagger's logits and index targets; a label with no clip is left out of per_label
    by_logits = Recognition(tagger)
    by_logits.update(logits=tagger(audio[:3], RATE), targets=torch.tensor([0, 0, 1]))
    assert by_logits.compute().item() == pytest.approx(2 / 3)
    assert by_logits.per_label() == pytest.approx({"a": 0.5, "b": 1.0})


@pytest.mark.filterwarnings("ignore:The ``compute`` method.*before the ``update``")
def test_recognition_errors():
    metric = Recognition(IndexTagger())
    with pytest.raises(ValueError, match="seen no item"):
        metric.compute()
    with pytest.raises(ValueError, match=r"\['x', 'zz'\]"):
        metric.update(labelled_clips([0, 0, 0]), RATE, ["a", "zz", "x"])
    with pytest.raises(ValueError, match="2 targets"):
        metric.update(labelled_clips([0, 0, 0]), RATE, ["a", "b"])


# ----------------------------------------------------------------------------------------------------------- zero-shot


def test_zero_shot_tagger(clap):
    labels = ["Aurora Vale", "flute", "piano"]
    tagger = ZeroShotTagger(clap, labels)
    assert tagger.logit_scale == pytest.approx(clap.model.logit_scale_a.exp().item())
    assert tagger.dim == 3 and tagger.sample_rate == clap.sample_rate and "Aurora Vale" in tagger.name
    audio = clips(16, batch=4, samples=8192)
    logits = tagger(audio, 16000)
    assert logits.shape == (4, 3)
    text = clap.embed_text([f"a piece by {label}" for label in labels])
    expected = tagger.logit_scale * clap(audio, 16000) @ text.T
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tagger.logits(clap(audio, 16000)), expected, rtol=1e-5, atol=1e-5)
    scaled = ZeroShotTagger(clap, labels, template="{} music", logit_scale=2.0)
    expected = 2.0 * clap(audio, 16000) @ clap.embed_text([f"{label} music" for label in labels]).T
    torch.testing.assert_close(scaled(audio, 16000), expected, rtol=1e-5, atol=1e-5)
    assert scaled.name != tagger.name


@pytest.mark.parametrize("labels, template", [(["a", "b", "a"], "a piece by {}"), ([], "a piece by {}"),
                                              (["a", "b"], "a piece")])
def test_zero_shot_tagger_rejects_bad_arguments(clap, labels, template):
    with pytest.raises(ValueError):
        ZeroShotTagger(clap, labels, template)


def test_recognition_over_zero_shot_tagger(clap):
    tagger = ZeroShotTagger(clap, ["flute", "piano"])
    audio = clips(17, batch=6, samples=8192)
    predicted = tagger(audio, 16000).argmax(-1)
    targets = [tagger.labels[i] for i in [0, 1, 0, 1, 0, 1]]
    metric = Recognition(tagger)
    metric.update(audio, 16000, targets)
    expected = (predicted == torch.tensor([0, 1, 0, 1, 0, 1])).double().mean()
    assert metric.compute().item() == pytest.approx(expected.item())


# ------------------------------------------------------------------------------------------------------- memorization


def test_memorization_of_copies_and_of_unrelated_clips():
    embedder = ProjectionEmbedder()
    tracks = clips(18, batch=4)
    metric = Memorization(embedder, threshold=0.9)
    metric.set_reference(embedder(tracks, RATE))
    metric.update(tracks[[2, 0]], RATE)
    result = metric.compute()
    assert result["max_similarity"].item() == pytest.approx(1.0, abs=1e-12) and result["copies"].item() == 1.0
    # orthogonal to every reference track: similarity 0, no copy; the reference survives reset()
    basis = torch.eye(DIM, dtype=torch.float64)
    metric.set_reference(basis[:3])
    metric.reset()
    metric.update(embeddings=torch.stack([basis[3], basis[5] - basis[6]]))
    result = metric.compute()
    assert result["max_similarity"].item() == pytest.approx(0.0, abs=1e-12) and result["copies"].item() == 0.0
    # a scaled copy and a clip at 45° to a track: mean of (1, cos 45°), one copy in two
    metric.update(embeddings=torch.stack([3 * basis[1], basis[0] + basis[7]]))
    result = metric.compute()
    assert result["max_similarity"].item() == pytest.approx((0 + 0 + 1 + math.sqrt(0.5)) / 4)
    assert result["copies"].item() == pytest.approx(1 / 4)


@pytest.mark.filterwarnings("ignore:The ``compute`` method.*before the ``update``")
def test_memorization_errors():
    embedder = ProjectionEmbedder()
    for threshold in (1.5, -1.01):
        with pytest.raises(ValueError, match="threshold"):
            Memorization(embedder, threshold=threshold)
    metric = Memorization(embedder)
    with pytest.raises(ValueError, match="set_reference"):
        metric.update(clips(0, batch=2), RATE)
    with pytest.raises(ValueError, match="shape"):
        metric.set_reference(torch.ones(DIM))
    with pytest.raises(ValueError, match="shape"):
        metric.set_reference(torch.ones(0, DIM))
    metric.set_reference(torch.eye(DIM))
    with pytest.raises(ValueError, match="seen no item"):
        metric.compute()


# ------------------------------------------------------------------------------------------------------------------ KL


def test_tag_kl_divergence():
    tagger = IndexTagger()
    generator = torch.Generator().manual_seed(19)
    generated, reference = torch.randn(2, 7, 3, generator=generator)
    metric = TagKLDivergence(tagger)
    metric.update(generated_logits=reference, reference_logits=reference)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-12)
    metric.reset()
    metric.update(generated_logits=generated[:3], reference_logits=reference[:3])
    metric.update(generated_logits=generated[3:], reference_logits=reference[3:])
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=reference.double()),
                                                 torch.distributions.Categorical(logits=generated.double())).mean()
    assert metric.compute().item() == pytest.approx(expected.item(), rel=1e-10)
    # from audio: the tagger's logits of each pair
    generated_audio, reference_audio = labelled_clips([0, 1, 2], seed=20), labelled_clips([0, 2, 2])
    from_audio = TagKLDivergence(tagger)
    from_audio.update(generated_audio, reference_audio, RATE)
    expected = kl_divergence(tagger(reference_audio, RATE), tagger(generated_audio, RATE)).mean()
    assert expected > 0.1 and from_audio.compute().item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.filterwarnings("ignore:The ``compute`` method.*before the ``update``")
def test_tag_kl_divergence_errors():
    metric = TagKLDivergence(IndexTagger())
    with pytest.raises(ValueError, match="seen no item"):
        metric.compute()
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(generated_logits=torch.zeros(3, 3), reference_logits=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="not both or neither"):
        metric.update(generated_logits=torch.zeros(3, 3))


def _artist_clips(tiny_corpus, manifest) -> tuple[torch.Tensor, list[str]]:
    items = read_manifest(manifest)
    dataset = AudioTextDataset(items, 16000, round(tiny_corpus.settings["duration"] * 16000))
    return torch.stack([dataset[i]["audio"] for i in range(len(dataset))]), [item.group for item in items]


def test_feature_tagger_learns_the_artists_and_round_trips(tiny_corpus, tmp_path):
    train, groups = _artist_clips(tiny_corpus, tiny_corpus.train_manifest)
    heldout, heldout_groups = _artist_clips(tiny_corpus, tiny_corpus.heldout_manifest)
    tagger = FeatureTagger.fit(train, groups, 16000, tmp_path / "judge")

    assert tagger.labels == sorted(set(groups)) and tagger.dim == len(tagger.labels)
    for clips, truth in ((heldout, heldout_groups), (add_white_noise(heldout, (20.0, 20.0)), heldout_groups)):
        predicted = [tagger.labels[i] for i in tagger(clips, 16000).argmax(-1).tolist()]
        assert predicted == truth  # two artists, held-out and noisy held-out tracks: every one right
    again = FeatureTagger.fit(train, groups, 16000, tmp_path / "again")
    assert torch.equal(again(heldout, 16000), tagger(heldout, 16000))  # deterministic fit
    assert torch.allclose(FeatureTagger(tmp_path / "judge")(heldout, 16000), tagger(heldout, 16000))


def test_feature_tagger_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no feature tagger"):
        FeatureTagger(tmp_path)
    with pytest.raises(ValueError, match="at least two labels"):
        FeatureTagger.fit(torch.randn(3, 4000), ["a", "a", "a"], 16000, tmp_path / "one")


def test_white_noise_has_the_requested_snr():
    clean = torch.randn(4, 16000, generator=torch.Generator().manual_seed(0)) * torch.tensor([[0.1], [1], [2], [5]])
    noise = add_white_noise(clean, (10.0, 10.0), torch.Generator().manual_seed(1)) - clean
    snr = 10 * (clean.pow(2).mean(-1) / noise.pow(2).mean(-1)).log10()
    assert torch.allclose(snr, torch.full((4,), 10.0), atol=0.2)  # 16000 samples: the drawn noise's power is within 5 %
