"""A tiny random MusicLDM (`diffusers.MusicLDMPipeline`): AudioLDM's tiny components (see tests/tiny/audioldm.py)
with a full tiny `ClapModel` (text and audio towers) and its feature extractor, as diffusers' own
``tests/pipelines/musicldm/test_musicldm.py::get_dummy_components`` builds them."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import MusicLDMPipeline
from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel

from tests.tiny.audioldm import TEXT_DIM, clap_text_config, film_unet, roberta_tokenizer, scheduler, vae, vocoder


def clap_model(vocab_size: int) -> ClapModel:
    """A tiny CLAP: the one-layer text tower of the AudioLDM tiny model and a two-stage HTSAT audio tower."""
    audio_config = ClapAudioConfig(spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=32,
                                   depths=[1, 1], num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=32,
                                   projection_dim=TEXT_DIM, patch_size=2, patch_stride=2, patch_embed_input_channels=4)
    config = ClapConfig(text_config=clap_text_config(vocab_size).to_dict(), audio_config=audio_config.to_dict(),
                        projection_dim=TEXT_DIM)
    return ClapModel(config)


def save_tiny(folder: Path) -> Path:
    """Build a tiny random MusicLDM pipeline and save it with `save_pretrained` into `folder`."""
    torch.manual_seed(0)
    tokenizer = roberta_tokenizer()
    pipeline = MusicLDMPipeline(
        vae=vae(), text_encoder=clap_model(len(tokenizer)), tokenizer=tokenizer,
        feature_extractor=ClapFeatureExtractor(), unet=film_unet(), scheduler=scheduler(), vocoder=vocoder())
    pipeline.save_pretrained(folder)
    return folder
