"""The MusicLDM backend honours the `TextToMusicModel` contract (`BackendContract`, and `MelDiffusionContract` for
what every mel latent-diffusion backend does), on a tiny random MusicLDM pipeline saved in diffusers' format and loaded
through the code path of real checkpoints; plus what differs: the full CLAP model's text features and the family
check."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.models.audioldm import AudioLDM
from lightning_modules.models.musicldm import MusicLDM
from tests.lightning_modules.mel_contract import MelDiffusionContract
from tests.tiny.musicldm import save_tiny


class TestMusicLDMContract(MelDiffusionContract):
    backend = MusicLDM
    save_tiny = staticmethod(save_tiny)

    def test_conditioning_is_the_clap_models_normalised_text_features(self, model):
        tokens = model.tokenizer(["a piece by aurora vale", ""], padding="max_length", truncation=True,
                                 max_length=model.tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            features = model.text_encoder.get_text_features(tokens["input_ids"],
                                                            attention_mask=tokens["attention_mask"])
        embeds = model.encode_text(["a piece by aurora vale", ""])["class_labels"]
        torch.testing.assert_close(embeds, features.pooler_output)
        torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))
        assert model.default_num_inference_steps == 200 and model.guidance_scale == 2.0

    def test_generation_feeds_the_pipeline_its_own_embeddings(self, model):
        prompt = "a piece by aurora vale"
        ours = model.generate([prompt], seed=3, num_inference_steps=2)
        embeds = model.encode_text([prompt, ""])["class_labels"]
        library = model.pipeline(prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], num_inference_steps=2,
                                 audio_length_in_s=model.duration, guidance_scale=2.0,
                                 generator=torch.Generator().manual_seed(3), output_type="pt").audios
        torch.testing.assert_close(ours[:, 0], library, rtol=1e-3, atol=1e-4)

    def test_a_pipeline_of_another_family_is_refused(self, tiny_dir):
        with pytest.raises(ValueError, match="holds a MusicLDMPipeline, not a AudioLDMPipeline"):
            AudioLDM(pretrained=str(tiny_dir))


@pytest.mark.network
def test_real_checkpoint_loss_and_generation():
    model = MusicLDM(pretrained="ucsd-reach/musicldm", duration=2.56)
    audio = torch.randn(1, model.num_samples) * 0.1
    items = {"audio": audio, "mask": torch.ones_like(audio, dtype=torch.bool), "caption": ["calm piano"], "id": ["x"]}
    assert torch.isfinite(model.loss(items, **model.fixed_loss_inputs(items["id"]))).all()
    generated = model.generate(["calm piano"], num_inference_steps=2, duration=1.0)
    assert generated.shape == (1, 1, 16000) and torch.isfinite(generated).all()
