"""`EncodecEmbedder`: frame-level embeddings of the EnCodec encoder (before quantisation), as the
``frechet-audio-distance`` package uses them (FAD with ``model_name="encodec"``). Défossez et al., "High Fidelity
Neural Audio Compression", Transactions on Machine Learning Research, 2023."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_modules.metrics.embedder import AudioEmbedder
from lightning_modules.metrics.weights import config_for_rate, require_file

ENCODEC_URL = "https://dl.fbaipublicfiles.com/encodec/v0/{}"
ENCODEC_DIM = 128


class _EncodecConfig(NamedTuple):
    factory: str  # EncodecModel's static constructor
    checkpoint: str  # file name; the part after "-" is the prefix of its sha256, which encodec verifies
    channels: int


ENCODEC_CONFIGS: dict[int, _EncodecConfig] = {
    24000: _EncodecConfig("encodec_model_24khz", "encodec_24khz-d7cc33bc.th", 1),
    48000: _EncodecConfig("encodec_model_48khz", "encodec_48khz-7e698e3e.th", 2),
}


class EncodecEmbedder(AudioEmbedder):
    """128-d EnCodec encoder outputs, one per frame (75 per second at 24 kHz, 150 at 48 kHz): `(batch, frames, 128)`.

    As in ``frechet-audio-distance``: the pretrained model is built by ``encodec``'s own constructor (which checks
    the checkpoint's sha256), set to its 24 kbps bandwidth, and embeddings are ``model.encoder(audio)`` transposed to
    frames; the 48 kHz model is stereo, so the mono clip is fed on both channels. The 48 kHz model's own
    normalisation and 1 s segmenting (used by ``encode``) are skipped, as there.

    Args:
        ckpt_dir: the folder holding ``encodec_24khz-d7cc33bc.th`` (or ``encodec_48khz-7e698e3e.th``).
        sample_rate: 24000 or 48000; picks the model.

    Raises:
        ValueError: for another sample rate.
        FileNotFoundError: if the checkpoint is missing (checked before ``encodec`` is imported).
        RuntimeError: from ``encodec`` if the checkpoint's sha256 does not match its file name.
    """

    def __init__(self, ckpt_dir: str | Path, sample_rate: int = 24000) -> None:
        super().__init__()
        config = config_for_rate(ENCODEC_CONFIGS, sample_rate, "EnCodec")
        self.checkpoint = require_file(Path(ckpt_dir) / config.checkpoint, "EnCodec weights",
                                       ENCODEC_URL.format(config.checkpoint))
        self.sample_rate: int = sample_rate
        self.channels = config.channels

        from encodec import EncodecModel

        model = getattr(EncodecModel, config.factory)(pretrained=True, repository=self.checkpoint.parent)
        model.set_target_bandwidth(24.0)  # the highest bandwidth both models support (32 residual quantisers)
        self.model = model.requires_grad_(False).eval()
        self.eval()

    @property
    def name(self) -> str:
        return f"encodec-{self.sample_rate // 1000}khz:{self.checkpoint.name}"

    @property
    def dim(self) -> int:
        return ENCODEC_DIM

    def embed(self, waveform: Tensor) -> Tensor:
        audio = waveform.unsqueeze(1)  # (batch, 1, samples)
        if self.channels == 2:
            audio = torch.cat((audio, audio), dim=1)  # mono to stereo for the 48 kHz model
        return self.model.encoder(audio).transpose(1, 2)  # (batch, 128, frames) -> (batch, frames, 128)
