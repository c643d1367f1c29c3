"""`CLAPScore`: how well generated audio matches its prompt, the mean cosine similarity between the CLAP text embedding
of each prompt and the CLAP audio embedding of its audio (audiocraft's CLAP consistency; Hessel et al.'s CLIPScore
for images)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_modules.metrics.embedder import TextAudioEmbedder, embed_or_given


class CLAPScore(Metric):
    """Mean cosine similarity of (prompt, audio) pairs in a CLAP space; in [-1, 1], higher is better.

    Args:
        embedder: any CLAP embedder (audio and text towers in one space).
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, embedder: TextAudioEmbedder, **kwargs) -> None:
        super().__init__(**kwargs)
        self.embedder = embedder.eval()
        self.add_state("similarity_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, audio: Tensor | None = None, sample_rate: int | None = None, prompts: Sequence[str] = (), *,
               embeddings: Tensor | None = None) -> None:
        """`audio` `(batch, samples)` or `(batch, channels, samples)` at `sample_rate` generated from `prompts` (one
        each), or its `embeddings` `(batch, dim)` already computed by this metric's embedder."""
        audio_embeddings = embed_or_given(self.embedder, audio, sample_rate, embeddings)
        if len(prompts) != len(audio_embeddings):
            raise ValueError(f"Got {len(audio_embeddings)} clips but {len(prompts)} prompts; give one prompt per clip.")
        text = self.embedder.embed_text(prompts)
        similarity = torch.nn.functional.cosine_similarity(audio_embeddings.double(), text.double(), dim=-1)
        self.similarity_sum += similarity.sum()
        self.count += len(similarity)

    def compute(self) -> Tensor:
        if self.count < 1:
            raise ValueError("CLAPScore has seen no (prompt, audio) pair.")
        return self.similarity_sum / self.count
