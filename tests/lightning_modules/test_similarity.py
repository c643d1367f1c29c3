"""Similarity baselines of attribution on the tiny toy model and corpus: shapes, each track most similar to itself,
determinism and independence from batching (what sharding needs), the model left as it was, and input errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from datamodules import read_manifest
from datamodules.audio import AudioTextDataset
from lightning_modules.attribution.similarity import (
    ActivationSimilarity,
    ClapSimilarity,
    GradientSimilarity,
    _project,
    activation_features,
    cosine_scores,
    gradient_features,
    shared_loss_inputs,
)
from lightning_modules.metrics.clap import ClapEmbedder
from tests.conftest import TINY_SAMPLES


def _batches(manifest, batch_size: int) -> list[dict]:
    dataset = AudioTextDataset(read_manifest(manifest), 16000, TINY_SAMPLES, split="attribution")
    return list(DataLoader(dataset, batch_size=batch_size))


@pytest.fixture(scope="module")
def train_batches(tiny_corpus) -> list[dict]:
    return _batches(tiny_corpus.train_manifest, 5)


@pytest.fixture(scope="module")
def query_batches(tiny_corpus) -> list[dict]:
    return _batches(tiny_corpus.heldout_manifest, 3)


def _ids(batches: list[dict]) -> list[str]:
    return [item_id for batch in batches for item_id in batch["id"]]


def _assert_self_most_similar(scores: torch.Tensor) -> None:
    n = scores.shape[0]
    assert torch.allclose(scores.diagonal(), torch.ones(n), atol=1e-5)
    off_diagonal = scores.masked_fill(torch.eye(n, dtype=torch.bool), -2.0)
    assert (off_diagonal.max(dim=1).values < scores.diagonal() - 1e-6).all()
    assert torch.equal(scores.argmax(dim=1), torch.arange(n))


def test_cosine_scores() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    train = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0], [0.0, 0.0]])
    expected = torch.tensor([[1.0, 2**-0.5, 0.0, 0.0], [0.0, 2**-0.5, -1.0, 0.0]])
    assert torch.allclose(cosine_scores(queries, train, chunk_size=3), expected)
    with pytest.raises(ValueError, match="same dim"):
        cosine_scores(queries, torch.zeros(2, 3))


def test_clap_similarity(tiny_clap_dir, train_batches, query_batches, tiny_corpus) -> None:
    baseline = ClapSimilarity(ClapEmbedder(tiny_clap_dir), sample_rate=16000)
    model = SimpleNamespace(sample_rate=16000)  # the CLAP baseline reads only the model's rate, when not given
    scores = baseline.scores(train_batches, train_batches, model)
    assert scores.shape == (len(_ids(train_batches)),) * 2
    _assert_self_most_similar(scores)
    cross = baseline.scores(query_batches, _batches(tiny_corpus.train_manifest, 4), model)  # other batching
    assert cross.shape == (len(_ids(query_batches)), len(_ids(train_batches)))
    assert torch.allclose(cross, baseline.scores(query_batches, train_batches, model), atol=1e-5)
    at_model_rate = ClapSimilarity(baseline.embedder).features(train_batches, model)  # type: ignore[arg-type]
    assert torch.equal(at_model_rate.vectors, baseline.features(train_batches, model).vectors)
    with pytest.raises(ValueError, match="sample_rate"):
        ClapSimilarity(baseline.embedder, sample_rate=0)


def test_activation_similarity(tiny_model, train_batches, query_batches, tiny_corpus) -> None:
    tiny_model.train()
    state = torch.random.get_rng_state()
    baseline = ActivationSimilarity("unet.mid_block", timestep=50)
    baseline.check(tiny_model)
    scores = baseline.scores(train_batches, train_batches, tiny_model)
    _assert_self_most_similar(scores)
    assert torch.equal(torch.random.get_rng_state(), state) and tiny_model.unet.training  # left as it was
    # deterministic, independent of batching, queries x train
    rebatched = activation_features(tiny_model, "unet.mid_block", _batches(tiny_corpus.train_manifest, 4),
                                    timestep=50)
    assert rebatched.ids == _ids(train_batches)
    assert torch.allclose(rebatched.vectors, baseline.features(train_batches, tiny_model).vectors, atol=1e-5)
    cross = baseline.scores(query_batches, train_batches, tiny_model)
    assert cross.shape == (len(_ids(query_batches)), len(_ids(train_batches)))
    # several draws at drawn timesteps, own captions, a module inside an up block: still itself first
    drawn = ActivationSimilarity("unet.up_blocks.0.resnets.0", draws=2, caption=None)
    _assert_self_most_similar(drawn.scores(train_batches, train_batches, tiny_model))


def test_activation_similarity_wrong_module(tiny_model) -> None:
    with pytest.raises(ValueError, match=r"No module named 'unet.mid_blok'.*unet.mid_block"):
        ActivationSimilarity("unet.mid_blok").check(tiny_model)
    with pytest.raises(ValueError, match=r"Modules under 'unet.down_blocks'.*'unet.down_blocks.0'"):
        ActivationSimilarity("unet.down_blocks.7").check(tiny_model)
    with pytest.raises(ValueError, match="draws"):
        ActivationSimilarity("unet.mid_block", draws=0)


def test_gradient_similarity(tiny_model, train_batches) -> None:
    flags = [param.requires_grad for param in tiny_model.parameters()]
    baseline = GradientSimilarity(["cross_attention"], timestep=100)
    baseline.check(tiny_model)
    features = baseline.features(train_batches, tiny_model)
    num_parameters = sum(param.numel() for param in tiny_model.select_parameters(["cross_attention"]))
    assert features.vectors.shape == (len(_ids(train_batches)), num_parameters)
    _assert_self_most_similar(baseline.scores(train_batches, train_batches, tiny_model))
    assert [param.requires_grad for param in tiny_model.parameters()] == flags
    # a fixed random projection: the same matrix for every batch, keeping the track itself first
    projected = gradient_features(tiny_model, ["cross_attention"], train_batches[:1], timestep=100, projection_dim=64)
    first = len(train_batches[0]["id"])
    assert projected.vectors.shape == (first, 64)
    assert torch.allclose(projected.vectors, _project(features.vectors, 64, seed=0)[:first], atol=1e-4)
    assert torch.allclose(_project(features.vectors[2:4], 64, seed=0), _project(features.vectors, 64, seed=0)[2:4])
    _assert_self_most_similar(cosine_scores(projected.vectors, projected.vectors))


def test_gradient_similarity_errors(tiny_model) -> None:
    with pytest.raises(ValueError, match="Unknown parameter group"):
        GradientSimilarity(["nonexistent"]).check(tiny_model)
    with pytest.raises(ValueError, match="projection_dim"):
        gradient_features(tiny_model, ["all"], [], projection_dim=0)
    with pytest.raises(ValueError, match="projection_dim"):
        GradientSimilarity(["all"], projection_dim=0)
    with pytest.raises(ValueError, match="No batches"):
        gradient_features(tiny_model, ["all"], [])


def test_shared_loss_inputs(tiny_model) -> None:
    inputs = shared_loss_inputs(tiny_model, 3, seed=0, timestep=None)
    assert (inputs["timesteps"] == inputs["timesteps"][0]).all() and (inputs["noise"] == inputs["noise"][0]).all()
    assert torch.equal(inputs["noise"], shared_loss_inputs(tiny_model, 3, seed=0, timestep=7)["noise"])
    assert shared_loss_inputs(tiny_model, 2, seed=0, timestep=7)["timesteps"].tolist() == [7, 7]
    deterministic = SimpleNamespace(fixed_loss_inputs=lambda ids, seed: {})  # e.g. MusicGen: draws nothing
    assert shared_loss_inputs(deterministic, 2, seed=0, timestep=None) == {}  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="draws no timesteps"):
        shared_loss_inputs(deterministic, 2, seed=0, timestep=7)  # type: ignore[arg-type]


def test_activation_module_that_does_not_run(tiny_model, train_batches) -> None:
    with pytest.raises(ValueError, match="'inverse_mel' did not run"):
        activation_features(tiny_model, "inverse_mel", train_batches[:1])
