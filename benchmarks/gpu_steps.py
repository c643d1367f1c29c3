"""Benchmark: one real-size training step per backend, on a GPU, with random weights.

For each backend it builds the architecture of the released checkpoint (the configuration written out below, each
with its source; random weights: a step's cost does not depend on them), saves it in the family's native format
(diffusers pipeline or transformers MusicGen folder), loads it through the backend's own loading code with the
settings of its ``configs/model/*.yaml`` (the clip length trained on), and trains: the model's ``loss`` on a batch of
random audio and captions, backward, an AdamW step over the ``all`` parameter group, under bf16 autocast. It records
the parameters, the peak CUDA memory (``torch.cuda.max_memory_allocated``, reset per backend, so weights, gradients,
optimizer states and activations), the median step time after a warm-up, whether every loss was finite and whether
the weights moved. Rows are merged into the results file by (backend, device), so one backend's run (as each GPU test
makes) leaves the others' rows in place.

What is not the released model: the tokenizers are character-level ones built offline (tests/tiny), with the real
tokenizers' ``model_max_length``, since the BPE / SentencePiece vocabularies live on the hub; every text encoder keeps
its real vocabulary size and all its weights. Nothing is shrunk: every component has its released size. The VAE
scaling factors of MusicLDM and AudioLDM2-music are stand-ins (learned per checkpoint; the cost does not depend on
them), as are MusicGen's codebooks (fitted to the random codec's frames of noise).

    python benchmarks/gpu_steps.py                             # every backend on CUDA -> results/gpu_steps.json
    python benchmarks/gpu_steps.py --device cpu --backends toy  # the same code path on the CPU, for checking
    python benchmarks/gpu_steps.py --device cpu --backends musicgen --batch-size 1 --duration 2.56 --steps 1
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from lightning_modules.io import write_json_atomic  # noqa: E402

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "gpu_steps.json"
BACKENDS = ("toy", "audioldm", "musicldm", "audioldm2", "stable_audio", "musicgen")
MODEL_CONFIGS = {  # the settings each backend is loaded with (duration, checkpointing, ...), pretrained replaced
    "toy": "toy_base.yaml", "audioldm": "audioldm_s_full_v2.yaml", "musicldm": "musicldm.yaml",
    "audioldm2": "audioldm2_music.yaml", "stable_audio": "stable_audio_open.yaml", "musicgen": "musicgen_small.yaml",
}
WORDS = ("calm", "piano", "bright", "synth", "drums", "ambient", "guitar", "slow", "fast", "jazz", "a", "piece")

# Published sizes to check the built architectures against: {backend: {component: (parameters, relative tolerance,
# source)}}. Hub file sizes are fp32 safetensors shown to 3 significant figures (+-0.2 % at most) and also hold a few
# buffers and a header, so 1 %; model-card figures are taken at their rounding ("1.1B": 5 %, "350M": 2 %).
PUBLISHED: dict[str, dict[str, tuple[float, float, str]]] = {
    "audioldm": {
        "unet": (740e6 / 4, 0.01, "cvssp/audioldm-s-full-v2 unet/diffusion_pytorch_model.safetensors, 740 MB fp32"),
        "vae": (222e6 / 4, 0.01, "cvssp/audioldm-s-full-v2 vae/diffusion_pytorch_model.safetensors, 222 MB fp32"),
        "total": (421e6, 0.01, "cvssp/audioldm-s-full-v2 model card, Table 1: 421M"),
    },
    "musicldm": {
        "unet": (740e6 / 4, 0.01, "ucsd-reach/musicldm unet/diffusion_pytorch_model.safetensors, 740 MB fp32"),
        "vae": (222e6 / 4, 0.01, "ucsd-reach/musicldm vae/diffusion_pytorch_model.safetensors, 222 MB fp32"),
        "text_encoder": (776e6 / 4, 0.01, "ucsd-reach/musicldm text_encoder/model.safetensors, 776 MB fp32"),
    },
    "audioldm2": {
        "unet": (350e6, 0.02, "cvssp/audioldm2-music model card: UNet 350M"),
        "total": (1.1e9, 0.05, "cvssp/audioldm2-music model card: total 1.1B"),
    },
    "stable_audio": {
        "transformer": (4_227_806_200 / 4, 0.01,
                        "stable-audio-open-1.0 transformer/diffusion_pytorch_model.safetensors, 4,227,806,200 B fp32"),
        "vae": (156e6, 0.01, "Evans et al. 2024, Stable Audio Open (arXiv:2407.14358): autoencoder 156M"),
        "text_encoder": (109e6, 0.01, "Evans et al. 2024, Stable Audio Open (arXiv:2407.14358): T5 109M"),
    },
    "musicgen": {
        "total": (2.36e9 / 4, 0.01, "facebook/musicgen-small model.safetensors, 2.36 GB fp32"),
        "trained": (841e6 / 2, 0.01, "facebook/musicgen-small state_dict.bin (audiocraft LM), 841 MB at 2 B a weight "
                                     "(the model card's '300M' is a nominal label)"),
    },
}


# --------------------------------------------------------------------------------------------------- architectures
def _clap_text() -> Any:
    """CLAP's RoBERTa-base text tower: ``ClapTextConfig.from_pretrained("laion/clap-htsat-unfused")``, as diffusers'
    scripts/convert_original_{audioldm,audioldm2}_to_diffusers.py build it (transformers' defaults are that config)."""
    from transformers import ClapTextConfig

    return ClapTextConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                          projection_dim=512, projection_hidden_act="relu")


