"""`ClapEmbedder`: audio and text embeddings from any transformers CLAP folder or hub id (the toy CLAP, LAION CLAP in
transformers format such as ``laion/larger_clap_music``), pinned to eval mode, resampling audio to CLAP's rate inside.
Wu et al., "Large-scale Contrastive Language-Audio Pretraining with Feature Fusion and Keyword-to-Caption
Augmentation", ICASSP 2023."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import ClapModel, ClapProcessor

from lightning_modules.metrics.embedder import TextAudioEmbedder


class ClapEmbedder(TextAudioEmbedder):
    """L2-normalised CLAP embeddings of audio and text.

    Args:
        pretrained: a transformers CLAP folder or hub id (model, feature extractor and tokenizer).
    """

    def __init__(self, pretrained: str | os.PathLike) -> None:
        super().__init__()
        if not os.path.isdir(pretrained) and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(f"CLAP folder {pretrained} not found, and the hub is offline (HF_HUB_OFFLINE=1).")
        self.pretrained = str(pretrained)
        self.model = ClapModel.from_pretrained(pretrained).requires_grad_(False).eval()
        self.processor = ClapProcessor.from_pretrained(pretrained)
        self.sample_rate: int = self.processor.feature_extractor.sampling_rate

    @property
    def name(self) -> str:
        path = Path(self.pretrained)
        return f"clap:{path.resolve() if path.exists() else self.pretrained}"

    @property
    def logit_scale(self) -> float:
        return self.model.logit_scale_a.exp().item()

    @property
    def dim(self) -> int:
        return self.model.config.projection_dim

    def embed(self, waveform: Tensor) -> Tensor:
        features = self.processor.feature_extractor(list(waveform.cpu().numpy()), sampling_rate=self.sample_rate,
                                                    return_tensors="pt")
        output = self.model.get_audio_features(input_features=features["input_features"].to(self.device))
        return F.normalize(output.pooler_output, dim=-1)

    def unknown_words(self, text: str) -> list[str]:
        tokenizer = self.processor.tokenizer
        if tokenizer.unk_token_id is None:
            return []
        return [word for word in text.split() if set(tokenizer(word, add_special_tokens=False)["input_ids"])
                <= {tokenizer.unk_token_id}]

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> Tensor:
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        return F.normalize(self.model.get_text_features(**tokens.to(self.device)).pooler_output, dim=-1)
