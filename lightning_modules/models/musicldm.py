"""MusicLDM (Chen et al., 2024, "MusicLDM: Enhancing Novelty in Text-to-Music Generation Using Beat-Synchronous Mixup
Strategies") through diffusers' `MusicLDMPipeline`, e.g. ``ucsd-reach/musicldm``: AudioLDM's architecture and mel
front end, trained on music, with a full CLAP model retrained on music whose normalised text features condition the
UNet through ``class_labels``.
"""

from __future__ import annotations

from diffusers import MusicLDMPipeline
from torch import Tensor

from lightning_modules.models.audioldm import AudioLDM


class MusicLDM(AudioLDM):
    """MusicLDM as a `TextToMusicModel`. Arguments as in `MelLatentDiffusion`; sampling defaults are the pipeline's
    (200 DDIM steps, guidance 2.0); `duration` defaults to the UNet's native length (10.24 s for the public
    checkpoint). Parameter groups are AudioLDM's (the UNet is conditioned the same way, through FiLM only): see
    `AudioLDM`.

    The text conditioning is the pipeline's: ``text_encoder.get_text_features`` (CLAP's normalised projected text
    embedding). Generation hands the pipeline these embeddings as ``prompt_embeds`` / ``negative_prompt_embeds``:
    under transformers 5 ``get_text_features`` returns an output object, which the pipeline's own prompt encoding
    (written for transformers 4) cannot handle.
    """

    pipeline_class = MusicLDMPipeline
    default_num_inference_steps = 200
    default_guidance_scale = 2.0

    def text_embeds(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        features = self.text_encoder.get_text_features(input_ids, attention_mask=attention_mask)
        return getattr(features, "pooler_output", features)  # transformers 5: an output object; 4: the tensor
