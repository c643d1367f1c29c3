"""MusicGen (Copet et al., 2023) through transformers' `MusicgenForConditionalGeneration`: a frozen T5 text encoder,
a frozen 32 kHz EnCodec whose residual codebooks are the targets, and a causal transformer decoder trained with
audiocraft's objective, the cross-entropy of every code under the "delay" interleaving pattern (codebook ``k``
delayed by ``k`` steps after a start column, laid out by the decoder's own ``build_delay_pattern_mask`` exactly as
`generate` samples it), ignoring delay padding and padded audio; the empty caption is the unconditional input
classifier-free guidance uses in `generate` (zeroed T5 states under an all-zero attention mask), and checkpoints are
saved as the native transformers folder (model, generation config, processor).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoProcessor, LogitsProcessor, LogitsProcessorList, MusicgenForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import logging as hf_logging

from lightning_modules.models.base import (
    Batch,
    Prediction,
    TextToMusicModel,
    check_captions,
    check_pretrained,
    prompt_seeds,
)
from lightning_modules.models.lora import adapter_groups, add_lora, merged_lora

GROUPS = ("all", "cross_attention", "cross_attention_kv", "self_attention", "transformer_blocks", "text_conditioning")


class MusicGen(TextToMusicModel):
    """A text-conditioned mono MusicGen checkpoint (``facebook/musicgen-small``, ``-medium``, ``-large`` or a folder).

    Parameter groups live on the decoder (``decoder.model.decoder.layers.N``) and the text projection:
    ``self_attention`` is every ``layers.N.self_attn``, ``cross_attention`` every ``layers.N.encoder_attn`` (the
    attention on the T5 states), ``cross_attention_kv`` its ``k_proj`` / ``v_proj``, ``transformer_blocks`` every
    decoder layer, ``text_conditioning`` every layer that reads the text (``encoder_attn`` and ``enc_to_dec_proj``),
    ``all`` the decoder (code embeddings, layers, final norm, the per-codebook ``lm_heads``) and ``enc_to_dec_proj``;
    the T5 encoder and EnCodec are frozen and in no group.

    Args:
        pretrained: hub id or folder of a ``MusicgenForConditionalGeneration`` checkpoint with its processor.
        duration: clip length trained on, in seconds (sets `num_samples`; MusicGen was trained on 30 s).
        guidance_scale: classifier-free guidance scale of `generate` (the checkpoints use 3.0).
        lora_rank: rank of LoRA adapters added to the linear layers of `lora_groups`; 0 trains the weights.
        lora_alpha: LoRA scale numerator (default `lora_rank`).
        lora_groups: parameter groups whose linear layers get adapters; default every attention projection
            (``self_attention`` and ``cross_attention``).
        lora_dropout: dropout on the adapters' input.
        gradient_checkpointing: recompute the decoder layers' activations in the backward pass (less memory).
    """

    def __init__(
        self,
        pretrained: str = "facebook/musicgen-small",
        duration: float = 30.0,
        guidance_scale: float = 3.0,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        lora_groups: list[str] | None = None,
        lora_dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        pretrained = check_pretrained(pretrained, "config.json", "facebook/musicgen-small")
        previous_verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the configs' pad / start token ids sit one past the codebook, by design
        try:
            model = MusicgenForConditionalGeneration.from_pretrained(str(pretrained), dtype=torch.float32)
            processor = AutoProcessor.from_pretrained(str(pretrained))
        finally:
            hf_logging.set_verbosity(previous_verbosity)
        self.attach(model, processor, pretrained, duration, guidance_scale)
        if gradient_checkpointing:
            decoder = self.model.decoder  # the method's name before transformers deprecated it for the one below
            enable = getattr(decoder, "activation_checkpointing_enable", decoder.gradient_checkpointing_enable)
            enable({"use_reentrant": False})
        self.lora_rank = lora_rank
        if lora_rank > 0:
            names = list(lora_groups) if lora_groups is not None else ["self_attention", "cross_attention"]
            groups = {group: [param for _, param in named] for group, named in self._named_groups().items()}
            add_lora(self.model, groups, names, lora_rank, lora_alpha, lora_dropout)
        elif lora_groups is not None:
            raise ValueError("lora_groups is set but lora_rank is 0: give lora_rank > 0 to train adapters.")

    def attach(
        self,
        model: MusicgenForConditionalGeneration,
        processor: Any,
        name: str,
        duration: float,
        guidance_scale: float,
    ) -> None:
        """Take `model` and its `processor` (from the checkpoint `name`) as this backend's, checked, with its text
        encoder and codec frozen, at clip length `duration` and `guidance_scale`; no adapters (the constructor adds
        LoRA and gradient checkpointing after)."""
        if duration <= 0:
            raise ValueError(f"duration must be positive (seconds of audio per clip), got {duration}.")
        self.model, self.processor = model, processor
        config = self.model.config
        if config.decoder.audio_channels != 1:
            raise ValueError(f"{name} is a stereo MusicGen (audio_channels={config.decoder.audio_channels}); "
                             "only mono checkpoints (musicgen-small / -medium / -large) are supported.")
        self.start_token_id = self.model.generation_config.decoder_start_token_id
        if self.start_token_id is None:
            raise ValueError(f"{name}: generation_config.json has no decoder_start_token_id; set it to the "
                             f"codebook size ({config.decoder.vocab_size}) as the public checkpoints do.")
        self.model.text_encoder.requires_grad_(False).eval()
        self.model.audio_encoder.requires_grad_(False).eval()
        self.sample_rate = int(config.audio_encoder.sampling_rate)
        self.hop_length = int(config.audio_encoder.hop_length)
        self.num_codebooks = int(config.decoder.num_codebooks)
        self.num_samples = round(duration * self.sample_rate)
        self.guidance_scale = guidance_scale
        self.lora_rank = 0

    def train(self, mode: bool = True) -> MusicGen:
        super().train(mode)
        self.model.text_encoder.eval()  # frozen: dropout must never change the conditioning or the targets
        self.model.audio_encoder.eval()
        return self

    def frames(self, num_samples: int) -> int:
        """EnCodec frames of `num_samples` of audio (a frame per ``hop_length`` samples, the last one partial)."""
        return math.ceil(num_samples / self.hop_length)

    # ----------------------------------------------------------------------------------------------- encoding
    @torch.no_grad()
    def encode_audio(self, waveform: Tensor, mask: Tensor) -> Tensor:
        """`(batch, samples)` audio to EnCodec codes `(batch, codebooks, frames)` (long); padding (mask False) is
        zeroed as the feature extractor's padding mask does. Runs in the codec's own dtype, outside autocast."""
        codec = self.model.audio_encoder
        with torch.autocast(waveform.device.type, enabled=False):
            output = codec.encode(waveform.to(codec.dtype).unsqueeze(1), padding_mask=mask.unsqueeze(1))
        codes = output.audio_codes
        if codes.shape[0] != 1:
            raise ValueError(f"EnCodec split the clip into {codes.shape[0]} chunks; the decoder trains on one "
                             "(set the codec config's chunk_length_s to null).")
        if codes.shape[2] != self.num_codebooks:
            bandwidth = self.model.config.audio_encoder.target_bandwidths[0]
            raise ValueError(f"EnCodec at its bandwidth {bandwidth} kbps gives {codes.shape[2]} codebooks, but the "
                             f"decoder predicts {self.num_codebooks} (decoder.num_codebooks): make the codec's "
                             "target_bandwidths[0] give as many codebooks as the decoder has (bandwidth = codebooks x "
                             "frame rate x log2(codebook size) / 1000).")
        return codes[0]

    def audio_encoder(self) -> nn.Module:
        return self.model.audio_encoder

    def targets_settings(self) -> dict:
        return {"bandwidth": self.model.config.audio_encoder.target_bandwidths[0], "codebooks": self.num_codebooks}

    def encode_text(self, captions: Sequence[str]) -> dict[str, Tensor]:
        """T5 states `(batch, tokens, hidden)` and their attention mask; the empty caption gets zero states under an
        all-zero mask, as `generate` builds the unconditional half of classifier-free guidance."""
        tokens = self.processor.tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt")
        tokens = tokens.to(self.model.device)
        with torch.no_grad():
            states = self.model.text_encoder(**tokens).last_hidden_state
        empty = torch.tensor([caption == "" for caption in captions], device=states.device)
        return {"last_hidden_state": states.masked_fill(empty[:, None, None], 0.0),
                "attention_mask": tokens["attention_mask"].masked_fill(empty[:, None], 0)}

    def delayed(self, codes: Tensor) -> Tensor:
        """`(batch, codebooks, frames)` codes as the decoder sees them, `(batch, codebooks, frames + codebooks)`: a
        start column, then codebook ``k`` delayed by ``k`` steps, delay positions holding the start token."""
        batch, codebooks, frames = codes.shape
        start = codes.new_full((batch, codebooks, 1), self.start_token_id)
        _, pattern = self.model.decoder.build_delay_pattern_mask(
            torch.cat([start, codes], dim=-1).reshape(batch * codebooks, frames + 1),
            pad_token_id=self.start_token_id, max_length=frames + codebooks,
        )
        return pattern.reshape(batch, codebooks, frames + codebooks)

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
        """Logits `(batch, codebooks, steps, vocab)` of every delayed code given the ones before it, the delayed
        codes `(batch, codebooks, steps)` and a weight `(batch, codebooks, steps, 1)`, 1 on codes of real audio
        frames and 0 on delay padding and padded audio. `timesteps`, `noise` and `generator` are ignored: the
        objective draws nothing (dropout aside, in train mode)."""
        codes = batch["targets"] if "targets" in batch else self.encode_audio(batch["audio"], batch["mask"])
        captions = check_captions(batch, captions)
        codes = codes.to(self.model.device)
        sequence = self.delayed(codes)
        batch_size, codebooks, steps = sequence.shape[0], sequence.shape[1], sequence.shape[2] - 1
        text = self.encode_text(captions)
        output = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=text["last_hidden_state"]),
            attention_mask=text["attention_mask"],
            decoder_input_ids=sequence[..., :-1].reshape(batch_size * codebooks, steps),
            use_cache=False,
        )
        logits = output.logits.reshape(batch_size, codebooks, steps, -1)
        # target step s of codebook k holds frame s - k; it counts when that frame exists and is real audio
        device = codes.device
        real_frames = torch.ceil(batch["mask"].to(device).sum(1) / self.hop_length).long()
        frame = torch.arange(steps, device=device)[None, :] - torch.arange(codebooks, device=device)[:, None]
        valid = (frame >= 0) & (frame < codes.shape[-1]) & (frame[None] < real_frames[:, None, None])
        return Prediction(logits, sequence[..., 1:], valid.unsqueeze(-1).float())

    def criterion(self, output: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        """Per-item mean cross-entropy `(batch,)` over the weighted codes; a floating `target` (another model's
        logits, as distillation passes it) gives the cross-entropy against its softmax."""
        logits = output.float()
        weight = torch.broadcast_to(weight, (*logits.shape[:-1], 1))[..., 0].to(logits.dtype)
        if target.is_floating_point():
            per_code = -(target.float().softmax(-1) * logits.log_softmax(-1)).sum(-1)
        else:
            vocab = logits.shape[-1]
            safe = torch.where((target >= 0) & (target < vocab), target, 0)  # delay padding: weight 0 anyway
            per_code = F.cross_entropy(logits.flatten(0, -2), safe.flatten(), reduction="none").view_as(weight)
        return (per_code * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)

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
        """`(batch, 1, samples)` audio at `sample_rate` from one batched ``model.generate`` call.

        Each prompt's codes are drawn from its own random generator (`PerPromptSampler`, seeded ``seed + i`` for
        prompt i given an int), so a prompt's audio depends on its seed, not on the rest of its batch or on how
        prompts are split over batches and processes; the sampling is the checkpoint's own (its generation config's
        ``temperature``, ``top_k`` and ``top_p``, classifier-free guidance at `guidance_scale`). `num_inference_steps`
        means nothing to an autoregressive model and is ignored.
        """
        seeds = prompt_seeds(prompts, seed)
        num_samples = self.num_samples if duration is None else round(duration * self.sample_rate)
        if num_samples <= 0:
            raise ValueError(f"duration must be positive, got {duration}.")
        device = self.model.device
        tokens = self.processor.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        checkpoint = self.model.generation_config
        sampler = PerPromptSampler(seeds, self.num_codebooks, scale if scale > 1 else None,
                                   temperature=checkpoint.temperature, top_k=checkpoint.top_k, top_p=checkpoint.top_p)
        config = copy.deepcopy(checkpoint)  # greedy on the sampler's scores, whose maximum is its draw
        config.do_sample = False
        # greedy decoding ignores these; transformers' own defaults, which it does not warn about
        config.temperature, config.top_k, config.top_p = 1.0, 50, 1.0
        config.guidance_scale = scale
        config.max_new_tokens = self.frames(num_samples) + self.num_codebooks - 1
        modes = {module: module.training for module in self.modules()}
        self.eval()
        try:
            audio = self.model.generate(**tokens.to(device), generation_config=config,
                                        logits_processor=LogitsProcessorList([sampler]))
        finally:
            for module, training in modes.items():
                module.training = training
        return audio[..., :num_samples].float()

    # ------------------------------------------------------------------------------------------ parameters, io
    def _named_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {name: [] for name in GROUPS}
        for name, param in self.model.named_parameters():
            parts = name.split(".")
            if parts[0] not in ("decoder", "enc_to_dec_proj"):
                continue  # the frozen T5 and EnCodec
            groups["all"].append((name, param))
            if parts[0] == "enc_to_dec_proj" or "encoder_attn" in parts:
                groups["text_conditioning"].append((name, param))
            if "encoder_attn" in parts:
                groups["cross_attention"].append((name, param))
                if "k_proj" in parts or "v_proj" in parts:
                    groups["cross_attention_kv"].append((name, param))
            if "self_attn" in parts:
                groups["self_attention"].append((name, param))
            if "layers" in parts:
                groups["transformer_blocks"].append((name, param))
        return groups

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        named = self._named_groups()
        if self.lora_rank > 0:
            return adapter_groups(named)
        return {group: [param for _, param in params] for group, params in named.items()}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """The native folder (config, weights with any LoRA merged in, generation config, processor)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        with merged_lora(self.model):
            self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> MusicGen:
        """``cls(pretrained=path, **kwargs)``: `kwargs` are the other constructor arguments (e.g. ``duration``)."""
        return cls(pretrained=str(path), **kwargs)