def _clap_model() -> nn.Module:
    """The full music CLAP (HTSAT-base audio tower): ucsd-reach/musicldm and cvssp/audioldm2-* text_encoder/config.json,
    and convert_original_musicldm_to_diffusers.py (patch_embeds_hidden_size 128, hidden_size 1024, depths 2-2-12-2)."""
    from transformers import ClapAudioConfig, ClapConfig, ClapModel

    audio = ClapAudioConfig(depths=[2, 2, 12, 2], hidden_size=1024, patch_embeds_hidden_size=128,
                            projection_hidden_size=768, fusion_num_hidden_layers=2)
    return ClapModel(ClapConfig(text_config=_clap_text().to_dict(), audio_config=audio.to_dict(), projection_dim=512,
                                projection_hidden_act="relu", logit_scale_init_value=14.285714285714285))


def _vae(scaling_factor: float) -> nn.Module:
    """The mel VAE shared by AudioLDM, MusicLDM and AudioLDM 2 (DEFAULT_CONFIG of the conversion scripts: ch 128,
    ch_mult 1-2-4, 2 res blocks, z 8; the hubs' vae/config.json). The scaling factor is learned per checkpoint."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(128, 256, 512), latent_channels=8,
                         layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32, scaling_factor=scaling_factor)


def _vocoder() -> nn.Module:
    """HiFi-GAN at 16 kHz from 64 mels, hop 160 (vocoder_config of the conversion scripts' DEFAULT_CONFIG)."""
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    return SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4], resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5]] * 3, normalize_before=False))


def _mel_unet_config(sample_size: int) -> dict:
    """The UNet levels of AudioLDM-S, MusicLDM and AudioLDM 2 (model_channels 128, channel_mult 1-2-3-5, 2 res blocks,
    attention at the three lower levels: the conversion scripts' DEFAULT_CONFIG; the hubs' unet/config.json)."""
    return dict(sample_size=sample_size, in_channels=8, out_channels=8, block_out_channels=(128, 256, 384, 640),
                layers_per_block=2, attention_head_dim=8, norm_num_groups=32,
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
                up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",))


def _t5_base() -> Any:
    """T5-base (t5_model_name of Stable Audio Open's model config; the text encoder MusicGen's conversion loads)."""
    from transformers import T5Config

    return T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                    feed_forward_proj="relu", relative_attention_num_buckets=32)


