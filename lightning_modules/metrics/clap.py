"""`ClapEmbedder`: audio and text embeddings from any transformers CLAP folder (the toy CLAP, LAION CLAP converted to
transformers), pinned to eval mode, resampling audio to CLAP's rate inside."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn
from transformers import ClapModel, ClapProcessor


class ClapEmbedder(nn.Module):
    """L2-normalised CLAP embeddings of audio and text.

    Args:
        pretrained: a transformers CLAP folder or hub id (model, feature extractor and tokenizer).
    """

    def __init__(self, pretrained: str | os.PathLike) -> None:
        super().__init__()
        if not os.path.isdir(pretrained) and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(f"CLAP folder {pretrained} not found, and the hub is offline (HF_HUB_OFFLINE=1).")
        self.model = ClapModel.from_pretrained(pretrained).requires_grad_(False).eval()
        self.processor = ClapProcessor.from_pretrained(pretrained)
        self.sample_rate: int = self.processor.feature_extractor.sampling_rate

    def train(self, mode: bool = True) -> ClapEmbedder:
        return super().train(False)  # a feature extractor: never in training mode

    @torch.no_grad()
    def embed_audio(self, waveform: Tensor, sample_rate: int) -> Tensor:
        """`(batch, samples)` or `(batch, channels, samples)` audio at `sample_rate` to `(batch, dim)` embeddings."""
        if waveform.dim() == 3:
            waveform = waveform.mean(dim=1)
        if waveform.dim() != 2 or waveform.shape[-1] < 2:
            raise ValueError(f"Expected audio of shape (batch, samples) or (batch, channels, samples) with at least 2 "
                             f"samples, got {tuple(waveform.shape)}.")
        if not torch.isfinite(waveform).all():
            raise ValueError("Audio holds NaN or infinite samples; CLAP cannot embed it.")
        waveform = waveform.float()
        if sample_rate != self.sample_rate:
            waveform = torchaudio.functional.resample(waveform, sample_rate, self.sample_rate)
        features = self.processor.feature_extractor(list(waveform.cpu().numpy()), sampling_rate=self.sample_rate,
                                                    return_tensors="pt")
        device = next(self.model.parameters()).device
        output = self.model.get_audio_features(input_features=features["input_features"].to(device))
        return F.normalize(output.pooler_output, dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> Tensor:
        """`(batch, dim)` embeddings of `texts`."""
        device = next(self.model.parameters()).device
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(device)
        return F.normalize(self.model.get_text_features(**tokens).pooler_output, dim=-1)
