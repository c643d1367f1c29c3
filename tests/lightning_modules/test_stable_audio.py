"""The Stable Audio Open backend honours the `TextToMusicModel` contract (`BackendContract`), on a tiny random pipeline
saved in diffusers' format and loaded through the code path of real checkpoints; plus what is its own: the v-objective
the sampler feeds the DiT, the pipeline's unconditional input, the Lightning step in bf16, LoRA, gradient checkpointing,
bf16 and the shipped config."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from diffusers import StableAudioDiTModel, StableAudioPipeline
from jsonargparse import ArgumentParser
from safetensors.torch import load_file
from torch import nn

from datamodules import read_manifest
from datamodules.audio import AudioTextDataset
from lightning_modules.models.base import PARAMETER_GROUPS, TextToMusicModel
from lightning_modules.models.stable_audio import StableAudioOpen
from lightning_modules.unlearning import NPO, GradientAscent
from tests.conftest import REPO
from tests.lightning_modules.contract import BackendContract, fit_one_step, half_padded
from tests.tiny.stable_audio import save_tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("stable_audio"))


@pytest.fixture(scope="module")
def loaded(tiny_dir: Path) -> StableAudioOpen:
    return StableAudioOpen.from_pretrained(tiny_dir)


@pytest.fixture
def model(loaded: StableAudioOpen) -> StableAudioOpen:
    """A model of its own for each test: a copy of the one loaded once per module."""
    return copy.deepcopy(loaded)


@pytest.fixture(scope="module")
def batch(tiny_dir: Path, tiny_corpus) -> dict:
    probe = StableAudioOpen.from_pretrained(tiny_dir)
    items = read_manifest(tiny_corpus.train_manifest)[:3]
    dataset = AudioTextDataset(items, probe.sample_rate, probe.num_samples, split="forget")
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


@contextmanager
def _quiet_sampler() -> Iterator[None]:
    """torchsde warns when the sampler asks for noise at its Brownian tree's interval ends (as `generate` hides)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Should have", module="torchsde")
        yield


