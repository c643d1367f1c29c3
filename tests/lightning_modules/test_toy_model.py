"""The toy backend honours the `TextToMusicModel` contract."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.models import ToyTextToMusic
from lightning_modules.models.diffusion import diffusion_target


def test_loss_is_bit_identical_with_fixed_timesteps_and_noise(tiny_model, tiny_batch):
    inputs = tiny_model.fixed_loss_inputs(tiny_batch["id"])
    first, second = tiny_model.loss(tiny_batch, **inputs), tiny_model.loss(tiny_batch, **inputs)
    assert first.shape == (4,)
    assert torch.equal(first, second)
    other = tiny_model.fixed_loss_inputs(tiny_batch["id"], seed=1)
    assert not torch.equal(first, tiny_model.loss(tiny_batch, **other))


def test_fixed_noise_depends_on_the_item_id_only(tiny_model):
    a = tiny_model.fixed_loss_inputs(["x", "y"])
    b = tiny_model.fixed_loss_inputs(["y", "z", "x"])
    assert torch.equal(a["noise"][0], b["noise"][2]) and a["timesteps"][0] == b["timesteps"][2]
    assert not torch.equal(a["noise"][0], a["noise"][1])


def test_loss_counts_only_the_valid_audio(tiny_model, tiny_batch):
    mask = tiny_batch["mask"].clone()
    mask[:, mask.shape[1] // 2 :] = False
    batch = {**tiny_batch, "mask": mask}
    inputs = tiny_model.fixed_loss_inputs(batch["id"])
    targets = tiny_model.encode_audio(batch["audio"], mask)
    noisy = tiny_model.scheduler.add_noise(targets, inputs["noise"], inputs["timesteps"])
    with torch.no_grad():
        prediction = tiny_model.unet(noisy, inputs["timesteps"], **tiny_model.encode_text(batch["caption"])).sample
        error = (prediction - diffusion_target(tiny_model.scheduler, targets, inputs["noise"], inputs["timesteps"]))
        valid_columns = targets.shape[-1] // 2
        expected = error[..., :valid_columns].pow(2).flatten(1).mean(1)
        assert torch.allclose(tiny_model.loss(batch, **inputs), expected, rtol=1e-5)
        assert not torch.allclose(tiny_model.loss(tiny_batch, **inputs), expected, rtol=1e-3)


def test_cached_targets_replace_audio(tiny_model, tiny_batch):
    inputs = tiny_model.fixed_loss_inputs(tiny_batch["id"])
    targets = tiny_model.encode_audio(tiny_batch["audio"], tiny_batch["mask"])
    cached = {**tiny_batch, "targets": targets, "audio": torch.zeros_like(tiny_batch["audio"])}
    assert torch.equal(tiny_model.loss(cached, **inputs), tiny_model.loss(tiny_batch, **inputs))


def relative_l2(audio: torch.Tensor, reference: torch.Tensor) -> float:
    return ((audio - reference).norm() / reference.norm()).item()


def test_generate_shape_rate_and_seeds(tiny_model):
    prompts = ["a piece by aurora vale", "a piece by copper lanterns"]
    audio = tiny_model.generate(prompts, seed=[5, 6])
    assert audio.shape == (2, 1, tiny_model.num_samples) and torch.isfinite(audio).all()
    assert tiny_model.sample_rate == 16000
    assert torch.equal(audio, tiny_model.generate(prompts, seed=[5, 6]))
    # Per-prompt seeds fix the starting noise whatever the batch; the batch size changes only float rounding (BLAS and
    # oneDNN pick their blocking by batch size), which sampling amplifies. Measured on this random tiny model
    # (v-prediction, zero terminal SNR): at most 0.050 relative L2 over 40 prompts alone against in a batch of 8, and
    # at least 1.18 for another seed; the bounds leave 2x margin on the first and 2.4x on the second.
    again = tiny_model.generate(["a piece by copper lanterns"], seed=[6])
    assert relative_l2(again[0], audio[1]) < 0.1
    assert relative_l2(tiny_model.generate(["a piece by copper lanterns"], seed=[7])[0], audio[1]) > 0.5
    with pytest.raises(ValueError, match="one seed per prompt"):
        tiny_model.generate(["a", "b"], seed=[1])


def test_sampling_from_a_noised_clip_keeps_it_by_strength(tiny_model, tiny_batch):
    targets = tiny_model.encode_audio(tiny_batch["audio"][:2], tiny_batch["mask"][:2])
    captions = tiny_batch["caption"][:2]

    def sample(**kwargs):
        return tiny_model.sample_targets(captions, seed=[3, 4], num_inference_steps=10, **kwargs)

    # zero terminal SNR: at strength 1 the clip is fully replaced by noise, so sampling ignores it, bit for bit
    assert torch.equal(sample(init_targets=targets, strength=1.0), sample())
    kept = sample(init_targets=targets, strength=0.1)
    assert relative_l2(kept, targets) < 0.5 * relative_l2(sample(), targets)
    with pytest.raises(ValueError, match="strength"):
        sample(init_targets=targets, strength=0.0)


def test_parameter_groups_follow_module_names(tiny_model):
    groups = tiny_model.parameter_groups()
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert all(ids[name] for name in ("all", "cross_attention", "cross_attention_kv", "self_attention",
                                      "transformer_blocks"))
    assert ids["cross_attention_kv"] < ids["cross_attention"] < ids["transformer_blocks"] < ids["all"]
    assert not ids["cross_attention"] & ids["self_attention"]
    pooled_text = {id(p) for p in tiny_model.unet.class_embedding.parameters()}
    assert ids["text_conditioning"] == ids["cross_attention"] | pooled_text and pooled_text
    assert {id(p) for p in tiny_model.text_encoder.parameters()}.isdisjoint(ids["all"])
    with pytest.raises(ValueError, match="known:.*cross_attention"):
        tiny_model.select_parameters(["attention"])


def test_save_and_load_round_trip(tiny_model, tiny_batch, tmp_path):
    inputs = tiny_model.fixed_loss_inputs(tiny_batch["id"])
    with torch.no_grad():
        next(iter(tiny_model.unet.parameters())).add_(0.01)
    tiny_model.save_pretrained(tmp_path / "saved")
    loaded = ToyTextToMusic.from_pretrained(tmp_path / "saved")
    assert torch.equal(loaded.loss(tiny_batch, **inputs), tiny_model.loss(tiny_batch, **inputs))


def test_text_encoder_stays_frozen_and_in_eval_mode(tiny_model):
    tiny_model.train()
    assert not tiny_model.text_encoder.training
    assert not any(p.requires_grad for p in tiny_model.text_encoder.parameters())


def test_constructor_errors(tiny_model_dir, tiny_clap_dir, tmp_path):
    with pytest.raises(ValueError, match="either `pretrained`"):
        ToyTextToMusic(pretrained=str(tiny_model_dir), text_encoder=str(tiny_clap_dir))
    with pytest.raises(ValueError, match="needs `text_encoder`"):
        ToyTextToMusic()
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        ToyTextToMusic(pretrained=str(tmp_path / "missing-folder"))
