"""The built-in toy text-to-music model: diffusion over patchified log-mel spectrograms, conditioned on the toy CLAP.

Audio becomes a log-mel spectrogram, normalised to about [-1, 1] and cut into `patch_size` x `patch_size` patches
stacked as channels (a fixed, exactly invertible "latent"); a diffusers `UNet2DConditionModel` denoises it with
cross-attention on the frozen CLAP text encoder's token states and the projected text embedding added to the time
embedding, as AudioLDM (Liu et al., 2023) does; it predicts v on a cosine schedule rescaled to zero terminal SNR and
samples from the last timestep (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV
2024). Sampling is DDIM with classifier-free guidance (Ho & Salimans, 2022);
waveforms come back through torchaudio's inverse mel scale and Griffin-Lim. Saved as a diffusers-style folder:
``unet/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/`` and ``toy_ttm.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import torchaudio
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import AutoTokenizer, ClapTextModelWithProjection
from transformers.utils import logging as hf_logging

from datamodules.provenance import TrainingRecord
from lightning_modules.models.base import Batch, Prediction, TextToMusicModel, check_captions, prompt_seeds
from lightning_modules.models.diffusion import (
    attention_parameter_groups,
    diffusion_target,
    fixed_timesteps_and_noise,
    masked_mse,
)

CONFIG_NAME = "toy_ttm.json"


@dataclass
class ToyArchitecture:
    """Shape of the toy model: its audio front end, its UNet and its noise schedule."""

    sample_rate: int = 16000
    num_samples: int = 32768
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 64
    patch_size: int = 4
    block_out_channels: tuple[int, ...] = (64, 64, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    num_train_timesteps: int = 1000
    # v-prediction on a zero-terminal-SNR schedule, sampled from the last timestep ("trailing"), as Lin et al. (2024)
    # prescribe: with epsilon prediction the samples kept a raised noise floor and the quiet, sparse artists were lost
    # (scripts/toy_diagnosis.py, README "The toy world").
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    rescale_betas_zero_snr: bool = True
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "trailing"
    log_mel_min: float = -9.0
    log_mel_max: float = 5.0
    griffin_lim_iters: int = 32
    num_inference_steps: int = 50
    # Guidance rescaled as Lin et al. (2024) prescribe: plain guidance 3 overshot the quiet artists' spectra past the
    # data's range and sampling diverged (Nine Ohm Tides rendered 0.00 of the time), while without guidance the near
    # neighbours blur (Kestrel Drive 0.69 by the toy CLAP); rescaled, both hold (scripts/toy_diagnosis.py, README).
    guidance_scale: float = 3.0
    guidance_rescale: float = 0.7


def rescaled_guidance(uncond: Tensor, cond: Tensor, scale: float, rescale: float) -> Tensor:
    """Classifier-free guidance, its per-item standard deviation pulled back towards the conditional prediction's by
    the fraction `rescale` (Lin et al., 2024, eq. 15-16; diffusers' ``rescale_noise_cfg``). `rescale` 0: plain CFG."""
    guided = uncond + scale * (cond - uncond)
    if rescale == 0.0:
        return guided
    dims = tuple(range(1, guided.dim()))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


def _require_dir(path: str | os.PathLike, what: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} not found (relative paths are taken from {Path.cwd()}; run "
                                "from the repository root or give an absolute path).")
    return folder


class ToyTextToMusic(TextToMusicModel):
    """The toy world's text-to-music model.

    Args:
        pretrained: a folder written by `save_pretrained`; everything is read from it.
        text_encoder: a CLAP folder (the toy CLAP) whose text tower conditions a new, randomly initialised model;
            only when `pretrained` is not given.
        architecture: the new model's shape; only when `pretrained` is not given.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        text_encoder: str | None = None,
        architecture: ToyArchitecture | None = None,
    ) -> None:
        super().__init__()
        previous_verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # loading the text tower of a full CLAP lists the audio weights it skips
        try:
            if pretrained is not None:
                if text_encoder is not None or architecture is not None:
                    raise ValueError("Give either `pretrained` or `text_encoder` (+ `architecture`), not both: a "
                                     "pretrained toy model carries its own text encoder and architecture.")
                folder = _require_dir(pretrained, "Pretrained toy model")
                config = json.loads((folder / CONFIG_NAME).read_text())
                config["block_out_channels"] = tuple(config["block_out_channels"])
                self.scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
                # a model saved before these settings existed: its own schedule, and guidance without rescale
                config.setdefault("rescale_betas_zero_snr", self.scheduler.config.rescale_betas_zero_snr)
                config.setdefault("timestep_spacing", self.scheduler.config.timestep_spacing)
                config.setdefault("guidance_rescale", 0.0)
                self.architecture = ToyArchitecture(**config)
                self.unet = UNet2DConditionModel.from_pretrained(folder / "unet")
                self.text_encoder = ClapTextModelWithProjection.from_pretrained(folder / "text_encoder")
                self.text_encoder_record = TrainingRecord.read(folder / "text_encoder")
                self.tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
            else:
                if text_encoder is None:
                    raise ValueError("A new toy model needs `text_encoder`: the folder of the toy CLAP "
                                     "(checkpoints/toy/clap), or give `pretrained`.")
                folder = _require_dir(text_encoder, "CLAP text encoder")
                self.architecture = architecture or ToyArchitecture()
                self.text_encoder = ClapTextModelWithProjection.from_pretrained(folder)
                self.text_encoder_record = TrainingRecord.read(folder)  # what the CLAP trained on, if it says
                self.tokenizer = AutoTokenizer.from_pretrained(folder)
                self.unet = self._new_unet()
                self.scheduler = DDPMScheduler(
                    num_train_timesteps=self.architecture.num_train_timesteps,
                    beta_schedule="squaredcos_cap_v2",
                    prediction_type=self.architecture.prediction_type,
                    rescale_betas_zero_snr=self.architecture.rescale_betas_zero_snr,
                    timestep_spacing=self.architecture.timestep_spacing,
                )
        finally:
            hf_logging.set_verbosity(previous_verbosity)
        self.text_encoder.requires_grad_(False).eval()
        arch = self.architecture
        self.sample_rate = arch.sample_rate
        self.num_samples = arch.num_samples
        self.mel = torchaudio.transforms.MelSpectrogram(
            arch.sample_rate, n_fft=arch.n_fft, hop_length=arch.hop_length, n_mels=arch.n_mels, power=1.0
        )
        self.inverse_mel = torchaudio.transforms.InverseMelScale(arch.n_fft // 2 + 1, arch.n_mels, arch.sample_rate)
        self.register_buffer("window", torch.hann_window(arch.n_fft), persistent=False)

    def _new_unet(self) -> UNet2DConditionModel:
        arch = self.architecture
        levels = len(arch.block_out_channels)
        text_config = self.text_encoder.config
        return UNet2DConditionModel(
            sample_size=(arch.n_mels // arch.patch_size, self._frames(arch.num_samples) // arch.patch_size),
            in_channels=arch.patch_size**2,
            out_channels=arch.patch_size**2,
            block_out_channels=arch.block_out_channels,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
            layers_per_block=arch.layers_per_block,
            attention_head_dim=arch.attention_head_dim,
            cross_attention_dim=text_config.hidden_size,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=text_config.projection_dim,
            norm_num_groups=min(32, min(arch.block_out_channels) // 4),
        )

    def _frames(self, num_samples: int) -> int:
        """Spectrogram frames used for `num_samples` of audio: a multiple of what the UNet's downsampling needs."""
        arch = self.architecture
        multiple = arch.patch_size * 2 ** (len(arch.block_out_channels) - 1)
        return max(multiple, (num_samples // arch.hop_length) // multiple * multiple)

    def train(self, mode: bool = True) -> ToyTextToMusic:
        super().train(mode)
        self.text_encoder.eval()  # frozen: its dropout must never change the conditioning
        return self

    # ----------------------------------------------------------------------------------------------- encoding
    def encode_audio(self, waveform: Tensor, mask: Tensor) -> Tensor:
        """`(batch, samples)` audio to normalised log-mel patches `(batch, patch**2, n_mels/patch, frames/patch)`;
        the padding (`mask` false) is silenced first, so what it holds never reaches the targets."""
        arch = self.architecture
        with torch.autocast(waveform.device.type, enabled=False):
            # the front end stays float32 (bf16-true casts every buffer): the targets are the same under any precision
            audio = waveform.float() * mask.to(waveform.device, torch.float32)
            mel = self.mel.float()(audio)[..., : self._frames(waveform.shape[-1])]
            log_mel = mel.clamp_min(1e-5).log()
            normalised = 2 * (log_mel - arch.log_mel_min) / (arch.log_mel_max - arch.log_mel_min) - 1
            return F.pixel_unshuffle(normalised.unsqueeze(1), arch.patch_size)

    def decode_targets(self, targets: Tensor) -> Tensor:
        """Inverse of `encode_audio`: patches to waveforms `(batch, 1, samples)` through Griffin-Lim."""
        arch = self.architecture
        with torch.autocast(targets.device.type, enabled=False):
            normalised = F.pixel_shuffle(targets.float(), arch.patch_size).squeeze(1).clamp(-1, 1)
            mel = ((normalised + 1) / 2 * (arch.log_mel_max - arch.log_mel_min) + arch.log_mel_min).exp()
            mel = torch.cat([mel, mel[..., -1:]], dim=-1)  # the centred STFT has one frame more than we keep
            waveform = torchaudio.functional.griffinlim(
                self.inverse_mel.float()(mel), self.window.float(), arch.n_fft, arch.hop_length, arch.n_fft, power=1.0,
                n_iter=arch.griffin_lim_iters, momentum=0.99, length=(mel.shape[-1] - 1) * arch.hop_length,
                rand_init=False,
            )
        return waveform.unsqueeze(1)

    def audio_encoder(self) -> nn.Module:
        return self.mel

    def targets_settings(self) -> dict:
        arch = self.architecture
        return {"patch_size": arch.patch_size, "log_mel_min": arch.log_mel_min, "log_mel_max": arch.log_mel_max,
                "frames": self._frames(self.num_samples)}

    def _target_weight(self, mask: Tensor, num_frames: int) -> Tensor:
        """Share of real audio in each patch column, `(batch, 1, 1, num_frames / patch)`."""
        patch = self.architecture.patch_size
        frame_centres = torch.arange(num_frames, device=mask.device) * self.architecture.hop_length
        valid = frame_centres[None, :] < mask.sum(dim=1, keepdim=True)
        return valid.float().view(mask.shape[0], 1, 1, num_frames // patch, patch).mean(-1)

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> dict[str, Tensor]:
        device = self.unet.device
        tokens = self.tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt").to(device)
        output = self.text_encoder(**tokens)
        return {
            "encoder_hidden_states": output.last_hidden_state,
            "encoder_attention_mask": tokens["attention_mask"],
            "class_labels": F.normalize(output.text_embeds, dim=-1),
        }

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
        targets = targets.to(self.unet.dtype)  # float32 targets into a bf16-true UNet
        captions = check_captions(batch, captions)
        device = targets.device
        if timesteps is None:
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (targets.shape[0],),
                                      generator=generator)
        if noise is None:
            noise = torch.randn(targets.shape, generator=generator)
        timesteps, noise = timesteps.to(device), noise.to(device=device, dtype=targets.dtype)
        noisy = self.scheduler.add_noise(targets, noise, timesteps)
        output = self.unet(noisy, timesteps, **self.encode_text(captions)).sample
        target = diffusion_target(self.scheduler, targets, noise, timesteps)
        weight = self._target_weight(batch["mask"], targets.shape[-1] * self.architecture.patch_size)
        return Prediction(output, target, weight)

    def criterion(self, output: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        return masked_mse(output, target, weight)

    def fixed_loss_inputs(self, ids: Sequence[str], seed: int = 0) -> dict[str, Tensor]:
        arch = self.architecture
        shape = (arch.patch_size**2, arch.n_mels // arch.patch_size, self._frames(self.num_samples) // arch.patch_size)
        timesteps, noise = fixed_timesteps_and_noise(ids, shape, self.scheduler.config.num_train_timesteps, seed)
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
        """`(batch, 1, samples)` audio; prompt i draws its starting noise from seed ``seed + i`` (or ``seed[i]``),
        whatever the batch. The same prompts and seeds in the same batches give bit-identical audio; a prompt alone
        and in a batch differ by float rounding only (matrix kernels block by batch size), which sampling amplifies
        to at most about 1 % relative L2 on the shipped base (README, "What every backend honours")."""
        num_samples = self.num_samples if duration is None else round(duration * self.sample_rate)
        targets = self.sample_targets(prompts, seed=seed, num_inference_steps=num_inference_steps,
                                      guidance_scale=guidance_scale, num_samples=num_samples)
        return self.decode_targets(targets)[..., :num_samples]

    @torch.no_grad()
    def sample_targets(
        self,
        prompts: Sequence[str],
        *,
        seed: int | Sequence[int] = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_samples: int | None = None,
        init_targets: Tensor | None = None,
        strength: float = 1.0,
    ) -> Tensor:
        """DDIM with classifier-free guidance in the target space: `(batch, patch**2, mels/patch, frames/patch)`.

        With `init_targets` (e.g. `encode_audio` of real clips), sampling starts from them noised to the fraction
        `strength` of the schedule, as diffusers' image-to-image pipelines do: how much of a clip the model keeps
        or restores when it has to regenerate the rest.
        """
        arch = self.architecture
        seeds = prompt_seeds(prompts, seed)
        shape = (arch.patch_size**2, arch.n_mels // arch.patch_size,
                 self._frames(num_samples or self.num_samples) // arch.patch_size)
        device = self.unet.device
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        noise = noise.to(device=device, dtype=self.unet.dtype)
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps or arch.num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        if init_targets is None:
            latents = noise
        else:
            if not 0.0 < strength <= 1.0:
                raise ValueError(f"strength={strength} must be in (0, 1].")
            timesteps = timesteps[len(timesteps) - max(1, round(strength * len(timesteps))):]
            latents = scheduler.add_noise(init_targets.to(noise), noise, timesteps[:1].repeat(len(noise)))
        guidance = arch.guidance_scale if guidance_scale is None else guidance_scale
        if guidance == 1.0:  # unguided: the conditional prediction alone, one UNet pass per step
            conditioning = self.encode_text(list(prompts))
            for t in timesteps:
                latents = scheduler.step(self.unet(latents, t, **conditioning).sample, t, latents).prev_sample
            return latents
        both = self.encode_text([""] * len(prompts) + list(prompts))  # unconditional first, as chunk(2) expects
        for t in timesteps:
            pred_uncond, pred_cond = self.unet(torch.cat([latents, latents]), t, **both).sample.chunk(2)
            prediction = rescaled_guidance(pred_uncond, pred_cond, guidance, arch.guidance_rescale)
            latents = scheduler.step(prediction, t, latents).prev_sample
        return latents

    # ------------------------------------------------------------------------------------------ parameters, io
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return attention_parameter_groups(self.unet)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet")
        self.scheduler.save_pretrained(folder / "scheduler")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        if self.text_encoder_record is not None:  # the text encoder's training data travels with it (provenance.py)
            self.text_encoder_record.write(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.architecture), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ToyTextToMusic:
        return cls(pretrained=str(path))

