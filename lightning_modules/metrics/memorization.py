"""`Memorization`: how close generations come to copying training tracks, as each clip's highest embedding
similarity to any track of a reference set (the forget set) and the share above a threshold; the audio analogue of
the replication measure of Somepalli et al., "Diffusion Art or Digital Forgery?", CVPR 2023."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_modules.metrics.embedder import AudioEmbedder, embed_or_given
from lightning_modules.metrics.functional import Samples
from lightning_modules.metrics.per_item import PerItemMetric


class Memorization(PerItemMetric):
    """Mean highest cosine similarity of each clip to the reference tracks, and the share of clips above `threshold`;
    keeps each clip's highest similarity.

    Args:
        embedder: the audio embedder (e.g. CLAP).
        threshold: a clip whose highest similarity exceeds it counts as a copy.
    """

    higher_is_better = False
    fields = ("highest",)
    batched_statistic = True

    def __init__(self, embedder: AudioEmbedder, threshold: float = 0.9, **kwargs) -> None:
        super().__init__(**kwargs)
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is not a cosine similarity in [-1, 1].")
        self.embedder = embedder.eval()
        self.threshold = threshold
        self.reference: Tensor | None = None

    def set_reference(self, embeddings: Tensor) -> None:
        """The reference tracks' embeddings `(tracks, dim)` (the same on every process); kept across resets."""
        if embeddings.dim() != 2 or len(embeddings) == 0:
            raise ValueError(f"Expected reference embeddings of shape (tracks, dim), got {tuple(embeddings.shape)}.")
        self.reference = F.normalize(embeddings.double(), dim=-1)

    def update(self, audio: Tensor | None = None, sample_rate: int | None = None, *,
               embeddings: Tensor | None = None, index: Tensor | None = None) -> None:
        """Generated `audio` `(batch, samples)` at `sample_rate`, or its `embeddings` `(batch, dim)` already computed
        by this metric's embedder; `index` places the clips (`PerItemMetric`)."""
        embeddings = embed_or_given(self.embedder, audio, sample_rate, embeddings)
        if self.reference is None:
            raise ValueError("Memorization needs the reference tracks' embeddings: call set_reference() first.")
        similarity = F.normalize(embeddings.double(), dim=-1) @ self.reference.to(embeddings.device).T
        self.keep(index, highest=similarity.max(dim=-1).values)

    def statistic(self, samples: Samples) -> dict[str, Tensor]:
        """``max_similarity``: mean over clips of the highest similarity; ``copies``: share above the threshold."""
        highest = samples["highest"]
        return {"max_similarity": highest.mean(-1), "copies": (highest > self.threshold).double().mean(-1)}