def _ddim() -> Any:
    """AudioLDM's schedule (scaled-linear betas 0.0015 to 0.0195, epsilon), built on the CPU whatever the device."""
    from tests.tiny.audioldm import scheduler

    with torch.device("cpu"):
        return scheduler()


def _roberta_tokenizer() -> Any:
    from tests.tiny.audioldm import roberta_tokenizer

    tokenizer = roberta_tokenizer()
    tokenizer.model_max_length = 512  # the hubs' tokenizer/tokenizer_config.json (the pipelines pad to it)
    return tokenizer


def _film_unet(sample_size: int) -> nn.Module:
    """AudioLDM's and MusicLDM's UNet: the text enters only as the 512-d CLAP embedding concatenated to the time
    embedding (extra_film_condition_dim, extra_film_use_concat); attn2 attends to the latent (cross_attention_dim is
    each level's width)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**_mel_unet_config(sample_size), cross_attention_dim=(128, 256, 384, 640),
                                class_embed_type="simple_projection", projection_class_embeddings_input_dim=512,
                                class_embeddings_concat=True)


def audioldm_components() -> dict[str, Any]:
    """cvssp/audioldm-s-full-v2: diffusers' scripts/convert_original_audioldm_to_diffusers.py DEFAULT_CONFIG (image_size
    512 -> sample_size 128) with CLAP's text tower; the VAE's scaling as benchmarks/target_cache.py."""
    from transformers import ClapTextModelWithProjection

    return {"vae": _vae(0.9227), "text_encoder": ClapTextModelWithProjection(_clap_text()),
            "tokenizer": _roberta_tokenizer(), "unet": _film_unet(128), "scheduler": _ddim(), "vocoder": _vocoder()}


def musicldm_components() -> dict[str, Any]:
    """ucsd-reach/musicldm: scripts/convert_original_musicldm_to_diffusers.py (AudioLDM-S's UNet at image_size 1024 ->
    sample_size 256, i.e. 10.24 s) with the full music CLAP; VAE scaling as AudioLDM's (it does not change the cost)."""
    from transformers import ClapFeatureExtractor

    return {"vae": _vae(0.9227), "text_encoder": _clap_model(), "tokenizer": _roberta_tokenizer(),
            "feature_extractor": ClapFeatureExtractor(), "unet": _film_unet(256), "scheduler": _ddim(),
            "vocoder": _vocoder()}


def audioldm2_components() -> dict[str, Any]:
    """cvssp/audioldm2-music: unet/config.json (per level a self-attention transformer and cross-attention to GPT-2's
    768-d and Flan-T5's 1024-d states, sample_size 256), convert_original_audioldm2_to_diffusers.py (CLAP, Flan-T5-large
    encoder with its tokenizer cut at 128 tokens, GPT-2 base generating 8 embeddings, the projection model), VAE
    scaling of cvssp/audioldm2's vae/config.json."""
    from diffusers import AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
    from transformers import ClapFeatureExtractor, GPT2Config, GPT2Model, T5Config, T5EncoderModel

    from tests.tiny.audioldm2 import t5_tokenizer

    tokenizer_2 = t5_tokenizer()
    tokenizer_2.model_max_length = 128
    flan_t5_large = T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
                             feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                             tie_word_embeddings=False)
    language_model = GPT2Model(GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12))
    language_model.config.max_new_tokens = 8
    unet = AudioLDM2UNet2DConditionModel(**_mel_unet_config(256), cross_attention_dim=([None, 768, 1024],) * 4)
    return {"vae": _vae(0.4110932946205139), "text_encoder": _clap_model(),
            "text_encoder_2": T5EncoderModel(flan_t5_large),
            "projection_model": AudioLDM2ProjectionModel(text_encoder_dim=512, text_encoder_1_dim=1024,
                                                         langauge_model_dim=768),
            "language_model": language_model, "tokenizer": _roberta_tokenizer(), "tokenizer_2": tokenizer_2,
            "feature_extractor": ClapFeatureExtractor(), "unet": unet, "scheduler": _ddim(),
            "vocoder": _vocoder()}