class TestStableAudioContract(BackendContract):
    backend = StableAudioOpen
    sample_rate = 8000
    channels = 2
    prompts = ("a piece by aurora vale", "calm music")
    generate_kwargs: ClassVar[dict[str, Any]] = {"num_inference_steps": 3}

    def perturb(self, model: StableAudioOpen) -> None:
        model.transformer.transformer_blocks[0].attn2.to_k.weight.add_(0.01)

    def frozen_modules(self, model: StableAudioOpen) -> Sequence[nn.Module]:
        return [model.vae, model.text_encoder, model.projection_model]

    def check_generation(self, model: StableAudioOpen, audio: torch.Tensor) -> None:
        again = model.generate(["calm music"], seed=[6], num_inference_steps=3)
        torch.testing.assert_close(audio[1], again[0], rtol=1e-4, atol=1e-5)
        other = model.generate(["calm music"], seed=[7], num_inference_steps=3)
        assert not torch.allclose(again, other, atol=1e-3)
        short = model.generate(["calm music"], seed=6, num_inference_steps=3, duration=0.25)
        assert short.shape == (1, 2, 2000)
        with pytest.raises(ValueError, match="generate duration"):
            model.generate(["a"], duration=2 * model.max_duration)

    def test_loss_is_deterministic_per_item_and_seed(self, model, batch):
        super().test_loss_is_deterministic_per_item_and_seed(model, batch)
        inputs = model.fixed_loss_inputs(batch["id"])
        assert inputs["timesteps"].shape == (3,) and inputs["noise"].shape == (3, 4, model.num_samples // 32)
        swapped = model.fixed_loss_inputs(list(reversed(batch["id"])))
        assert torch.equal(swapped["noise"][0], inputs["noise"][-1])
        with pytest.raises(ValueError, match="continuous times"):
            model.loss(batch, timesteps=torch.tensor([10, 500, 999]), noise=inputs["noise"])

    def test_padding_is_honoured(self, model, batch):
        """Masked out of the loss and of the timing conditioning."""
        super().test_padding_is_honoured(model, batch)
        padded = half_padded(batch)
        with torch.no_grad():
            prediction = model.predict(padded, **model.fixed_loss_inputs(batch["id"]))
        frames = prediction.output.shape[-1]
        assert torch.equal(prediction.weight[..., : frames // 2], torch.ones(3, 1, frames // 2))
        assert not prediction.weight[..., frames // 2 :].any()
        error = (prediction.output - prediction.target).pow(2)[..., : frames // 2].flatten(1).mean(1)
        torch.testing.assert_close(model.criterion(*prediction), error)
        seconds = model.encode_text(batch["caption"], padded["mask"].sum(1) / model.sample_rate)
        full = model.encode_text(batch["caption"], batch["mask"].sum(1) / model.sample_rate)
        assert not torch.equal(seconds["global_hidden_states"], full["global_hidden_states"])

    def test_parameter_groups(self, model):
        """Named after the DiT's modules."""
        super().test_parameter_groups(model)
        ids = {name: {id(p) for p in params} for name, params in model.parameter_groups().items()}
        names = {id(p): name for name, p in model.transformer.named_parameters()}
        assert all(".attn2." in names[i] for i in ids["cross_attention"])
        assert {names[i].rsplit(".", 2)[-2] for i in ids["cross_attention_kv"]} == {"to_k", "to_v"}
        assert all(".attn1." in names[i] for i in ids["self_attention"])
        assert ids["cross_attention_kv"] < ids["cross_attention"] < ids["transformer_blocks"] < ids["all"]
        projection = {id(p) for p in model.transformer.cross_attention_proj.parameters()}
        assert ids["text_conditioning"] == ids["cross_attention"] | projection
        trainable = {id(p) for p in model.transformer.parameters() if p.requires_grad}
        assert ids["all"] == trainable and id(model.transformer.time_proj.weight) not in trainable
        assert model.transformer.training  # after the contract's model.train()

    def test_constructor_errors(self, tiny_dir, tmp_path):
        super().test_constructor_errors(tmp_path)
        with pytest.raises(FileNotFoundError, match="model_index.json"):
            StableAudioOpen(pretrained=str(tmp_path))
        with pytest.raises(ValueError, match="duration=1.0"):
            StableAudioOpen(pretrained=str(tiny_dir), duration=1.0)
        assert StableAudioOpen(pretrained=str(tiny_dir), duration=0.1).num_samples == 800  # 25 whole frames of 32


def test_training_objective_is_what_the_sampler_feeds_the_dit(model, batch):
    """x_t = cos(t pi/2) x0 + sin(t pi/2) noise and v = cos noise - sin x0 are the EDM preconditioning of
    CosineDPMSolverMultistepScheduler at sigma = tan(t pi/2); the pipeline feeds the DiT c_in * sample and t."""
    scheduler = model.scheduler
    fed = []
    hook = model.transformer.register_forward_pre_hook(lambda _, args: fed.append(args))
    inputs = model.fixed_loss_inputs(batch["id"])
    with torch.no_grad():
        prediction = model.predict(batch, **inputs)
    hook.remove()
    x0 = model.encode_audio(batch["audio"], batch["mask"]).double()
    noise, sigma_edm = inputs["noise"].double(), (inputs["timesteps"].double() * math.pi / 2).tan()[:, None, None]
    sample = x0 + sigma_edm * noise  # where the sampler stands at noise level sigma_edm
    torch.testing.assert_close(fed[0][0].double(), scheduler.precondition_inputs(sample, sigma_edm), rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(fed[0][1].double(), scheduler.precondition_noise(sigma_edm).flatten())
    torch.testing.assert_close(scheduler.precondition_outputs(sample, prediction.target.double(), sigma_edm), x0,
                               rtol=1e-4, atol=1e-4)

    t = torch.linspace(0.02, 0.98, 9, dtype=torch.float64)[:, None, None]
    x0, noise = torch.randn(9, 4, 16, dtype=torch.float64), torch.randn(9, 4, 16, dtype=torch.float64)
    alpha, sigma, sigma_edm = (t * math.pi / 2).cos(), (t * math.pi / 2).sin(), (t * math.pi / 2).tan()
    sample = x0 + sigma_edm * noise  # the sampler's unscaled state at noise level sigma_edm
    torch.testing.assert_close(scheduler.precondition_inputs(sample, sigma_edm), alpha * x0 + sigma * noise)
    torch.testing.assert_close(scheduler.precondition_noise(sigma_edm), t)
    torch.testing.assert_close(scheduler.precondition_outputs(sample, alpha * noise - sigma * x0, sigma_edm), x0)

    seen = []
    model.transformer.register_forward_pre_hook(lambda _, args: seen.append(args), with_kwargs=False)
    pipeline = model.pipeline()
    latents = torch.randn(1, 4, model.transformer.config.sample_size)
    with _quiet_sampler():
        pipeline("a piece", num_inference_steps=3, guidance_scale=1.0, latents=latents)
    pipeline.scheduler.set_timesteps(3)
    for step, (_, times) in enumerate(seen):
        sigma_edm = pipeline.scheduler.sigmas[step]
        assert 0 < times.item() < 1 and times.item() == pytest.approx(math.atan(sigma_edm) * 2 / math.pi, rel=1e-6)
    torch.testing.assert_close(seen[0][0], latents, rtol=1e-5, atol=1e-5)  # x_t at t ~ 1 is the noise itself


def test_unconditional_input_is_the_pipelines(model, batch):
    inputs = model.fixed_loss_inputs(batch["id"])
    conditional = model.predict(batch, **inputs).output
    unconditional = model.predict(batch, captions=[""] * 3, **inputs).output
    assert not torch.allclose(conditional, unconditional)
    captured = []
    model.transformer.register_forward_pre_hook(lambda _, args, kwargs: captured.append(kwargs), with_kwargs=True)
    with _quiet_sampler():
        model.pipeline()(["a piece by", "calm"], num_inference_steps=1, guidance_scale=3.0, audio_end_in_s=0.25)
    unconditional = model.encode_text(["", ""], torch.full((2,), 0.25))
    conditional = model.encode_text(["a piece by", "calm"], torch.full((2,), 0.25))
    for key in ("encoder_hidden_states", "global_hidden_states"):
        assert torch.equal(torch.cat([unconditional[key], conditional[key]]), captured[0][key]), key
    assert not unconditional["encoder_hidden_states"].any()


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_one_unlearning_step_changes_only_the_selected_group(precision, model, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TTM_UNLEARNING_CACHE", str(tmp_path))
    selected = {id(p) for p in model.parameter_groups()["cross_attention"]}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    terms = fit_one_step(model, tiny_corpus, ["cross_attention"], precision=precision)
    assert all(torch.isfinite(value) for value in terms.values())
    changed = {id(param) for name, param in model.named_parameters()  # bf16-true casts: compare in its dtype
               if not torch.equal(before[name].to(param.dtype), param)}
    # in bf16 weights an update below a weight's resolution is lost (a few cross-attention K weights here)
    assert changed == selected if precision == "32-true" else changed and changed <= selected


def test_methods_with_a_frozen_reference_share_the_frozen_modules(model, batch):
    module = NPO(model, parameter_groups=["cross_attention_kv"])
    assert module.reference.vae.encoder.conv1.weight_v is model.vae.encoder.conv1.weight_v
    terms = module.objective(batch, batch)
    terms["loss"].backward()
    assert all(torch.isfinite(value) for value in terms.values())


def test_lora_trains_adapters_and_saves_a_plain_pipeline(tiny_dir, batch, tmp_path):
    model = StableAudioOpen(pretrained=str(tiny_dir), lora_rank=2, lora_alpha=4.0)
    lora = {id(p) for name, p in model.named_parameters() if "lora_" in name}
    groups = model.parameter_groups()
    assert all(groups[name] for name in PARAMETER_GROUPS)
    assert {id(p) for params in groups.values() for p in params} == lora
    module = GradientAscent(model, optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
                            parameter_groups=["all"])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = module.configure_optimizers()
    module.objective(batch, batch)["loss"].backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert changed and all("lora_" in name for name in changed)
    assert model.generate(["calm music"], num_inference_steps=2).shape == (1, 2, model.num_samples)

    model.save_pretrained(tmp_path / "merged")
    state = load_file(next((tmp_path / "merged" / "transformer").glob("*.safetensors")))
    assert not any("lora" in key for key in state)
    plain = StableAudioPipeline.from_pretrained(tmp_path / "merged").transformer
    assert type(plain) is StableAudioDiTModel
    inputs = model.fixed_loss_inputs(batch["id"])
    with torch.no_grad():
        adapted = model.loss(batch, **inputs)
        model.transformer = plain  # the plain library DiT with the merged weights, under the same inputs
        torch.testing.assert_close(model.loss(batch, **inputs), adapted, rtol=1e-4, atol=1e-6)
    loaded = StableAudioOpen.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(loaded.loss(batch, **inputs).detach(), adapted, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="lora_rank is 0"):
        StableAudioOpen(pretrained=str(tiny_dir), lora_groups=["cross_attention"])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_dir, batch):
    losses, grads = [], []
    for checkpointing in (False, True):
        model = StableAudioOpen(pretrained=str(tiny_dir), gradient_checkpointing=checkpointing).train()
        loss = model.loss(batch, **model.fixed_loss_inputs(batch["id"])).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in model.parameter_groups()["all"]])
    assert model.transformer.gradient_checkpointing
    assert torch.equal(*losses)
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_and_bf16_weights(model, batch):
    inputs = model.fixed_loss_inputs(batch["id"])
    full = model.loss(batch, **inputs).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.loss(batch, **inputs).detach()
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, full, rtol=0.1)
    model.to(torch.bfloat16)
    half = model.loss({**batch, "audio": batch["audio"].bfloat16()}, **inputs).detach()
    assert torch.isfinite(half).all() and torch.allclose(half, full, rtol=0.1)
    audio = model.generate(["calm music"], num_inference_steps=2)
    assert audio.dtype == torch.float32 and torch.isfinite(audio).all()


@pytest.mark.network
def test_stable_audio_open_checkpoint():
    model = StableAudioOpen(pretrained="stabilityai/stable-audio-open-1.0", duration=2.0)
    assert model.sample_rate == 44100 and model.transformer.config.in_channels == 64
    audio = torch.randn(1, model.num_samples) * 0.1
    batch = {"audio": audio, "mask": torch.ones_like(audio, dtype=torch.bool), "caption": ["calm piano"], "id": ["x"]}
    with torch.no_grad():
        assert torch.isfinite(model.loss(batch, **model.fixed_loss_inputs(batch["id"]))).all()
    generated = model.generate(["calm piano"], num_inference_steps=2, duration=1.0)
    assert generated.shape == (1, 2, 44100) and torch.isfinite(generated).all()


def test_the_config_builds_the_model(tiny_dir):
    parser = ArgumentParser()
    parser.add_subclass_arguments(TextToMusicModel, "model")
    config = parser.parse_args([f"--model={REPO / 'configs/model/stable_audio_open.yaml'}",
                                f"--model.init_args.pretrained={tiny_dir}"])
    model = parser.instantiate_classes(config).model
    assert isinstance(model, StableAudioOpen) and model.num_samples == 4096 and model.guidance_scale == 7.0
