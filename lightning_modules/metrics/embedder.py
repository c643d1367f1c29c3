"""`AudioEmbedder`: the interface of every feature extractor a metric is given (CLAP, VGGish, PANN, EnCodec).

An embedder is an `nn.Module` pinned to eval mode with frozen weights. It takes waveforms at any sample rate, checks
them, downmixes and resamples to the rate its network expects, and returns one embedding per clip `(batch, dim)` or
one per frame `(batch, frames, dim)` (frame-level embedders such as VGGish and EnCodec, as FAD toolkits use them).
`name` identifies the network and its weights, so cached statistics are never reused across embedders.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torchaudio
from torch import Tensor, nn


def as_mono_batch(waveform: Tensor) -> Tensor:
    """`(batch, samples)` or `(batch, channels, samples)` float audio to finite `(batch, samples)` float32."""
    if waveform.dim() == 3:
        waveform = waveform.mean(dim=1)
    if waveform.dim() != 2 or waveform.shape[-1] < 2:
        raise ValueError(f"Expected audio of shape (batch, samples) or (batch, channels, samples) with at least 2 "
                         f"samples, got {tuple(waveform.shape)}.")
    if not torch.isfinite(waveform).all():
        raise ValueError("Audio holds NaN or infinite samples; it cannot be embedded. Check the generator's output.")
    return waveform.float()


def embed_or_given(embedder: AudioEmbedder, audio: Tensor | None, sample_rate: int | None,
                   embeddings: Tensor | None) -> Tensor:
    """A metric update's input: `embeddings` when given, else `embedder(audio, sample_rate)`; exactly one of the two."""
    if (audio is None) == (embeddings is None):
        raise ValueError("Give either audio (with its sample_rate) or precomputed embeddings, not both or neither.")
    if embeddings is not None:
        return embeddings
    if sample_rate is None:
        raise ValueError("Audio was given without its sample_rate.")
    return embedder(audio, sample_rate)


class AudioEmbedder(nn.Module, ABC):
    """Frozen audio feature extractor: `forward(waveform, sample_rate)` -> `(batch, dim)` or `(batch, frames, dim)`.

    Subclasses set `sample_rate` (the rate their network expects), give `name` and `dim`, and implement `embed` on mono
    audio at that rate.
    """

    sample_rate: int

    def train(self, mode: bool = True) -> AudioEmbedder:
        return super().train(False)  # a feature extractor: never in training mode (no dropout, frozen batch norm)

    @property
    def device(self) -> torch.device:
        tensor = next(iter(self.parameters()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    @abstractmethod
    def name(self) -> str:
        """Identifies the network and its weights (used in cache keys), e.g. ``"pann-cnn14-16k"``."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of an embedding."""

    @abstractmethod
    def embed(self, waveform: Tensor) -> Tensor:
        """Mono audio `(batch, samples)` at `self.sample_rate` -> `(batch, dim)` or `(batch, frames, dim)`."""

    @torch.no_grad()
    def forward(self, waveform: Tensor, sample_rate: int) -> Tensor:
        """Embed `(batch, samples)` or `(batch, channels, samples)` audio recorded at `sample_rate`."""
        waveform = as_mono_batch(waveform).to(self.device)
        if sample_rate != self.sample_rate:
            waveform = torchaudio.functional.resample(waveform, sample_rate, self.sample_rate)
        return self.embed(waveform)


class TextAudioEmbedder(AudioEmbedder):
    """An audio embedder with a text tower in the same space (CLAP): L2-normalised audio and text embeddings."""

    @abstractmethod
    def embed_text(self, texts: Sequence[str]) -> Tensor:
        """`(batch, dim)` L2-normalised embeddings of `texts`."""

    @property
    def logit_scale(self) -> float:
        """Inverse temperature of audio-text similarities (the trained value where the model has one)."""
        return 100.0

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` the text tower cannot read (its tokenizer maps them to the unknown token only); none
        where the tokenizer reads anything (byte-level BPE)."""
        return []


class AudioTagger(AudioEmbedder):
    """An embedder whose output is one logit per class `(batch, len(labels))` (a classifier, or CLAP zero-shot)."""

    labels: list[str]

    @property
    def dim(self) -> int:
        return len(self.labels)