def stable_audio_components() -> dict[str, Any]:
    """stabilityai/stable-audio-open-1.0: transformer/, vae/ and projection_model/config.json (diffusers' defaults of
    StableAudioDiTModel and AutoencoderOobleck are these), the T5-base text encoder (t5_model_name of
    scripts/convert_stable_audio.py's model config, max_length 128), the scheduler's sigma range of that script."""
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioProjectionModel,
    )
    from transformers import T5EncoderModel

    from tests.tiny.stable_audio import build_tokenizer

    transformer = StableAudioDiTModel(
        sample_size=1024, in_channels=64, num_layers=24, attention_head_dim=64, num_attention_heads=24,
        num_key_value_attention_heads=12, out_channels=64, cross_attention_dim=768, time_proj_dim=256,
        global_states_input_dim=1536, cross_attention_input_dim=768)
    vae = AutoencoderOobleck(encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 8, 8],
                             channel_multiples=[1, 2, 4, 8, 16], decoder_channels=128, decoder_input_channels=64,
                             audio_channels=2, sampling_rate=44100)
    with torch.device("cpu"):  # its sigmas are real tensors, also when the networks are built on the meta device
        scheduler = CosineDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500, sigma_data=1.0, solver_order=2,
                                                      prediction_type="v_prediction", sigma_schedule="exponential")
    return {"vae": vae, "text_encoder": T5EncoderModel(_t5_base()), "tokenizer": build_tokenizer(128),
            "projection_model": StableAudioProjectionModel(text_encoder_dim=768, conditioning_dim=768, min_value=0,
                                                           max_value=512),
            "transformer": transformer, "scheduler": scheduler}


def encodec_32khz() -> Any:
    """facebook/encodec_32khz's config.json, written out: 32 kHz, hop 640, 4 codebooks of 2048 at 2.2 kbps (MusicGen
    small, medium and large share it)."""
    from transformers import EncodecConfig

    return EncodecConfig(
        sampling_rate=32000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2],
        codebook_size=2048, codebook_dim=128, hidden_size=128, num_filters=64, num_residual_layers=1,
        num_lstm_layers=2, compress=2, dilation_growth_rate=2, kernel_size=7, last_kernel_size=7,
        residual_kernel_size=3, norm_type="weight_norm", normalize=False, use_causal_conv=False, pad_mode="reflect",
        chunk_length_s=None, overlap=None, trim_right_ratio=1.0, use_conv_shortcut=False)


def musicgen_components() -> dict[str, Any]:
    """facebook/musicgen-small: transformers' convert_musicgen_transformers.py (decoder 1024 wide, 24 layers, 16 heads,
    ffn 4 x 1024, 4 codebooks of 2048; T5-base text encoder; facebook/encodec_32khz, `encodec_32khz`)."""
    from transformers import MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration

    decoder = MusicgenDecoderConfig(
        vocab_size=2048, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096,
        max_position_embeddings=2048, num_codebooks=4, audio_channels=1, pad_token_id=2048, bos_token_id=2048,
        decoder_start_token_id=2048, tie_word_embeddings=False)
    config = MusicgenConfig(text_encoder=_t5_base(), audio_encoder=encodec_32khz(), decoder=decoder)
    return {"model": MusicgenForConditionalGeneration(config)}


COMPONENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "audioldm": audioldm_components, "musicldm": musicldm_components, "audioldm2": audioldm2_components,
    "stable_audio": stable_audio_components, "musicgen": musicgen_components,
}


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence, while building, transformers' notes on MusicGen's pad / start ids one past the codebook (its design)
    and torch's deprecation of the ``weight_norm`` that EnCodec and Oobleck use."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(previous)


