"""A tiny random Stable Audio Open pipeline (DiT, Oobleck VAE, T5 encoder and tokenizer, projection model, cosine
DPM-Solver scheduler), built as diffusers' own ``tests/pipelines/stable_audio/test_stable_audio.py``
``get_dummy_components()`` does and saved with ``StableAudioPipeline.save_pretrained``."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderOobleck,
    CosineDPMSolverMultistepScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)
from transformers import T5Config, T5EncoderModel, T5Tokenizer

SAMPLE_RATE = 8000
HOP = 32  # product of the VAE's downsampling ratios
FRAMES = 128  # the DiT's sample_size: a 0.512 s window


def build_tokenizer(max_length: int = 48) -> T5Tokenizer:
    """A character-level T5 (Unigram) tokenizer with T5's special tokens, built offline."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for char in string.ascii_letters + string.digits + ",.'-":
        vocab += [("\u2581" + char, -3.0), (char, -4.0)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def save_tiny(folder: Path) -> Path:
    """Build the tiny pipeline with fixed seeds and save it into `folder` (diffusers' native layout)."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                           num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.1))
    projection_model = StableAudioProjectionModel(text_encoder_dim=16, conditioning_dim=8, min_value=0, max_value=32)
    transformer = StableAudioDiTModel(
        sample_size=FRAMES, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=16, time_proj_dim=8,
        global_states_input_dim=16, cross_attention_input_dim=8,
    )
    vae = AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[4, 8], channel_multiples=[1, 2],
                             decoder_channels=8, decoder_input_channels=4, audio_channels=2, sampling_rate=SAMPLE_RATE)
    scheduler = CosineDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
                                                  sigma_schedule="exponential")
    pipeline = StableAudioPipeline(vae=vae, text_encoder=text_encoder, projection_model=projection_model,
                                   tokenizer=tokenizer, transformer=transformer, scheduler=scheduler)
    folder.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(folder)
    return folder
