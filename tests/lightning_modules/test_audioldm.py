"""The AudioLDM backend honours the `TextToMusicModel` contract (`BackendContract`, and `MelDiffusionContract` for what
every mel latent-diffusion backend does), on a tiny random pipeline saved in diffusers' format and loaded through the
code path of real checkpoints; plus what is AudioLDM's own: conditioning and generation as the library's pipeline."""

from __future__ import annotations

import pytest
import torch
from diffusers import AudioLDMPipeline

from lightning_modules.models.audioldm import AudioLDM
from tests.lightning_modules.mel_contract import MelDiffusionContract
from tests.tiny.audioldm import save_tiny


class TestAudioLDMContract(MelDiffusionContract):
    backend = AudioLDM
    save_tiny = staticmethod(save_tiny)

    def test_conditioning_and_generation_match_the_library_pipeline(self, model):
        prompt = "a piece by aurora vale"
        embeds = model.pipeline._encode_prompt([prompt], model.unet.device, 1, True)  # [unconditional, conditional]
        torch.testing.assert_close(model.encode_text([""])["class_labels"], embeds[:1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.encode_text([prompt])["class_labels"], embeds[1:], rtol=1e-5, atol=1e-6)
        ours = model.generate([prompt], seed=3, num_inference_steps=2, guidance_scale=2.5)
        library = model.pipeline(prompt, audio_length_in_s=model.duration, num_inference_steps=2, guidance_scale=2.5,
                                 generator=torch.Generator().manual_seed(3), output_type="pt").audios
        torch.testing.assert_close(ours[:, 0], library, rtol=1e-4, atol=1e-5)
        assert isinstance(model.pipeline, AudioLDMPipeline) and model.pipeline.unet is model.unet


@pytest.mark.network
def test_real_checkpoint_loss_and_generation():
    model = AudioLDM(pretrained="cvssp/audioldm-s-full-v2", duration=2.56)
    audio = torch.randn(1, model.num_samples) * 0.1
    batch = {"audio": audio, "mask": torch.ones_like(audio, dtype=torch.bool), "caption": ["calm piano"], "id": ["x"]}
    assert torch.isfinite(model.loss(batch, **model.fixed_loss_inputs(batch["id"]))).all()
    generated = model.generate(["calm piano"], num_inference_steps=2, duration=1.0)
    assert generated.shape == (1, 1, 16000) and torch.isfinite(generated).all()