def _numel(module: nn.Module) -> int:
    return sum(param.numel() for param in module.parameters())


def parameter_counts(backend: str) -> dict[str, int]:
    """Parameters per component of `backend`'s released architecture and their ``total``, built on the meta device
    (no memory, no initialisation): what `PUBLISHED` is checked against. MusicGen's are ``text_encoder``,
    ``audio_encoder`` and ``trained`` (decoder and text projection)."""
    with torch.device("meta"), _quiet():
        components = COMPONENTS[backend]()
    modules = {name: part for name, part in components.items() if isinstance(part, nn.Module)}
    if backend == "musicgen":
        model = modules.pop("model")
        modules = {"text_encoder": model.text_encoder, "audio_encoder": model.audio_encoder,
                   "trained": nn.ModuleList([model.decoder, model.enc_to_dec_proj])}
    counts = {name: _numel(module) for name, module in modules.items()}
    counts["total"] = sum(counts.values())
    return counts


def published_comparison(backend: str) -> dict[str, dict[str, Any]]:
    """For each published size of `backend`: ours, the published one, their relative difference and the source."""
    counts = parameter_counts(backend) if backend in PUBLISHED else {}
    return {name: {"parameters": counts[name], "published": round(value), "relative_difference":
                   counts[name] / value - 1, "tolerance": tolerance, "source": source}
            for name, (value, tolerance, source) in PUBLISHED.get(backend, {}).items()}


# ------------------------------------------------------------------------------------------- checkpoints, loading
def write_checkpoint(backend: str, folder: Path) -> Path:
    """Build `backend`'s real-size architecture with random weights (seed 0) and save it into `folder` with the
    library's ``save_pretrained``; the toy model is the shipped architecture over the shipped toy CLAP."""
    torch.manual_seed(0)
    if backend == "toy":
        from lightning_modules.models import ToyArchitecture, ToyTextToMusic

        ToyTextToMusic(text_encoder=str(REPO / "checkpoints" / "toy" / "clap"),
                       architecture=ToyArchitecture()).save_pretrained(folder)
        return folder
    from diffusers import AudioLDM2Pipeline, AudioLDMPipeline, MusicLDMPipeline, StableAudioPipeline

    pipelines = {"audioldm": AudioLDMPipeline, "musicldm": MusicLDMPipeline, "audioldm2": AudioLDM2Pipeline,
                 "stable_audio": StableAudioPipeline}
    with _quiet():
        components = COMPONENTS[backend]()
        if backend == "musicgen":
            _save_musicgen(components["model"], folder)
        else:
            pipelines[backend](**components).save_pretrained(folder)
    return folder


def _save_musicgen(model: nn.Module, folder: Path) -> None:
    """The model with codebooks fitted to its codec's frames (see `_init_codebooks`), the public checkpoint's
    generation settings, and a processor (EnCodec features, an offline T5 tokenizer)."""
    from transformers import EncodecFeatureExtractor, MusicgenProcessor

    from tests.tiny.musicgen import build_tokenizer

    _init_codebooks(model.audio_encoder, model.config.audio_encoder.codebook_size)
    generation = model.generation_config
    generation.do_sample, generation.guidance_scale, generation.top_k, generation.max_length = True, 3.0, 250, 1500
    for name in ("pad_token_id", "bos_token_id", "decoder_start_token_id"):
        setattr(generation, name, model.config.decoder.vocab_size)
    model.save_pretrained(folder)
    MusicgenProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=32000),
                      tokenizer=build_tokenizer()).save_pretrained(folder)


