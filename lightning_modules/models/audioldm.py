"""AudioLDM (Liu et al., 2023, "AudioLDM: Text-to-Audio Generation with Latent Diffusion Models") through diffusers'
`AudioLDMPipeline`, e.g. ``cvssp/audioldm-s-full-v2``: a UNet over VAE latents of 64-band log-mels, conditioned only
through its ``class_labels`` input on the L2-normalised CLAP text embedding (FiLM: the projected embedding is
concatenated to the time embedding that every ResNet block reads); a HiFi-GAN vocoder renders the decoded mels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import AudioLDMPipeline
from torch import Tensor

from lightning_modules.models.mel_diffusion import MelLatentDiffusion, NamedGroups, named_groups

FILM_GROUPS = ("cross_attention", "cross_attention_kv", "self_attention", "transformer_blocks", "text_conditioning")


def film_membership(name: str) -> list[str]:
    """Groups of a UNet parameter when the text enters only through ``class_embedding`` (see `AudioLDM`)."""
    parts = name.split(".")
    groups = []
    if parts[0] == "class_embedding":
        groups += ["text_conditioning", "cross_attention", "cross_attention_kv"]
    elif "time_emb_proj" in parts:
        groups += ["text_conditioning", "cross_attention"]
    if "attn1" in parts or "attn2" in parts:
        groups.append("self_attention")
    if "transformer_blocks" in parts:
        groups.append("transformer_blocks")
    return groups


class AudioLDM(MelLatentDiffusion):
    """AudioLDM as a `TextToMusicModel`. Arguments as in `MelLatentDiffusion`; sampling defaults are the pipeline's
    (10 DDIM steps, guidance 2.5); `duration` defaults to the UNet's native 5.12 s (``sample_size`` 128).

    Parameter groups. The UNet never sees text tokens: the pipeline calls it with ``encoder_hidden_states=None``, so
    each transformer block's ``attn2`` attends to the latent itself (diffusers falls back to self-attention, and the
    conversion script sets ``cross_attention_dim`` to each level's width for that reason). The text enters through
    ``class_embedding`` (a linear projection of the CLAP embedding, concatenated to the time embedding) and from
    there through every ResNet block's ``time_emb_proj`` (FiLM). So the names map honestly as:

    - ``text_conditioning`` and ``cross_attention``: ``class_embedding`` and every ``time_emb_proj``, the layers
      through which the text reaches the UNet (the family's counterpart of cross-attention);
    - ``cross_attention_kv``: ``class_embedding`` alone, the only layer that reads the text and nothing else (as
      cross-attention's key and value projections do);
    - ``self_attention``: every ``attn1`` and ``attn2`` (both self-attend);
    - ``transformer_blocks``: everything inside ``transformer_blocks``; ``all``: the whole UNet.

    Training conditions on the caption's CLAP text embedding, as sampling does. (The original AudioLDM trained on the
    CLAP *audio* embedding of each clip; the diffusers checkpoints ship only CLAP's text tower.)
    """

    pipeline_class = AudioLDMPipeline
    default_num_inference_steps = 10
    default_guidance_scale = 2.5

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str], prompts: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``class_labels``: `(batch, projection_dim)` normalised CLAP text embeddings, tokenised as the pipeline
        does (padded to the tokenizer's maximum length; "" the unconditional input)."""
        tokens = self.tokenizer(list(captions), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").to(self.text_encoder.device)
        return {"class_labels": self.text_embeds(tokens["input_ids"], tokens["attention_mask"])}

    def text_embeds(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The pipeline's prompt embedding: CLAP's projected text embedding, L2-normalised."""
        return F.normalize(self.text_encoder(input_ids, attention_mask=attention_mask).text_embeds, dim=-1)

    def denoise(self, noisy: Tensor, timesteps: Tensor, conditioning: dict[str, Tensor]) -> Tensor:
        return self.unet(noisy, timesteps, encoder_hidden_states=None, **self._unet_inputs(conditioning)).sample

    def pipeline_text_inputs(self, conditional: dict[str, Tensor], unconditional: dict[str, Tensor] | None) -> dict:
        inputs = {"prompt_embeds": conditional["class_labels"]}
        if unconditional is not None:
            inputs["negative_prompt_embeds"] = unconditional["class_labels"]
        return inputs

    def _named_groups(self) -> NamedGroups:
        return named_groups(self.unet, film_membership, FILM_GROUPS)
