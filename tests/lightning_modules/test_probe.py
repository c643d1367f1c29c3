"""`EmbeddingProbe`: a logistic regression on a frozen embedder's embeddings, fitted on labelled clips."""

import pytest
import torch

from lightning_modules.metrics.probe import EmbeddingProbe
from tests.lightning_modules.embedders import RATE, WINDOW, ProjectionEmbedder


def _clips(centres: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Clips whose first WINDOW samples are a class's centre plus noise (the projection reads only those)."""
    noise = 0.3 * torch.randn(len(centres), per_class, WINDOW, generator=generator)
    clips = torch.zeros(len(centres) * per_class, WINDOW * 2)
    clips[:, :WINDOW] = (centres[:, None] + noise).reshape(-1, WINDOW)
    return clips


def test_the_probe_recognises_held_out_clips_of_its_classes():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, WINDOW, generator=generator)
    embedder = ProjectionEmbedder()
    train, test = _clips(centres, 16, generator), _clips(centres, 8, generator)
    labels = [name for name in ("c", "a", "b") for _ in range(16)]
    probe = EmbeddingProbe.fit(embedder, embedder(train, RATE), labels)
    assert probe.labels == ["a", "b", "c"] and probe.dim == 3
    logits = probe(test, RATE)
    assert logits.shape == (24, 3)
    expected = torch.tensor([2] * 8 + [0] * 8 + [1] * 8)  # c, a, b in label order a, b, c
    # measured: 24 / 24 right; a probe that ignored its input would get 8
    assert (logits.argmax(-1) == expected).float().mean() >= 0.9
    assert torch.equal(probe.logits(embedder(test, RATE)), logits)  # from embeddings computed once


def test_the_probe_refuses_mismatched_labels_and_parameters():
    embedder = ProjectionEmbedder()
    embeddings = torch.randn(4, embedder.dim)
    with pytest.raises(ValueError, match="one label per embedding"):
        EmbeddingProbe.fit(embedder, embeddings, ["a", "b", "a"])
    with pytest.raises(ValueError, match="at least two labels"):
        EmbeddingProbe.fit(embedder, embeddings, ["a"] * 4)
    parameters = (torch.zeros(embedder.dim), torch.ones(embedder.dim), torch.zeros(2, embedder.dim + 1),
                  torch.zeros(2))
    with pytest.raises(ValueError, match="needs a weight of shape"):
        EmbeddingProbe(embedder, ["a", "b"], parameters)
