"""`CLAPScore`: how well generated audio matches its prompt, the mean cosine similarity between the CLAP text embedding
of each prompt and the CLAP audio embedding of its audio (audiocraft's CLAP consistency; Hessel et al.'s CLIPScore
for images)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_modules.metrics.embedder import TextAudioEmbedder, embed_or_given
from lightning_modules.metrics.functional import Samples
from lightning_modules.metrics.per_item import PerItemMetric


class CLAPScore(PerItemMetric):
    """Mean cosine similarity of (prompt, audio) pairs in a CLAP space; in [-1, 1], higher is better. Keeps each
    pair's similarity.

    Args:
        embedder: any CLAP embedder (audio and text towers in one space).
    """

    higher_is_better = True
    fields = ("similarity",)
    batched_statistic = True

    def __init__(self, embedder: TextAudioEmbedder, **kwargs) -> None:
        super().__init__(**kwargs)
        self.embedder = embedder.eval()

    def update(self, audio: Tensor | None = None, sample_rate: int | None = None, prompts: Sequence[str] = (), *,
               embeddings: Tensor | None = None, index: Tensor | None = None) -> None:
        """`audio` `(batch, samples)` or `(batch, channels, samples)` at `sample_rate` generated from `prompts` (one
        each), or its `embeddings` `(batch, dim)` already computed by this metric's embedder; `index` places the
        pairs (`PerItemMetric`)."""
        audio_embeddings = embed_or_given(self.embedder, audio, sample_rate, embeddings)
        if len(prompts) != len(audio_embeddings):
            raise ValueError(f"Got {len(audio_embeddings)} clips but {len(prompts)} prompts; give one prompt per clip.")
        text = self.embedder.embed_text(prompts)
        similarity = torch.nn.functional.cosine_similarity(audio_embeddings.double(), text.double(), dim=-1)
        self.keep(index, similarity=similarity)

    def statistic(self, samples: Samples) -> Tensor:
        return samples["similarity"].mean(-1)
