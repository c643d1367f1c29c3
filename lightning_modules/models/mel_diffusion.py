"""What the diffusers mel-spectrogram latent diffusion backends (AudioLDM, MusicLDM, AudioLDM 2) share: the original
repositories' TacotronSTFT log-mel front end, deterministic VAE latents, the DDPM training loss with caller-controlled
timesteps and noise, LoRA and gradient checkpointing on the UNet, generation and saving through the library's own
pipeline.

Follows AudioLDM (Liu et al., 2023, "AudioLDM: Text-to-Audio Generation with Latent Diffusion Models"): audio at
16 kHz becomes a 64-band log-mel spectrogram (STFT of 1024 samples, hop 160, Slaney mel scale 0-8 kHz, magnitude,
``log(clamp(mel, 1e-5))``, laid out time-major), a VAE compresses it into latents and a UNet denoises them (DDPM, Ho
et al., 2020); a HiFi-GAN vocoder turns decoded mels back into audio. MusicLDM and AudioLDM 2 keep this front end.
"""

from __future__ import annotations

import math
import os
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
import torchaudio
from diffusers import DDPMScheduler, DiffusionPipeline
from torch import Tensor, nn

from lightning_modules.models.base import (
    Batch,
    Prediction,
    TextToMusicModel,
    check_captions,
    check_pretrained,
    prompt_seeds,
)
from lightning_modules.models.diffusion import diffusion_target, fixed_timesteps_and_noise, masked_mse
from lightning_modules.models.lora import adapter_groups, add_lora, merged_lora

N_FFT = 1024  # the original repositories' TacotronSTFT: filter and window length
F_MIN = 0.0
F_MAX = 8000.0
LOG_CLAMP = 1e-5

NamedGroups = dict[str, list[tuple[str, nn.Parameter]]]


