"""The toy world's MusicGen: a transformers `MusicgenForConditionalGeneration` built small, on the toy EnCodec
(`build_toy_encodec`, trained by `lightning_modules.codec_training.CodecTraining`), a tiny T5 encoder with a
word-level T5 tokenizer over the corpus vocabulary (the words of the toy CLAP's tokenizer, built from the corpus
captions), and a small decoder over the codec's four codebooks.

`ToyMusicGen` is the `MusicGen` backend on such a freshly built model, so that it trains through
`TextToMusicTraining` like any checkpoint; what it saves is an ordinary MusicGen folder, loaded back by `MusicGen`
(``configs/model/toy_musicgen.yaml``) or by transformers' own classes. The text encoder stays at its random
initialisation and frozen, as MusicGen freezes its T5: the decoder learns to read its states.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import (
    AutoTokenizer,
    EncodecConfig,
    EncodecFeatureExtractor,
    EncodecModel,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    PreTrainedTokenizerBase,
    T5Config,
    T5Tokenizer,
)
from transformers.utils import logging as hf_logging

from lightning_modules.models.base import TextToMusicModel, check_pretrained
from lightning_modules.models.musicgen import MusicGen

CODEC_SETTINGS = {  # 16 kHz, hop 320 (50 frames a second), 4 codebooks of 256 codes: 1.6 kbps
    "upsampling_ratios": [8, 5, 4, 2],
    "target_bandwidths": [1.6],
    "codebook_size": 256,
    "num_filters": 8,
    "hidden_size": 64,
    "num_lstm_layers": 1,
}


def build_toy_encodec(sample_rate: int = 16000, **overrides: object) -> EncodecModel:
    """A randomly initialised EnCodec of `CODEC_SETTINGS` (with `overrides`) at `sample_rate`; its codebooks are
    zeros until training initialises them.

    The weight-normalised convolutions are initialised again, He-normal through their parametrisation: transformers'
    initialisation writes to the computed weight, which leaves the parametrised convolutions at PyTorch's default, a
    gain of about 1/sqrt(3) per layer; through the codec's 20 layers that made its output 50 times quieter than its
    input, and 300 training steps did not lift it (an autoencoder overfitting 8 clips: squared error 0.0526 after 200
    steps against 0.0009 with this initialisation, the clips' power 0.053)."""
    settings = {"normalize": False, "chunk_length_s": None, "overlap": None, **CODEC_SETTINGS, **overrides}
    model = EncodecModel(EncodecConfig(sampling_rate=sample_rate, **settings))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and parametrize.is_parametrized(module, "weight"):
                weight = torch.empty_like(module.weight)
                # fan-in is the input channels times the kernel: dim 1 of a Conv1d's weight, dim 0 of a transposed one's
                nn.init.kaiming_normal_(weight if isinstance(module, nn.Conv1d) else weight.transpose(0, 1),
                                        nonlinearity="linear")
                module.weight = weight  # through the parametrisation: sets its direction and norm
    return model


def build_t5_tokenizer(words: Iterable[str], max_length: int = 64) -> T5Tokenizer:
    """A T5 (Unigram) tokenizer whose pieces are the whole `words`, lower-case and capitalised, and, far less likely,
    every letter, digit and punctuation mark, so that any text tokenises without an unknown piece. (T5 tokenizers
    rebuild their normaliser when loaded, so case is covered by the pieces, not by lower-casing.)"""
    pieces = sorted({variant for word in words for variant in (word.lower(), word.capitalize())})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{piece}", -1.0) for piece in pieces]
    vocab += [(char, -5.0) for char in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def vocabulary_of(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The words of a word-level tokenizer (the toy CLAP's): its vocabulary without the special tokens."""
    return sorted(set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens))


def build_toy_musicgen(
    codec: str | Path,
    vocabulary: str | Path = "checkpoints/toy/clap",
    text_hidden_size: int = 64,
    text_layers: int = 2,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    ffn_dim: int = 512,
    max_positions: int = 512,
    seed: int = 0,
) -> tuple[MusicgenForConditionalGeneration, MusicgenProcessor]:
    """A MusicGen with random text encoder and decoder around the trained EnCodec folder `codec`, and its processor
    (the codec's feature extractor settings, a T5 tokenizer over the words of the tokenizer in `vocabulary`)."""
    codec = check_pretrained(codec, "config.json", "checkpoints/toy/encodec")
    audio = EncodecModel.from_pretrained(str(codec))
    words = vocabulary_of(AutoTokenizer.from_pretrained(check_pretrained(vocabulary, "tokenizer.json",
                                                                         "checkpoints/toy/clap")))
    tokenizer = build_t5_tokenizer(words)
    bins = audio.config.codebook_size
    text_config = T5Config(vocab_size=len(tokenizer), d_model=text_hidden_size, d_kv=text_hidden_size // 4,
                           d_ff=2 * text_hidden_size, num_layers=text_layers, num_heads=4,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # pad / start token ids one past the codebook are MusicGen's design
    try:
        decoder_config = MusicgenDecoderConfig(
            vocab_size=bins, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
            ffn_dim=ffn_dim, max_position_embeddings=max_positions, num_codebooks=audio.quantizer.num_quantizers,
            pad_token_id=bins, bos_token_id=bins, decoder_start_token_id=bins, tie_word_embeddings=False,
            audio_channels=1,
        )
        config = MusicgenConfig(text_encoder=text_config, audio_encoder=audio.config, decoder=decoder_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MusicgenForConditionalGeneration(config)
    finally:
        hf_logging.set_verbosity(previous)
    model.audio_encoder.load_state_dict(audio.state_dict())
    generation = model.generation_config
    generation.do_sample, generation.guidance_scale, generation.top_k = True, 3.0, 50
    for name in ("pad_token_id", "bos_token_id", "decoder_start_token_id"):
        setattr(generation, name, bins)
    processor = MusicgenProcessor(
        feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=audio.config.sampling_rate,
                                                  padding_value=0.0),
        tokenizer=tokenizer,
    )
    return model, processor


class ToyMusicGen(MusicGen):
    """The `MusicGen` backend on a new toy MusicGen (`build_toy_musicgen`): the model the toy configs train.

    Args:
        codec: folder of the trained toy EnCodec.
        vocabulary: folder of a word-level tokenizer whose words the T5 tokenizer takes (the toy CLAP's).
        duration: clip length trained on, in seconds (the toy corpus's 2.048 s).
        guidance_scale: classifier-free guidance scale of `generate`.
        text_hidden_size: width of the T5 encoder.
        text_layers: layers of the T5 encoder.
        hidden_size: width of the decoder.
        num_layers: layers of the decoder.
        num_heads: attention heads of the decoder.
        ffn_dim: width of the decoder's feed-forward layers.
        seed: seed of the random initialisation.
    """

    targets_backend = "MusicGen"  # its codes are the MusicGen backend's: one target cache serves both

    def __init__(
        self,
        codec: str = "checkpoints/toy/encodec",
        vocabulary: str = "checkpoints/toy/clap",
        duration: float = 2.048,
        guidance_scale: float = 3.0,
        text_hidden_size: int = 64,
        text_layers: int = 2,
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        ffn_dim: int = 512,
        seed: int = 0,
    ) -> None:
        TextToMusicModel.__init__(self)
        model, processor = build_toy_musicgen(codec, vocabulary, text_hidden_size, text_layers, hidden_size, num_layers,
                                              num_heads, ffn_dim, seed=seed)
        self.attach(model, processor, codec, duration, guidance_scale)
