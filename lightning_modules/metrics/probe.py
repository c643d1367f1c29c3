"""`EmbeddingProbe`: a linear classifier on a frozen embedder's clip embeddings, fitted on labelled real tracks.

On a CLAP, it is the judge that shares the audio tower with the CLAP's zero-shot recognition but not its text tower:
where the two disagree on generated audio, the text side is what differs. That matters for a text-to-music model
conditioned on the same CLAP's text tower (the toy world's): its generations are pulled towards audio whose CLAP
embedding matches the prompt's text embedding, which a zero-shot judge reads through that very text embedding.
The linear probe of Alain & Bengio ("Understanding intermediate layers using linear classifier probes", 2016), fitted
as `FeatureTagger` is (standardised inputs, multinomial logistic regression, L-BFGS).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_modules.metrics.embedder import AudioEmbedder, AudioTagger
from lightning_modules.metrics.feature_tagger import fit_logistic


class EmbeddingProbe(AudioTagger):
    """Logits `(batch, len(labels))` of a logistic regression on `embedder`'s embeddings; built by `fit`.

    Args:
        embedder: the frozen audio embedder.
        labels: the class names, in the order of the logits.
        parameters: ``(mean, scale, weight, bias)`` as `fit_logistic` returns them.
    """

    def __init__(self, embedder: AudioEmbedder, labels: Sequence[str],
                 parameters: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
        super().__init__()
        self.embedder = embedder.eval()
        self.labels = list(labels)
        self.sample_rate = embedder.sample_rate
        for name, value in zip(("mean", "scale", "weight", "bias"), parameters, strict=True):
            self.register_buffer(name, value)
        if self.weight.shape != (len(self.labels), embedder.dim):
            raise ValueError(f"A probe of {len(self.labels)} labels on {embedder.dim}-d embeddings needs a weight of "
                             f"shape {(len(self.labels), embedder.dim)}, got {tuple(self.weight.shape)}.")

    @classmethod
    def fit(cls, embedder: AudioEmbedder, embeddings: Tensor, labels: Sequence[str],
            weight_decay: float = 1e-2) -> EmbeddingProbe:
        """The probe fitted on `embeddings` `(n, dim)` of clips labelled `labels` (computed by `embedder`)."""
        names = sorted(set(labels))
        if len(names) < 2 or len(labels) != len(embeddings):
            raise ValueError(f"A probe needs one label per embedding and at least two labels, got {len(labels)} "
                             f"labels ({names}) for {len(embeddings)} embeddings.")
        targets = torch.tensor([names.index(label) for label in labels])
        return cls(embedder, names, fit_logistic(embeddings, targets, len(names), weight_decay, "embedding probe"))

    @property
    def name(self) -> str:
        return f"probe[{','.join(self.labels)}]@{self.embedder.name}"

    def embed(self, waveform: Tensor) -> Tensor:
        return self.logits(self.embedder.embed(waveform))

    def logits(self, embeddings: Tensor) -> Tensor:
        """Logits from embeddings `(batch, dim)` already computed by the embedder."""
        return ((embeddings.float() - self.mean) / self.scale) @ self.weight.T + self.bias
