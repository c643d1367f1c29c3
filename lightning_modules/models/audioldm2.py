"""AudioLDM 2 (Liu et al., 2024, "AudioLDM 2: Learning Holistic Audio Generation with Self-supervised Pretraining")
through diffusers' `AudioLDM2Pipeline`, e.g. ``cvssp/audioldm2-music``: CLAP and Flan-T5 encode the prompt, a
projection and GPT-2 generate eight "language of audio" embeddings from them, and a UNet over VAE latents of 64-band
log-mels cross-attends to both the generated embeddings and the T5 states; a HiFi-GAN vocoder renders the mels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import AudioLDM2Pipeline, DiffusionPipeline
from diffusers.pipelines.audioldm2.modeling_audioldm2 import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    UNetMidBlock2DCrossAttn,
)
from torch import Tensor
from transformers import GenerationMixin, GPT2LMHeadModel, GPT2Model, VitsModel

from lightning_modules.models.mel_diffusion import MelLatentDiffusion, NamedGroups, named_groups

GROUPS = ("cross_attention", "cross_attention_kv", "self_attention", "transformer_blocks", "text_conditioning",
          "cross_attention_language_model", "cross_attention_text_encoder_2")


def _pad(states: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """T5 states `(batch, tokens, width)` and their mask zero-padded to `length` tokens (masked out)."""
    extra = length - states.shape[1]
    return F.pad(states, (0, 0, 0, extra)), F.pad(mask, (0, extra))


class AudioLDM2(MelLatentDiffusion):
    """AudioLDM 2 as a `TextToMusicModel`. Arguments as in `MelLatentDiffusion`; sampling defaults are the
    pipeline's (200 DDIM steps, guidance 3.5); `duration` defaults to the UNet's native length (10.24 s for
    ``cvssp/audioldm2-music``). Text-to-speech checkpoints (a VITS second text encoder) are not supported.

    Parameter groups follow the UNet's real structure: each attention level holds, per layer, one transformer per
    entry of its ``cross_attention_dim`` list; an entry ``None`` is a transformer whose ``attn2`` self-attends, the
    first two entries otherwise attend to GPT-2's generated embeddings (``encoder_hidden_states``), later ones to the
    T5 states (``encoder_hidden_states_1``), exactly as the blocks' forward passes route them. So:

    - ``cross_attention``: every ``attn2`` that attends to text (both streams); ``cross_attention_kv`` their
      ``to_k`` / ``to_v``; ``cross_attention_language_model`` and ``cross_attention_text_encoder_2`` the ``attn2``
      of each stream alone;
    - ``self_attention``: every ``attn1`` and the ``attn2`` of the self-attention transformers;
    - ``text_conditioning``: the text cross-attention (the UNet has no pooled text embedding);
    - ``transformer_blocks``: everything inside ``transformer_blocks``; ``all``: the whole UNet.

    The conditioning is the pipeline's own ``encode_prompt`` (CLAP, T5, projection, GPT-2 generation), run on each
    caption alone, so that an item's conditioning does not depend on the other captions of its batch (the pipeline
    pads T5 states to the longest prompt, and the padding shifts GPT-2's positions). Its unconditional input depends
    on the prompt (the empty negative prompt is padded to the prompt's T5 length), so an empty caption in `predict`
    stands for the unconditional branch of the item's own prompt, as classifier-free guidance builds it when that
    prompt is generated.

    The public checkpoints declare the language model as transformers' ``GPT2Model``, which since transformers 4.50
    lacks the generation helpers the pipeline calls; it is then wrapped, weights shared, in the ``GPT2LMHeadModel``
    the pipeline now expects (same hidden states), and `save_pretrained` writes it as such.
    """

    pipeline_class = AudioLDM2Pipeline
    default_num_inference_steps = 200
    default_guidance_scale = 3.5

    def adapt_pipeline(self, pipeline: DiffusionPipeline) -> None:
        if isinstance(pipeline.text_encoder_2, VitsModel):
            raise ValueError("This AudioLDM 2 checkpoint is a text-to-speech one (VITS text encoder, needs a "
                             "transcription); load a text-to-audio or text-to-music checkpoint.")
        language_model = pipeline.language_model
        if isinstance(language_model, GenerationMixin):
            return
        if not isinstance(language_model, GPT2Model):
            raise ValueError(f"AudioLDM 2's language model must be GPT-2, got {type(language_model).__name__}.")
        with torch.device("meta"):
            wrapped = GPT2LMHeadModel(language_model.config)
        wrapped.transformer = language_model
        wrapped.lm_head.weight = language_model.wte.weight
        pipeline.register_modules(language_model=wrapped)

    def enable_gradient_checkpointing(self) -> None:
        """Diffusers' checkpointing everywhere except the outer loop of AudioLDM 2's own cross-attention blocks,
        which hands its checkpointed transformers their arguments out of order (the T5 mask lands on the
        self-attention mask); their transformers still checkpoint each transformer block, only the ResNets of those
        blocks are kept."""
        self.unet.enable_gradient_checkpointing()
        for module in self.unet.modules():
            if isinstance(module, (CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D)):
                module.gradient_checkpointing = False

    # ----------------------------------------------------------------------------------------------- text
    def _encode_one(self, caption: str, unconditional_for: str | None) -> tuple[Tensor, Tensor, Tensor]:
        """(T5 states, their mask, generated embeddings) of one caption, or of the unconditional branch of the
        prompt `unconditional_for`, from the pipeline's `encode_prompt`."""
        device = self.unet.device
        if unconditional_for is None:
            states, mask, generated = self.pipeline.encode_prompt([caption], device, 1, False)
            return states, mask, generated
        states, mask, generated = self.pipeline.encode_prompt([unconditional_for], device, 1, True)
        return states[:1], mask[:1], generated[:1]  # [unconditional, conditional]

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str], prompts: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``encoder_hidden_states`` `(batch, new tokens, gpt2 width)`: GPT-2's generated embeddings;
        ``encoder_hidden_states_1`` `(batch, tokens, t5 width)` and ``encoder_attention_mask_1`` `(batch, tokens)`:
        T5's states, zero-padded to the longest. An empty caption whose `prompts` entry is not empty is that
        prompt's unconditional branch."""
        encoded: dict[tuple[str, str | None], tuple[Tensor, Tensor, Tensor]] = {}
        items = []
        for i, caption in enumerate(captions):
            prompt = prompts[i] if prompts is not None and caption == "" and prompts[i] else None
            key = (caption, prompt)
            if key not in encoded:
                encoded[key] = self._encode_one(caption, prompt)
            items.append(encoded[key])
        length = max(states.shape[1] for states, _, _ in items)
        padded = [_pad(states, mask, length) for states, mask, _ in items]
        return {"encoder_hidden_states": torch.cat([generated for _, _, generated in items]),
                "encoder_hidden_states_1": torch.cat([states for states, _ in padded]),
                "encoder_attention_mask_1": torch.cat([mask for _, mask in padded])}

    def denoise(self, noisy: Tensor, timesteps: Tensor, conditioning: dict[str, Tensor]) -> Tensor:
        return self.unet(noisy, timesteps, **self._unet_inputs(conditioning)).sample

    def pipeline_text_inputs(self, conditional: dict[str, Tensor], unconditional: dict[str, Tensor] | None) -> dict:
        states, mask = conditional["encoder_hidden_states_1"], conditional["encoder_attention_mask_1"]
        inputs = {"generated_prompt_embeds": conditional["encoder_hidden_states"]}
        if unconditional is not None:
            negative, negative_mask = (unconditional["encoder_hidden_states_1"],
                                       unconditional["encoder_attention_mask_1"])
            length = max(states.shape[1], negative.shape[1])
            states, mask = _pad(states, mask, length)
            negative, negative_mask = _pad(negative, negative_mask, length)
            inputs.update(negative_prompt_embeds=negative, negative_attention_mask=negative_mask,
                          negative_generated_prompt_embeds=unconditional["encoder_hidden_states"])
        return {**inputs, "prompt_embeds": states, "attention_mask": mask}

    # ----------------------------------------------------------------------------------------- parameters
    def attention_streams(self) -> dict[str, str | None]:
        """For each transformer of the UNet (``<block>.attentions.<i>``), the pipeline component its ``attn2``
        attends to (``language_model``, ``text_encoder_2``), or None where it self-attends."""
        streams = {}
        for block_name, block in self.unet.named_modules():
            if not isinstance(block, (CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D)):
                continue
            dims = block.cross_attention_dim
            for i in range(len(block.attentions)):
                idx = i % len(dims)
                stream = None if dims[idx] is None else "language_model" if idx <= 1 else "text_encoder_2"
                streams[f"{block_name}.attentions.{i}."] = stream
        return streams

    def _named_groups(self) -> NamedGroups:
        streams = self.attention_streams()

        def membership(name: str) -> list[str]:
            parts = name.split(".")
            groups = ["transformer_blocks"] if "transformer_blocks" in parts else []
            if parts[0] in ("class_embedding", "add_embedding"):
                groups.append("text_conditioning")
            if "attn1" in parts:
                groups.append("self_attention")
            if "attn2" in parts:
                stream = next(stream for prefix, stream in streams.items() if name.startswith(prefix))
                if stream is None:
                    groups.append("self_attention")
                else:
                    groups += ["cross_attention", "text_conditioning", f"cross_attention_{stream}"]
                    if "to_k" in parts or "to_v" in parts:
                        groups.append("cross_attention_kv")
            return groups

        return named_groups(self.unet, membership, GROUPS)
