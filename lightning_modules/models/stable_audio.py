"""Stable Audio Open (Evans et al., 2024) behind `TextToMusicModel`: a diffusers `StableAudioPipeline` whose DiT is
trained with the continuous-time v-objective of stable-audio-tools (``diffusion_objective: v``, uniform t).
A frozen Oobleck VAE turns 44.1 kHz stereo audio into 64-channel latents (hop 2048, no latent scaling: the pipeline
decodes the DiT's samples as they are); the mono batches of this package are fed to every VAE channel and the
posterior mean (not a posterior sample, as stable-audio-tools draws) is the cacheable target. The DiT cross-attends
to the frozen T5 states (projected and masked as the pipeline does) followed by the seconds_start / seconds_total
embeddings, and prepends the same timing embeddings as a global token. Training draws t ~ U(0, 1), feeds the DiT
x_t = cos(t pi/2) x0 + sin(t pi/2) noise and t, and regresses v = cos(t pi/2) noise - sin(t pi/2) x0: exactly what
`CosineDPMSolverMultistepScheduler` feeds the DiT at inference (EDM preconditioning at sigma = tan(t pi/2) with
sigma_data = 1). The unconditional input is the all-zero cross-attention sequence the pipeline uses for
classifier-free guidance without a negative prompt (and stable-audio-tools for its caption dropout); generation goes
through the pipeline itself.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import torch
from diffusers import (
    AutoencoderOobleck,
    CosineDPMSolverMultistepScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.transformers.stable_audio_transformer import StableAudioGaussianFourierProjection
from torch import Tensor, nn
from torch.nn.utils.weight_norm import WeightNorm
from transformers import PreTrainedTokenizerBase, T5EncoderModel

from lightning_modules.models.base import (
    Batch,
    Prediction,
    TextToMusicModel,
    check_captions,
    check_pretrained,
    prompt_seeds,
)
from lightning_modules.models.diffusion import attention_parameter_groups, fixed_timesteps_and_noise, masked_mse
from lightning_modules.models.lora import adapter_groups, add_lora, merged_lora

DEFAULT_LORA_GROUPS = ("transformer_blocks",)


def _detach_weight_norm(module: nn.Module) -> None:
    """Detach the weights that ``torch.nn.utils.weight_norm`` (the Oobleck VAE's convolutions) computed at loading:
    left attached to their (now frozen) ``weight_g`` / ``weight_v`` they make the model impossible to deep-copy, as a
    frozen reference of unlearning methods does. Every forward recomputes them from the saved parameters."""
    for layer in module.modules():
        for hook in layer._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                setattr(layer, hook.name, getattr(layer, hook.name).detach())


class StableAudioOpen(TextToMusicModel):
    """Stable Audio Open, from a diffusers `StableAudioPipeline` folder or hub id.

    Parameter groups live on the DiT (`StableAudioDiTModel`): ``self_attention`` = ``transformer_blocks.N.attn1``,
    ``cross_attention`` = ``attn2``, ``cross_attention_kv`` = its ``to_k`` / ``to_v``, ``transformer_blocks`` = every
    block (attention, feed-forward, norms), ``text_conditioning`` = ``attn2`` plus ``cross_attention_proj`` (the MLP
    that maps the T5 and timing states into the cross-attention), ``all`` = every trainable DiT weight (the fixed
    random Fourier frequencies of ``time_proj`` are not trainable in diffusers and stay out). The VAE, T5 and the
    projection model are frozen.

    Args:
        pretrained: a folder written by `save_pretrained` / ``StableAudioPipeline.save_pretrained``, or a hub id
            (``stabilityai/stable-audio-open-1.0``).
        duration: clip length trained on, in seconds, rounded up to whole latent frames (`num_samples`); default
            the DiT's full window (``sample_size`` frames: 47.55 s for Stable Audio Open), as it was trained.
        num_inference_steps: default number of sampler steps of `generate`.
        guidance_scale: default classifier-free guidance scale of `generate`.
        lora_rank: rank of LoRA adapters on the linear layers of `lora_groups`; 0 trains the weights themselves.
        lora_alpha: the adapters' scale numerator; default `lora_rank`.
        lora_groups: parameter groups that get adapters; default ``["transformer_blocks"]`` (every attention and
            feed-forward projection of the DiT blocks: the subset the attribution literature found best).
        lora_dropout: dropout on the adapters' input.
        gradient_checkpointing: recompute the DiT blocks' activations in the backward pass to save memory.
    """

    def __init__(
        self,
        pretrained: str,
        duration: float | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 7.0,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        lora_groups: list[str] | None = None,
        lora_dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        pipeline = StableAudioPipeline.from_pretrained(
            check_pretrained(pretrained, "model_index.json", "stabilityai/stable-audio-open-1.0"))
        scheduler = pipeline.scheduler
        if not isinstance(scheduler, CosineDPMSolverMultistepScheduler) or scheduler.config.sigma_data != 1.0 \
                or scheduler.config.prediction_type != "v_prediction":
            raise ValueError(f"{pretrained}: scheduler {type(scheduler).__name__} ({dict(scheduler.config)}) is not "
                             "CosineDPMSolverMultistepScheduler with prediction_type v_prediction and sigma_data 1.0, "
                             "the sampler the continuous-time v-objective of this backend matches.")
        self.transformer: StableAudioDiTModel = pipeline.transformer
        self.vae: AutoencoderOobleck = pipeline.vae
        self.text_encoder: T5EncoderModel = pipeline.text_encoder
        self.projection_model: StableAudioProjectionModel = pipeline.projection_model
        self.tokenizer: PreTrainedTokenizerBase = pipeline.tokenizer
        self.scheduler = scheduler
        for frozen in (self.vae, self.text_encoder, self.projection_model):
            frozen.requires_grad_(False).eval()
        _detach_weight_norm(self.vae)
        self.sample_rate = int(self.vae.config.sampling_rate)
        self.hop_length = int(self.vae.hop_length)
        self.max_duration = self.transformer.config.sample_size * self.hop_length / self.sample_rate
        duration = self.max_duration if duration is None else duration
        self._check_duration(duration, "duration")
        self.num_samples = math.ceil(round(duration * self.sample_rate) / self.hop_length) * self.hop_length
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.lora_rank = lora_rank
        if lora_rank != 0:  # add_lora refuses a negative rank
            groups = {name: [param for _, param in named] for name, named in self._named_groups().items()}
            names = list(DEFAULT_LORA_GROUPS if lora_groups is None else lora_groups)
            add_lora(self.transformer, groups, names, lora_rank, lora_alpha, lora_dropout)
        elif lora_groups is not None:
            raise ValueError("lora_groups is set but lora_rank is 0: give lora_rank > 0 to add adapters, or drop "
                             "lora_groups.")
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    def _check_duration(self, duration: float, name: str) -> None:
        if not 0 < duration <= self.max_duration:
            raise ValueError(f"{name}={duration}: give a duration in (0, {self.max_duration:.3f}] seconds, the DiT's "
                             f"window of {self.transformer.config.sample_size} latent frames.")

    def train(self, mode: bool = True) -> StableAudioOpen:
        super().train(mode)
        for frozen in (self.vae, self.text_encoder, self.projection_model):
            frozen.eval()  # frozen: T5's dropout must never change the conditioning
        return self

    # ----------------------------------------------------------------------------------------------- encoding
    @torch.no_grad()
    def encode_audio(self, waveform: Tensor, mask: Tensor) -> Tensor:
        """`(batch, samples)` mono audio to the VAE posterior's mean `(batch, latent_channels, frames)`, frames =
        ceil(samples / hop). Padding (mask False) is zeroed first, and the mono signal is fed to every VAE channel."""
        channels = self.vae.config.audio_channels
        audio = waveform.masked_fill(~mask.bool(), 0.0)
        audio = nn.functional.pad(audio, (0, -audio.shape[-1] % self.hop_length))
        audio = audio.unsqueeze(1).expand(-1, channels, -1).to(device=self.vae.device, dtype=self.vae.dtype)
        with torch.autocast(audio.device.type, enabled=False):  # the VAE runs in its own dtype
            return self.vae.encode(audio).latent_dist.mean

    def audio_encoder(self) -> nn.Module:
        return self.vae.encoder

    def targets_settings(self) -> dict:
        return {"audio_channels": self.vae.config.audio_channels, "hop_length": self.hop_length, "posterior": "mean"}

    def _frame_weight(self, mask: Tensor, frames: int) -> Tensor:
        """Share of real audio in each latent frame's hop, `(batch, 1, frames)`."""
        valid = mask.sum(dim=1, keepdim=True)
        starts = torch.arange(frames, device=mask.device) * self.hop_length
        return ((valid - starts[None, :]).clamp(0, self.hop_length) / self.hop_length).unsqueeze(1)

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str], seconds_total: Tensor | None = None) -> dict[str, Tensor]:
        """The DiT's conditioning, built as `StableAudioPipeline.encode_prompt` and `encode_duration` build it.

        Args:
            captions: one caption per item; "" gives the pipeline's unconditional input (all-zero cross-attention
                states, timing kept in the global token).
            seconds_total: `(batch,)` seconds of real audio per item (seconds_start is 0); default the clip length.

        Returns:
            ``encoder_hidden_states`` `(batch, tokens + 2, conditioning_dim)` and ``global_hidden_states``
            `(batch, 1, 2 * conditioning_dim)`.
        """
        captions = list(captions)
        device = self.transformer.device
        if seconds_total is None:
            seconds_total = torch.full((len(captions),), self.num_samples / self.sample_rate)
        tokens = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").to(device)
        states = self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        states = self.projection_model(text_hidden_states=states).text_hidden_states
        states = states * tokens.attention_mask.unsqueeze(-1).to(states.dtype)
        timing = self.projection_model(start_seconds=torch.zeros(len(captions), device=device),
                                       end_seconds=seconds_total.to(device=device, dtype=torch.float32))
        start, end = timing.seconds_start_hidden_states, timing.seconds_end_hidden_states
        encoder_states = torch.cat([states, start.to(states.dtype), end.to(states.dtype)], dim=1)
        unconditional = torch.tensor([caption == "" for caption in captions], device=device)
        encoder_states = torch.where(unconditional[:, None, None], torch.zeros_like(encoder_states), encoder_states)
        return {"encoder_hidden_states": encoder_states, "global_hidden_states": torch.cat([start, end], dim=2)}

    def _rotary(self, frames: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The rotary embedding of the global token and `frames` latent frames, as the pipeline builds it."""
        cos, sin = get_1d_rotary_pos_embed(self.transformer.config.attention_head_dim // 2, frames + 1,
                                           use_real=True, repeat_interleave_real=False)
        return cos.to(device), sin.to(device)

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
        """The DiT's v prediction at x_t and its target; `timesteps` are continuous times t in [0, 1]."""
        targets = batch["targets"] if "targets" in batch else self.encode_audio(batch["audio"], batch["mask"])
        captions = check_captions(batch, captions)
        device = self.transformer.device
        sample = targets.to(device=device, dtype=torch.float32)
        if timesteps is None:
            timesteps = torch.rand((sample.shape[0],), generator=generator)
        if noise is None:
            noise = torch.randn(sample.shape, generator=generator)
        if not timesteps.is_floating_point() or timesteps.min() < 0 or timesteps.max() > 1:
            raise ValueError("Stable Audio takes continuous times t in [0, 1] as `timesteps` (float), as "
                             "fixed_loss_inputs gives them; got integer or out-of-range values.")
        times = timesteps.to(device=device, dtype=torch.float32)
        noise = noise.to(device=device, dtype=torch.float32)
        alpha, sigma = (times * math.pi / 2).cos()[:, None, None], (times * math.pi / 2).sin()[:, None, None]
        noisy = alpha * sample + sigma * noise
        mask = batch["mask"].to(device)
        conditioning = self.encode_text(captions, mask.sum(dim=1) / self.sample_rate)
        output = self.transformer(noisy.to(self.transformer.dtype), times, **conditioning,
                                  rotary_embedding=self._rotary(sample.shape[-1], device), return_dict=False)[0]
        return Prediction(output, alpha * noise - sigma * sample, self._frame_weight(mask, sample.shape[-1]))

    def criterion(self, output: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        return masked_mse(output, target, weight)

    def fixed_loss_inputs(self, ids: Sequence[str], seed: int = 0) -> dict[str, Tensor]:
        shape = (self.transformer.config.in_channels, self.num_samples // self.hop_length)
        times, noise = fixed_timesteps_and_noise(ids, shape, None, seed)
        return {"timesteps": times, "noise": noise}

    # ------------------------------------------------------------------------------------------- generation
    def pipeline(self) -> StableAudioPipeline:
        """A `StableAudioPipeline` over this model's own modules (nothing copied) and a fresh sampler."""
        pipeline = StableAudioPipeline(
            vae=self.vae, text_encoder=self.text_encoder, projection_model=self.projection_model,
            tokenizer=self.tokenizer, transformer=self.transformer,
            scheduler=CosineDPMSolverMultistepScheduler.from_config(self.scheduler.config),
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

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
        """`(batch, audio_channels, samples)` audio through `StableAudioPipeline`; prompt i uses seed ``seed + i``
        (or ``seed[i]``) for its initial noise and its sampler noise, whatever the batch. The DiT denoises its full
        window and the pipeline crops it to `duration` (default the training clip length)."""
        seeds = prompt_seeds(prompts, seed)
        duration = self.num_samples / self.sample_rate if duration is None else duration
        self._check_duration(duration, "generate duration")
        was_training = self.training
        self.eval()
        try:
            with warnings.catch_warnings():
                # the sampler asks its Brownian tree for noise just outside the tree's [sigma_min, sigma_max] (sigma_min
                # rounded in float32, and the final sigma 0, where the noise is multiplied by 0): torchsde warns
                warnings.filterwarnings("ignore", message="Should have", module="torchsde")
                audio = self.pipeline()(
                    list(prompts), audio_end_in_s=duration, audio_start_in_s=0.0,
                    num_inference_steps=num_inference_steps or self.num_inference_steps,
                    guidance_scale=self.guidance_scale if guidance_scale is None else guidance_scale,
                    generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt",
                ).audios
        finally:
            self.train(was_training)
        return audio.float()

    # ------------------------------------------------------------------------------------------ parameters, io
    def _named_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        names = {id(param): name for name, param in self.transformer.named_parameters()}
        fixed = {id(param) for module in self.transformer.modules()
                 if isinstance(module, StableAudioGaussianFourierProjection) for param in module.parameters()}
        groups = attention_parameter_groups(self.transformer)
        groups["text_conditioning"] += list(self.transformer.cross_attention_proj.parameters())
        return {group: [(names[id(p)], p) for p in params if id(p) not in fixed] for group, params in groups.items()}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        named = self._named_groups()
        if self.lora_rank > 0:
            return adapter_groups(named)
        return {group: [param for _, param in params] for group, params in named.items()}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """A `StableAudioPipeline` folder, LoRA merged into the DiT's weights."""
        with merged_lora(self.transformer):
            StableAudioPipeline(vae=self.vae, text_encoder=self.text_encoder, projection_model=self.projection_model,
                                tokenizer=self.tokenizer, transformer=self.transformer,
                                scheduler=self.scheduler).save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> StableAudioOpen:
        return cls(pretrained=str(path))