@torch.no_grad()
def _init_codebooks(codec: nn.Module, codebook_size: int) -> None:
    """Each residual codebook drawn from a Gaussian fitted to the residuals of the codec's own frames of 4 s of noise
    (transformers initialises codebooks to zeros, which would code every frame 0; tests/tiny/musicgen.py draws them
    from the frames themselves, which needs more frames than codes)."""
    frames = codec.encoder(0.1 * torch.randn(1, 1, 4 * codec.config.sampling_rate))[0].T  # (frames, dim)
    for layer in codec.quantizer.layers:
        book = layer.codebook
        book.embed.copy_(frames.mean(0) + frames.std(0) * torch.randn(codebook_size, frames.shape[1]))
        book.embed_avg.copy_(book.embed)
        frames = frames - layer.decode(layer.encode(frames.T[None])).transpose(1, 2)[0]


def load_model(backend: str, folder: Path, duration: float | None = None) -> nn.Module:
    """`backend` loaded from `folder` through its own loading code, with the other settings of its model config;
    `duration` (seconds) replaces the config's clip length (the toy model's is fixed by its architecture)."""
    config = yaml.safe_load((REPO / "configs" / "model" / MODEL_CONFIGS[backend]).read_text())
    module, name = config["class_path"].rsplit(".", 1)
    model_class = getattr(importlib.import_module(module), name)
    overrides = {"pretrained": str(folder)}
    if duration is not None:
        if backend == "toy":
            raise ValueError("The toy model's clip length is fixed by its architecture; drop --duration for it.")
        overrides["duration"] = duration
    return model_class(**{**config.get("init_args", {}), **overrides})


# --------------------------------------------------------------------------------------------------------- a step
def random_batch(model: nn.Module, batch_size: int, seed: int, device: torch.device) -> dict[str, Any]:
    """`batch_size` clips of noise at the model's clip length and rate, all valid, and captions of random words."""
    generator = torch.Generator().manual_seed(seed)
    audio = 0.1 * torch.randn(batch_size, model.num_samples, generator=generator)
    words = torch.randint(len(WORDS), (batch_size, 6), generator=generator).tolist()
    captions = [" ".join(WORDS[i] for i in row) for row in words]
    return {"id": [f"item{i}" for i in range(batch_size)], "caption": captions, "audio": audio.to(device),
            "mask": torch.ones(audio.shape, dtype=torch.bool, device=device)}