class TacotronMel(nn.Module):
    """The log-mel front end AudioLDM, MusicLDM and AudioLDM 2 were trained on (their ``TacotronSTFT``).

    Reflect-pads ``(n_fft - hop) / 2`` samples on both sides, takes a non-centred periodic-Hann STFT, its magnitude,
    a Slaney-normalised Slaney-scale mel filterbank and ``log(clamp(mel, 1e-5))``; frame ``f`` is centred on sample
    ``f * hop + hop / 2``. With `normalize`, each clip is first made zero-mean and scaled to a peak of 0.5 over its
    valid samples, as the original data loaders do (``normalize_wav``). The constants are rebuilt on every call in
    float32 (not buffers), so a model cast to bfloat16 still computes the same spectrogram.

    Args:
        sample_rate: audio rate in Hz (the vocoder's).
        hop_length: STFT hop in samples (the vocoder's total upsampling).
        n_mels: mel bands (the vocoder's input width).
        normalize: zero-mean, peak-0.5 clips before the STFT.
    """

    def __init__(self, sample_rate: int, hop_length: int, n_mels: int, normalize: bool = True) -> None:
        super().__init__()
        self.sample_rate, self.hop_length, self.n_mels, self.normalize = sample_rate, hop_length, n_mels, normalize
        self.f_max = min(F_MAX, sample_rate / 2)

    def forward(self, waveform: Tensor, mask: Tensor) -> Tensor:
        """`(batch, samples)` audio and validity mask to `(batch, 1, samples // hop, n_mels)` log-mels."""
        with torch.autocast(waveform.device.type, enabled=False):
            audio = waveform.float() * mask
            if self.normalize:
                weight = mask.float()
                mean = audio.sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1.0)
                audio = (audio - mean) * weight
                audio = 0.5 * audio / (audio.abs().amax(1, keepdim=True) + 1e-8)
            pad = (N_FFT - self.hop_length) // 2
            audio = F.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
            window, filterbank = self._constants(audio.device)
            spectrum = torch.stft(audio, N_FFT, self.hop_length, N_FFT, window=window, center=False,
                                  return_complex=True).abs()
            mel = torch.einsum("bft,fm->btm", spectrum, filterbank)
            return mel.clamp_min(LOG_CLAMP).log().unsqueeze(1)

    def _constants(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Periodic Hann window and `(n_fft / 2 + 1, n_mels)` Slaney filterbank in float32, whatever the default dtype
        (Lightning's bf16-true sets it to bfloat16 around each step)."""
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            window = torch.hann_window(N_FFT, device=device)
            filterbank = torchaudio.functional.melscale_fbanks(
                N_FFT // 2 + 1, F_MIN, self.f_max, self.n_mels, self.sample_rate, norm="slaney", mel_scale="slaney")
        finally:
            torch.set_default_dtype(previous)
        return window, filterbank.to(device)

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_fft={N_FFT}, hop_length={self.hop_length}, n_mels={self.n_mels}, "
                f"f_max={self.f_max}, normalize={self.normalize}")


class MelLatentDiffusion(TextToMusicModel):
    """A diffusers mel latent diffusion pipeline behind `TextToMusicModel`; subclasses name the pipeline class and
    implement what differs: text encoding, the UNet call, parameter groups and the pipeline's text inputs.

    The UNet trains; every other component (VAE, text encoders, vocoder, ...) is frozen and kept in eval mode. All are
    the loaded pipeline's own modules, registered as submodules under the pipeline's component names, and generation
    calls that same pipeline. The loss is DDPM's: `DDPMScheduler` built from the pipeline scheduler's config, target
    by its ``prediction_type``, mean squared error weighted 0 on latent frames that cover padding.

    Args:
        pretrained: a hub id or a local folder in diffusers' pipeline format (what `save_pretrained` writes).
        duration: clip length in seconds the model trains on (sets `num_samples`); default the UNet's native length.
        num_inference_steps: sampling steps of `generate`; default the pipeline's own default.
        guidance_scale: classifier-free guidance of `generate`; default the pipeline's own default.
        normalize_audio: make each clip zero-mean with a peak of 0.5 before the mel front end, as the original
            training data loaders do.
        lora_rank: 0 trains the UNet's weights; above 0, adds LoRA adapters of this rank and trains only them.
        lora_alpha: the adapters' scale numerator (default `lora_rank`).
        lora_groups: the parameter groups whose linear layers get adapters; default ``["cross_attention",
            "self_attention"]``: every attention projection and every layer through which the text enters.
        lora_dropout: dropout on the adapters' input.
        gradient_checkpointing: recompute the UNet's activations in the backward pass (diffusers' checkpointing).
    """

    pipeline_class: ClassVar[type[DiffusionPipeline]]
    default_num_inference_steps: ClassVar[int]
    default_guidance_scale: ClassVar[float]

    def __init__(
        self,
        pretrained: str,
        duration: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        normalize_audio: bool = True,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        lora_groups: list[str] | None = None,
        lora_dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        pretrained = check_pretrained(pretrained, "model_index.json", "cvssp/audioldm-s-full-v2")
        expected = self.pipeline_class.__name__
        found = self.pipeline_class.load_config(str(pretrained)).get("_class_name")
        if found != expected:
            raise ValueError(f"{pretrained} holds a {found}, not a {expected}: load it with the backend of its "
                             "family.")
        self.pipeline = self.pipeline_class.from_pretrained(str(pretrained))
        self.pipeline.set_progress_bar_config(disable=True)
        self.adapt_pipeline(self.pipeline)
        self.frozen: list[str] = []
        for name, component in self.pipeline.components.items():
            if name == "scheduler" or component is None:  # sampling keeps the pipeline's scheduler; training DDPM's
                continue
            setattr(self, name, component)  # modules become submodules; tokenizers plain attributes
            if isinstance(component, nn.Module) and name != "unet":
                component.requires_grad_(False).eval()
                self.frozen.append(name)
        self.scheduler = DDPMScheduler.from_config(self.pipeline.scheduler.config)

        vocoder = self.pipeline.vocoder.config
        self.sample_rate = int(vocoder.sampling_rate)
        self.hop_length = math.prod(vocoder.upsample_rates)
        self.vae_scale = 2 ** (len(self.pipeline.vae.config.block_out_channels) - 1)
        if vocoder.model_in_dim % self.vae_scale:
            raise ValueError(f"The vocoder's {vocoder.model_in_dim} mel bands are not divisible by the VAE's "
                             f"downsampling {self.vae_scale}; this pipeline is not a mel latent diffusion model.")
        self.mel = TacotronMel(self.sample_rate, self.hop_length, vocoder.model_in_dim, normalize_audio)
        self.normalize_audio = normalize_audio
        native = self.pipeline.unet.config.sample_size
        native = native[0] if isinstance(native, (list, tuple)) else native
        native_duration = native * self.vae_scale * self.hop_length / self.sample_rate
        self.duration = native_duration if duration is None else duration
        self.num_samples = round(self.duration * self.sample_rate)
        # At least one latent frame, and (clips being cut to whole latent frames) more samples than the mel front
        # end's reflect padding, which F.pad refuses otherwise.
        pad, minimum = (N_FFT - self.hop_length) // 2, self.vae_scale * self.hop_length
        while self.mel_frames(minimum) * self.hop_length <= pad:
            minimum += self.hop_length
        if self.num_samples < minimum:
            raise ValueError(f"duration={self.duration:g} s is {self.num_samples} samples at {self.sample_rate} Hz; "
                             f"this model needs at least {minimum} ({minimum / self.sample_rate:.4g} s): one latent "
                             f"frame ({self.vae_scale} mel frames of {self.hop_length} samples), and more samples in "
                             f"its whole latent frames than the mel front end's reflect padding ({pad}).")
        self.num_inference_steps = num_inference_steps or self.default_num_inference_steps
        self.guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale

        self.lora_rank = lora_rank
        if lora_rank > 0:
            plain = {group: [param for _, param in named] for group, named in self._named_groups().items()}
            add_lora(self.unet, plain, lora_groups or ["cross_attention", "self_attention"], lora_rank, lora_alpha,
                     lora_dropout)
        elif lora_rank < 0:
            raise ValueError(f"lora_rank={lora_rank}: give 0 (no adapters) or a positive rank.")
        if gradient_checkpointing:
            self.enable_gradient_checkpointing()

    def adapt_pipeline(self, pipeline: DiffusionPipeline) -> None:
        """Check or adapt the freshly loaded pipeline before its components become submodules (default: nothing)."""

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the UNet's activations in the backward pass, through diffusers' gradient checkpointing."""
        self.unet.enable_gradient_checkpointing()

    def train(self, mode: bool = True) -> MelLatentDiffusion:
        super().train(mode)
        for name in self.frozen:  # frozen: their dropout must never change targets or conditioning
            getattr(self, name).eval()
        return self

    # ----------------------------------------------------------------------------------------------- encoding
    def mel_frames(self, num_samples: int) -> int:
        """Mel frames for `num_samples` of audio, rounded up to what the VAE's downsampling needs, as the
        pipelines round ``audio_length_in_s``."""
        return math.ceil((num_samples // self.hop_length) / self.vae_scale) * self.vae_scale

    def latent_shape(self, num_samples: int) -> tuple[int, int, int]:
        """`(channels, frames, mel bins)` of the latents of `num_samples` of audio."""
        return (self.vae.config.latent_channels, self.mel_frames(num_samples) // self.vae_scale,
                self.mel.n_mels // self.vae_scale)

    def _padded(self, waveform: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Audio and mask zero-padded to whole latent frames (the padding is marked invalid)."""
        extra = self.mel_frames(waveform.shape[-1]) * self.hop_length - waveform.shape[-1]
        return F.pad(waveform, (0, extra)), F.pad(mask.bool(), (0, extra), value=False)

    def log_mel(self, waveform: Tensor, mask: Tensor) -> Tensor:
        """`(batch, samples)` audio to the `(batch, 1, frames, n_mels)` log-mels the VAE and the vocoder read."""
        return self.mel(*self._padded(waveform, mask))

    @torch.no_grad()
    def encode_audio(self, waveform: Tensor, mask: Tensor) -> Tensor:
        """`(batch, samples)` audio to scaled VAE latents `(batch, channels, frames / s, n_mels / s)`: the posterior's
        mode (deterministic), computed in the VAE's own dtype outside autocast, returned in float32."""
        mel = self.log_mel(waveform, mask)
        with torch.autocast(waveform.device.type, enabled=False):
            posterior = self.vae.encode(mel.to(self.vae.dtype)).latent_dist
            return (posterior.mode() * self.vae.config.scaling_factor).float()

    def audio_encoder(self) -> nn.Module:
        return self.vae

    def targets_settings(self) -> dict:
        return {"frames": self.mel_frames(self.num_samples), "hop_length": self.hop_length, "n_fft": N_FFT,
                "n_mels": self.mel.n_mels, "f_max": self.mel.f_max, "normalize_audio": self.normalize_audio,
                "scaling_factor": self.vae.config.scaling_factor}

    def _latent_weight(self, mask: Tensor, latent_frames: int) -> Tensor:
        """Share of each latent frame's mel frames whose centre lies on valid audio, `(batch, 1, frames, 1)`."""
        centres = torch.arange(latent_frames * self.vae_scale, device=mask.device) * self.hop_length
        centres = centres + self.hop_length // 2
        inside = centres < mask.shape[-1]
        valid = torch.zeros(mask.shape[0], centres.shape[0], device=mask.device, dtype=torch.float32)
        valid[:, inside] = mask[:, centres[inside]].float()
        return valid.view(mask.shape[0], 1, latent_frames, self.vae_scale).mean(-1, keepdim=True)

    @abstractmethod
    def encode_text(self, captions: Sequence[str], prompts: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Conditioning for `captions`, each encoded on its own (independent of the rest of the batch).

        Args:
            captions: the texts to encode; "" is the unconditional input of classifier-free guidance.
            prompts: for each empty caption, the prompt whose guidance it is the unconditional branch of (AudioLDM 2
                builds that branch from the prompt's length; the others ignore it).
        """

    @abstractmethod
    def denoise(self, noisy: Tensor, timesteps: Tensor, conditioning: dict[str, Tensor]) -> Tensor:
        """The UNet's output for `noisy` latents at `timesteps` under `conditioning` from `encode_text`."""

    @abstractmethod
    def pipeline_text_inputs(self, conditional: dict[str, Tensor], unconditional: dict[str, Tensor] | None) -> dict:
        """The pipeline's precomputed text arguments (``prompt_embeds`` ...) for `encode_text` outputs."""

    @abstractmethod
    def _named_groups(self) -> NamedGroups:
        """The UNet's parameter groups as ``(name, parameter)`` pairs, names as `unet.named_parameters` gives them."""

    def _unet_inputs(self, conditioning: dict[str, Tensor]) -> dict[str, Tensor]:
        """`conditioning` with floating tensors in the UNet's dtype (bf16-true casts the UNet, not the text)."""
        dtype = self.unet.dtype
        return {key: value.to(dtype) if value.is_floating_point() else value for key, value in conditioning.items()}

    # ------------------------------------------------------------------------------------------------- loss
    def predict(
        self,
        batch: Batch,
        *,
        captions: Sequence[str] | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Prediction:
        targets = batch["targets"] if "targets" in batch else self.encode_audio(batch["audio"], batch["mask"])
        captions = check_captions(batch, captions)
        device = targets.device
        if timesteps is None:
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (targets.shape[0],),
                                      generator=generator)
        if noise is None:
            noise = torch.randn(targets.shape, generator=generator, dtype=torch.float32)
        targets = targets.float()
        timesteps, noise = timesteps.to(device), noise.to(device=device, dtype=targets.dtype)
        noisy = self.scheduler.add_noise(targets, noise, timesteps)
        conditioning = self.encode_text(captions, prompts=list(batch["caption"]))
        output = self.denoise(noisy.to(self.unet.dtype), timesteps, conditioning)
        target = diffusion_target(self.scheduler, targets, noise, timesteps)
        return Prediction(output, target, self._latent_weight(batch["mask"].to(device), targets.shape[2]))

    def criterion(self, output: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        return masked_mse(output, target, weight)

    def fixed_loss_inputs(self, ids: Sequence[str], seed: int = 0) -> dict[str, Tensor]:
        timesteps, noise = fixed_timesteps_and_noise(ids, self.latent_shape(self.num_samples),
                                                     self.scheduler.config.num_train_timesteps, seed)
        return {"timesteps": timesteps, "noise": noise}

    # ------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        seed: int | Sequence[int] = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        duration: float | None = None,
    ) -> Tensor:
        """`(batch, 1, samples)` audio at `sample_rate` from the pipeline itself; prompt i starts from the noise of
        seed ``seed + i`` (or ``seed[i]``) and is encoded on its own, so its audio does not depend on the batch."""
        seeds = prompt_seeds(prompts, seed)
        guidance = self.guidance_scale if guidance_scale is None else guidance_scale
        prompts = list(prompts)
        conditional = self.encode_text(prompts)
        unconditional = self.encode_text([""] * len(prompts), prompts=prompts) if guidance > 1 else None
        was_training = self.training
        self.eval()
        try:
            audio = self.pipeline(
                **self.pipeline_text_inputs(conditional, unconditional),
                audio_length_in_s=self.duration if duration is None else duration,
                num_inference_steps=num_inference_steps or self.num_inference_steps,
                guidance_scale=guidance,
                generator=[torch.Generator().manual_seed(s) for s in seeds],
                output_type="pt",
            ).audios
        finally:
            self.train(was_training)
        return audio.unsqueeze(1).to(self.unet.device)

    # ------------------------------------------------------------------------------------------ parameters, io
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable UNet parameters by group (see the class docstring); with LoRA, only each group's adapters."""
        named = self._named_groups()
        if self.lora_rank > 0:
            return adapter_groups(named)
        return {group: [param for _, param in pairs] for group, pairs in named.items()}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """The pipeline's own folder, LoRA merged into the UNet's weights: loads with this class or the library's."""
        with merged_lora(self.unet):
            self.pipeline.save_pretrained(str(path))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> MelLatentDiffusion:
        return cls(pretrained=str(path))


def named_groups(unet: nn.Module, membership: Callable[[str], Sequence[str]], names: Sequence[str]) -> NamedGroups:
    """Group the UNet's ``(name, parameter)`` pairs: ``all`` gets every one, and each of `names` those for which
    ``membership(name)`` lists it."""
    groups: NamedGroups = {name: [] for name in ("all", *names)}
    for name, param in unet.named_parameters():
        groups["all"].append((name, param))
        for group in membership(name):
            groups[group].append((name, param))
    return groups
