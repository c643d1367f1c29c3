"""A tiny random AudioLDM 2 (`diffusers.AudioLDM2Pipeline`), shaped as diffusers' own
``tests/pipelines/audioldm2/test_audioldm2.py::get_dummy_components``: a two-level `AudioLDM2UNet2DConditionModel`
whose attention level has a self-attention transformer and cross-attention to both streams (GPT-2's generated
embeddings, width 16, and T5's states, width 32), AudioLDM's tiny VAE, vocoder and schedule, a tiny CLAP, a one-layer
T5 encoder, a one-layer GPT-2 generating 8 embeddings, the projection model, and offline character-level RoBERTa and
T5 tokenizers."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
from transformers import ClapFeatureExtractor, GPT2Config, GPT2Model, T5Config, T5EncoderModel, T5TokenizerFast

from tests.tiny.audioldm import CHARACTERS, MAX_LENGTH, TEXT_DIM, roberta_tokenizer, scheduler, vae, vocoder
from tests.tiny.musicldm import clap_model

T5_DIM = 32
MAX_NEW_TOKENS = 8


def t5_tokenizer() -> T5TokenizerFast:
    """T5's own Unigram tokenizer (SentencePiece style, "▁" marks a word start) over single characters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(char, -3.0) for char in CHARACTERS.upper() + CHARACTERS if char != " "]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=MAX_LENGTH)


def unet() -> AudioLDM2UNet2DConditionModel:
    return AudioLDM2UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=([None, TEXT_DIM, T5_DIM], [None, TEXT_DIM, T5_DIM]), attention_head_dim=2,
        norm_num_groups=8)


def save_tiny(folder: Path) -> Path:
    """Build a tiny random AudioLDM 2 pipeline and save it with `save_pretrained` into `folder`."""
    torch.manual_seed(0)
    tokenizer, tokenizer_2 = roberta_tokenizer(), t5_tokenizer()
    language_model = GPT2Model(GPT2Config(n_embd=TEXT_DIM, n_head=2, n_layer=1, vocab_size=8, n_positions=128,
                                           bos_token_id=0, eos_token_id=0))
    language_model.config.max_new_tokens = MAX_NEW_TOKENS
    pipeline = AudioLDM2Pipeline(
        vae=vae(), text_encoder=clap_model(len(tokenizer)),
        text_encoder_2=T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=T5_DIM, d_ff=37, d_kv=8,
                                               num_heads=2, num_layers=1)),
        projection_model=AudioLDM2ProjectionModel(text_encoder_dim=TEXT_DIM, text_encoder_1_dim=T5_DIM,
                                                  langauge_model_dim=TEXT_DIM),
        language_model=language_model, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        feature_extractor=ClapFeatureExtractor(), unet=unet(), scheduler=scheduler(), vocoder=vocoder())
    pipeline.save_pretrained(folder)
    return folder