def _fingerprint(param: nn.Parameter) -> torch.Tensor:
    """Up to 256 evenly spaced values of a parameter, on the CPU: enough to see it move, cheap to keep."""
    flat = param.detach().flatten()
    index = torch.linspace(0, flat.numel() - 1, min(flat.numel(), 256), device=flat.device).long()
    return flat[index].float().cpu()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_backend(backend: str, device: str | torch.device = "cuda", batch_size: int = 4, warmup: int = 1,
                steps: int = 5, lr: float = 1e-5, seed: int = 0, workdir: str | os.PathLike | None = None,
                duration: float | None = None) -> dict:
    """Build, save, load and train `backend` at real size on `device` for ``warmup + steps`` steps; returns its row.
    `duration` replaces the clip length of the model config (a shorter clip to check the code path on a CPU).

    Raises:
        ValueError: an unknown backend, a CUDA device on a machine without one, or a duration for the toy model.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose from {', '.join(BACKENDS)}.")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine; pass --device cpu to check the code path.")
    with tempfile.TemporaryDirectory(prefix=f"gpu_steps_{backend}_", dir=workdir) as tmp:
        started = time.perf_counter()
        folder = write_checkpoint(backend, Path(tmp) / backend)
        build_seconds = time.perf_counter() - started
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        with _quiet():
            model = load_model(backend, folder, duration).to(device)
        load_seconds = time.perf_counter() - started
        model.train()
        params = model.select_parameters(["all"])
        names = model.parameter_names(params)
        optimizer = torch.optim.AdamW(params, lr=lr)
        batch = random_batch(model, batch_size, seed, device)
        before = [_fingerprint(param) for param in params]
        losses, seconds = [], []
        for step in range(warmup + steps):
            _synchronize(device)
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model.loss(batch, generator=torch.Generator().manual_seed(seed + step), reduction="mean")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _synchronize(device)
            seconds.append(time.perf_counter() - started)
            losses.append(loss.item())
            log.info("%s step %d: loss %.4f, %.3f s", backend, step, losses[-1], seconds[-1])
        unchanged = [name for name, old, param in zip(names, before, params, strict=True)
                     if torch.equal(old, _fingerprint(param))]
        row = {
            "backend": backend, "class": type(model).__name__, "config": f"configs/model/{MODEL_CONFIGS[backend]}",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "batch_size": batch_size, "clip_seconds": model.num_samples / model.sample_rate,
            "clip_from_config": duration is None,
            "parameters": _numel(model), "trainable_parameters": sum(param.numel() for param in params),
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "device_memory_bytes": (torch.cuda.get_device_properties(device).total_memory
                                    if device.type == "cuda" else None),
            "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "warmup_steps": warmup, "steps": steps, "median_step_seconds": statistics.median(seconds[warmup:]),
            "step_seconds": seconds, "losses": losses, "loss_finite": all(math.isfinite(x) for x in losses),
            "weights_changed_fraction": 1 - len(unchanged) / len(params), "unchanged_parameters": unchanged[:10],
            "build_seconds": build_seconds, "load_seconds": load_seconds,
            "recipe": f"loss(reduction=mean) under bf16 autocast, backward, AdamW(lr={lr}) over the 'all' group",
            "published": published_comparison(backend),
            "torch": torch.__version__, "cuda": torch.version.cuda, "machine": platform.platform(),
            "torch_threads": torch.get_num_threads(),
        }
    del model, optimizer, params, batch, loss
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def record(rows: Sequence[dict], out: str | os.PathLike = RESULTS) -> None:
    """Merge `rows` into the results file `out` by (backend, device), replacing older rows of the same pair.

    Raises:
        ValueError: `out` exists but is not a results file of this benchmark.
    """
    out = Path(out)
    existing: list[dict] = []
    if out.exists():
        try:
            existing = json.loads(out.read_text())["rows"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{out} is not a gpu_steps results file ({error!r}); delete it or pass another --out.") \
                from error
    replaced = {(row["backend"], row["device"]) for row in rows}
    merged = [row for row in existing if (row["backend"], row["device"]) not in replaced] + list(rows)
    merged.sort(key=lambda row: (row["device"], BACKENDS.index(row["backend"])))
    write_json_atomic(out, {"benchmark": "gpu_steps", "rows": merged})


def main() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (checks the code path)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (their median is reported)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--duration", type=float, help="clip seconds instead of the model config's (CPU checks)")
    parser.add_argument("--workdir", help="folder for the temporary checkpoints (Stable Audio's is 5.4 GB)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    diffusers_logging.disable_progress_bar()  # the loading and saving bars of every component
    transformers_logging.disable_progress_bar()
    for backend in args.backends:
        try:
            row = run_backend(backend, args.device, args.batch_size, args.warmup, args.steps, args.lr,
                              workdir=args.workdir, duration=args.duration)
        except ValueError as error:
            raise SystemExit(str(error)) from error
        record([row], args.out)  # after each backend, so a later failure keeps the earlier rows
        memory = row["peak_memory_bytes"] or row["process_max_rss_bytes"]
        print(f"{backend} on {row['device']}: {row['parameters'] / 1e6:.1f}M parameters "
              f"({row['trainable_parameters'] / 1e6:.1f}M trained), {row['clip_seconds']:.2f} s clips x "
              f"{row['batch_size']}, median step {row['median_step_seconds']:.3f} s, peak "
              f"{'CUDA' if row['peak_memory_bytes'] else 'RSS'} {memory / 2**30:.2f} GiB, losses {row['losses']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
