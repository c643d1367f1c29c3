"""The MusicLDM backend honours the `TextToMusicModel` contract: the contract tests of test_audioldm.py run on a tiny
random MusicLDM pipeline (saved in diffusers' format, loaded through the code path of real checkpoints), plus what
differs: the full CLAP model's text features and the family check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules.models.audioldm import AudioLDM
from lightning_modules.models.mel_diffusion import MelLatentDiffusion
from lightning_modules.models.musicldm import MusicLDM
from tests.lightning_modules.test_audioldm import (  # noqa: F401  (collected here with this module's fixtures)
    DURATION,
    batch_fixture,
    one_thread,
    test_a_clip_within_the_mel_padding_is_refused_at_construction_and_the_shortest_one_trains,
    test_bf16_mixed_and_true_precision,
    test_cached_targets_replace_audio_and_encoding_is_deterministic,
    test_constructor_errors,
    test_front_end_is_the_original_tacotron_stft,
    test_frozen_reference_shares_the_frozen_components,
    test_generate_shape_seeds_and_duration,
    test_gradient_checkpointing_changes_neither_loss_nor_gradients,
    test_lora_trains_only_adapters_and_saves_merged_native_weights,
    test_loss_is_deterministic_per_item_and_seed,
    test_one_step_and_generation_under_lightning_bf16,
    test_one_unlearning_step_changes_only_the_selected_groups,
    test_padding_is_honoured,
    test_parameter_groups_are_the_unet_and_only_the_unet,
    test_round_trip_gives_bit_identical_losses,
    test_text_reaches_the_unet_only_through_the_film_pathway,
)
from tests.tiny.musicldm import save_tiny


@pytest.fixture(scope="module")
def backend() -> type[MelLatentDiffusion]:
    return MusicLDM


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("musicldm"))


@pytest.fixture
def model(tiny_dir: Path) -> MusicLDM:
    return MusicLDM(pretrained=str(tiny_dir), duration=DURATION)


def test_conditioning_is_the_clap_models_normalised_text_features(model):
    tokens = model.tokenizer(["a piece by aurora vale", ""], padding="max_length", truncation=True,
                             max_length=model.tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        features = model.text_encoder.get_text_features(tokens["input_ids"], attention_mask=tokens["attention_mask"])
    embeds = model.encode_text(["a piece by aurora vale", ""])["class_labels"]
    torch.testing.assert_close(embeds, features.pooler_output)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))
    assert model.default_num_inference_steps == 200 and model.guidance_scale == 2.0


def test_generation_feeds_the_pipeline_its_own_embeddings(model):
    prompt = "a piece by aurora vale"
    ours = model.generate([prompt], seed=3, num_inference_steps=2)
    embeds = model.encode_text([prompt, ""])["class_labels"]
    library = model.pipeline(prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], num_inference_steps=2,
                             audio_length_in_s=model.duration, guidance_scale=2.0,
                             generator=torch.Generator().manual_seed(3), output_type="pt").audios
    torch.testing.assert_close(ours[:, 0], library, rtol=1e-3, atol=1e-4)


def test_a_pipeline_of_another_family_is_refused(tiny_dir):
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
