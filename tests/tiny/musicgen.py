"""A tiny random MusicGen (T5 text encoder, 32 kHz EnCodec, four-codebook decoder) and its processor, built as
transformers' ``tests/models/musicgen/test_modeling_musicgen.py`` builds its configurations and saved with
``save_pretrained`` as a ``MusicgenForConditionalGeneration`` folder, like ``facebook/musicgen-small``."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import (
    EncodecConfig,
    EncodecFeatureExtractor,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    T5Config,
    T5Tokenizer,
)
from transformers.utils import logging as hf_logging

SAMPLE_RATE = 32000
CODEBOOK_SIZE = 64
NUM_CODEBOOKS = 4
WORDS = ("a", "piece", "by", "music", "calm", "song", "the")


def build_tokenizer() -> T5Tokenizer:
    """A T5 (Unigram) tokenizer over a few words and every letter and digit, so any lower- or upper-case text
    tokenises without a sentencepiece model."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{word}", -1.0) for word in WORDS]
    vocab += [(char, -3.0) for char in string.ascii_letters + string.digits + "-'"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


@torch.no_grad()
def _init_codebooks(codec: torch.nn.Module) -> None:
    """Residual codebooks drawn from the encoder's own frames of noise (as k-means initialisation starts), since
    transformers initialises them to zeros, which would give every frame the code 0."""
    frames = codec.encoder(0.1 * torch.randn(8, 1, SAMPLE_RATE)).transpose(1, 2).flatten(0, 1)
    for layer in codec.quantizer.layers:
        book = layer.codebook
        book.embed.copy_(frames[torch.randperm(frames.shape[0])[: book.embed.shape[0]]])
        book.embed_avg.copy_(book.embed)
        frames = frames - layer.decode(layer.encode(frames.T[None])).transpose(1, 2)[0]


def save_tiny(folder: Path) -> Path:
    """Build the tiny MusicGen and its processor and save both into `folder`; returns `folder`."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    text_config = T5Config(vocab_size=len(tokenizer), d_model=12, d_kv=4, d_ff=16, num_layers=1, num_heads=3,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    audio_config = EncodecConfig(  # 32 kHz, hop 640 (50 frames a second), 4 codebooks of 64 codes at 1.2 kbps
        sampling_rate=SAMPLE_RATE, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[1.2],
        codebook_size=CODEBOOK_SIZE, codebook_dim=8, hidden_size=8, num_filters=2, num_lstm_layers=1, compress=2,
        normalize=False, use_causal_conv=False, pad_mode="reflect",
    )
    decoder_config = MusicgenDecoderConfig(
        vocab_size=CODEBOOK_SIZE, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, ffn_dim=32,
        max_position_embeddings=256, num_codebooks=NUM_CODEBOOKS, initializer_factor=0.2, pad_token_id=CODEBOOK_SIZE,
        bos_token_id=CODEBOOK_SIZE, decoder_start_token_id=CODEBOOK_SIZE, tie_word_embeddings=False, audio_channels=1,
    )
    config = MusicgenConfig(text_encoder=text_config, audio_encoder=audio_config, decoder=decoder_config)
    previous_verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # pad / start token ids one past the codebook are MusicGen's design
    try:
        model = MusicgenForConditionalGeneration(config).eval()
    finally:
        hf_logging.set_verbosity(previous_verbosity)
    _init_codebooks(model.audio_encoder)
    generation = model.generation_config
    generation.do_sample, generation.guidance_scale, generation.top_k = True, 3.0, 16
    generation.max_length = 1500  # as the public checkpoints: 30 s
    for name in ("pad_token_id", "bos_token_id", "decoder_start_token_id"):
        setattr(generation, name, CODEBOOK_SIZE)
    processor = MusicgenProcessor(
        feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0),
        tokenizer=tokenizer,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
