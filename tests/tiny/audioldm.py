"""A tiny random AudioLDM (`diffusers.AudioLDMPipeline`): components shaped as in diffusers' own
``tests/pipelines/audioldm/test_audioldm.py::get_dummy_components`` (a two-level UNet conditioned through
``class_labels`` only, a two-level VAE over 64-band mels, a one-layer CLAP text tower, a tiny HiFi-GAN vocoder with
AudioLDM's hop of 160 samples at 16 kHz) and an offline character-level RoBERTa tokenizer. The helpers here are
shared by the MusicLDM and AudioLDM2 tiny models."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    PreTrainedTokenizerFast,
    RobertaTokenizerFast,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

CHARACTERS = string.ascii_lowercase + string.digits + " .,'-"
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # pad_token_id = 1, as CLAP's RoBERTa text tower expects
MAX_LENGTH = 48
N_MELS = 64
TEXT_DIM = 16


def char_tokenizer(cls: type[PreTrainedTokenizerFast], specials: tuple[str, ...], single: str,
                   **tokens: str) -> PreTrainedTokenizerFast:
    """A lower-cased character-level tokenizer of class `cls` (built offline with the `tokenizers` library)."""
    vocab = {token: i for i, token in enumerate(specials)}
    vocab.update({char: len(specials) + i for i, char in enumerate(CHARACTERS)})
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=tokens["unk_token"]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(token, vocab[token]) for token in specials if token in single])
    return cls(tokenizer_object=tokenizer, model_max_length=MAX_LENGTH, **tokens)


def roberta_tokenizer() -> RobertaTokenizerFast:
    return char_tokenizer(RobertaTokenizerFast, ROBERTA_SPECIALS, "<s> $A </s>", bos_token="<s>", pad_token="<pad>",
                          eos_token="</s>", unk_token="<unk>", cls_token="<s>", sep_token="</s>", mask_token="<unk>")


def clap_text_config(vocab_size: int) -> ClapTextConfig:
    return ClapTextConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=32, num_attention_heads=2,
                          num_hidden_layers=1, projection_dim=TEXT_DIM, max_position_embeddings=MAX_LENGTH + 2,
                          bos_token_id=0, eos_token_id=2, pad_token_id=1)


def vae() -> AutoencoderKL:
    return AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16), latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, scaling_factor=0.9)


def vocoder() -> SpeechT5HifiGan:
    """HiFi-GAN from 64-band mels at 16 kHz, hop 8 * 5 * 4 = 160 samples, as AudioLDM's."""
    return SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=N_MELS, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[8, 5, 4],
        upsample_kernel_sizes=[16, 10, 8], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        normalize_before=False, initializer_range=0.3))


def scheduler() -> DDIMScheduler:
    """AudioLDM's schedule: scaled-linear betas from 0.0015 to 0.0195 over 1000 steps, epsilon prediction."""
    return DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False)


def film_unet() -> UNet2DConditionModel:
    """AudioLDM's / MusicLDM's UNet: text only through ``class_labels`` (FiLM, concatenated to the time embedding);
    ``cross_attention_dim`` equals each level's width because ``attn2`` attends to the latent itself."""
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(16, 32), attention_head_dim=2, norm_num_groups=8, class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=TEXT_DIM, class_embeddings_concat=True)


def save_tiny(folder: Path) -> Path:
    """Build a tiny random AudioLDM pipeline and save it with `save_pretrained` into `folder`."""
    torch.manual_seed(0)
    tokenizer = roberta_tokenizer()
    pipeline = AudioLDMPipeline(
        vae=vae(), text_encoder=ClapTextModelWithProjection(clap_text_config(len(tokenizer))), tokenizer=tokenizer,
        unet=film_unet(), scheduler=scheduler(), vocoder=vocoder())
    pipeline.save_pretrained(folder)
    return folder
