"""The toy world's CLAP: a transformers `ClapModel` with a tiny configuration and a word-level tokenizer built from
the corpus captions, saved as an ordinary transformers folder (model, feature extractor, tokenizer).

It conditions the toy text-to-music model and serves the metrics, loaded through the same `ClapModel` /
`ClapProcessor` code path as LAION CLAP checkpoints. Follows CLAP (Elizalde et al., 2023; Wu et al., 2023).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    ClapTextConfig,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # RoBERTa's order: ClapTextModel expects pad_token_id = 1


def build_tokenizer(captions: Iterable[str], max_length: int = 32) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer over the words of `captions`, with RoBERTa's special tokens."""
    split = pre_tokenizers.Whitespace()
    words = sorted({word for caption in captions for word, _ in split.pre_tokenize_str(caption.lower())})
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({word: len(SPECIAL_TOKENS) + i for i, word in enumerate(words)})
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = split
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def build_feature_extractor(sample_rate: int, num_mel_bins: int, max_length_s: int) -> ClapFeatureExtractor:
    """CLAP's log-mel front end at the toy world's rate; clips shorter than `max_length_s` are repeat-padded."""
    return ClapFeatureExtractor(
        feature_size=num_mel_bins,
        sampling_rate=sample_rate,
        hop_length=sample_rate * max_length_s // 120,  # ~120 frames, within the spectrogram size below
        fft_window_size=1024,
        max_length_s=max_length_s,
        frequency_min=40,
        frequency_max=sample_rate // 2,
        truncation="rand_trunc",
        padding="repeatpad",
    )


def build_toy_clap(
    tokenizer: PreTrainedTokenizerFast,
    sample_rate: int = 16000,
    max_length_s: int = 3,
    hidden_size: int = 64,
    projection_dim: int = 64,
    num_text_layers: int = 2,
    num_mel_bins: int = 32,
) -> tuple[ClapModel, ClapProcessor]:
    """A randomly initialised tiny CLAP and its processor (feature extractor and `tokenizer`)."""
    text_config = ClapTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size // 2,
        num_hidden_layers=num_text_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size,
        max_position_embeddings=tokenizer.model_max_length + 2,
        projection_dim=projection_dim,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    audio_config = ClapAudioConfig(
        spec_size=2 * num_mel_bins,
        num_mel_bins=num_mel_bins,
        window_size=4,
        patch_size=4,
        patch_stride=4,
        patch_embeds_hidden_size=hidden_size // 2,
        hidden_size=hidden_size,
        depths=[2, 2],
        num_attention_heads=[2, 4],
        num_hidden_layers=2,
        projection_dim=projection_dim,
        enable_fusion=False,
    )
    config = ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(),
                        projection_dim=projection_dim)
    processor = ClapProcessor(build_feature_extractor(sample_rate, num_mel_bins, max_length_s), tokenizer)
    return ClapModel(config), processor