class PerPromptSampler(LogitsProcessor):
    """Samples the next code of every codebook of every prompt from that prompt's own `torch.Generator`, so that a
    prompt's draws do not depend on its batch.

    Rows of the scores are ``prompt * num_codebooks + codebook``; under classifier-free guidance there are twice as
    many (the conditional rows, then the unconditional ones), combined here as transformers'
    `ClassifierFreeGuidanceLogitsProcessor` combines them. The guided logits are divided by `temperature`, cut to the
    `top_k` largest and to the `top_p` nucleus, and a code is drawn by the Gumbel-max trick (the argmax of the logits
    plus Gumbel noise is a draw from their softmax), with the noise from the prompt's generator. The scores returned
    are 0 at the drawn code and -1e4 elsewhere (finite in every float type), so greedy decoding takes the draw; under
    guidance they are returned twice, for the guidance processor that `MusicgenForConditionalGeneration.generate`
    applies after this one, which then gives them back unchanged.

    Args:
        seeds: one seed per prompt.
        num_codebooks: codebooks per prompt (rows of the scores per prompt).
        guidance_scale: classifier-free guidance scale; None when the scores are not doubled.
        temperature, top_k, top_p: the sampling settings (None: not applied).
    """

    def __init__(
        self,
        seeds: Sequence[int],
        num_codebooks: int,
        guidance_scale: float | None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> None:
        self.seeds = list(seeds)
        self.num_codebooks = num_codebooks
        self.guidance_scale = guidance_scale
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        rows = input_ids.shape[0]
        if rows != len(self.seeds) * self.num_codebooks:
            raise ValueError(f"{rows} rows of codes for {len(self.seeds)} prompts of {self.num_codebooks} codebooks.")
        logits = scores.float()
        if self.guidance_scale is not None:
            if scores.shape[0] != 2 * rows:
                raise ValueError(f"Guided sampling needs conditional and unconditional scores ({2 * rows} rows), "
                                 f"got {scores.shape[0]}.")
            conditional, unconditional = logits.split(rows)
            logits = unconditional + (conditional - unconditional) * self.guidance_scale
        if self.temperature is not None and self.temperature != 1.0:
            logits = logits / self.temperature
        if self.top_k:
            kth = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if self.top_p is not None and self.top_p < 1.0:
            ordered, order = logits.sort(dim=-1, descending=True)
            probabilities = ordered.softmax(-1)
            outside = probabilities.cumsum(-1) - probabilities >= self.top_p  # keeps the top code
            logits = logits.masked_fill(outside.scatter(-1, order, outside), -math.inf)
        if self.generators is None:
            self.generators = [torch.Generator(scores.device).manual_seed(seed) for seed in self.seeds]
        shape = (self.num_codebooks, logits.shape[-1])
        uniform = torch.cat([torch.rand(shape, generator=generator, device=scores.device)
                             for generator in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(torch.finfo(uniform.dtype).tiny, 1.0 - 1e-7)))
        drawn = (logits + gumbel).argmax(-1, keepdim=True)
        chosen = torch.full_like(scores[:rows], -1e4).scatter(-1, drawn, 0.0)
        return torch.cat([chosen, chosen]) if self.guidance_scale is not None else chosen
