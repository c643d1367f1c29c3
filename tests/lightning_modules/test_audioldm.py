"""The AudioLDM backend honours the `TextToMusicModel` contract, on a tiny random pipeline saved in diffusers' format
and loaded through the code path of real checkpoints.

The contract tests (those before the "AudioLDM itself" section) use only the fixtures ``backend``, ``tiny_dir``,
``model``, ``batch`` and conftest's ``tiny_corpus``: test_musicldm.py and test_audioldm2.py import them and run them
on their own backend by overriding the first three."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from diffusers import AudioLDMPipeline
from safetensors.torch import load_file

from datamodules import ForgetRetainDataModule, read_manifest
from datamodules.audio import AudioTextDataset
from lightning_modules.models.audioldm import AudioLDM
from lightning_modules.models.base import PARAMETER_GROUPS
from lightning_modules.models.lora import has_lora
from lightning_modules.models.mel_diffusion import N_FFT, MelLatentDiffusion
from lightning_modules.unlearning import GradientAscent
from lightning_modules.unlearning.base import frozen_reference
from tests.tiny.audioldm import save_tiny

NUM_SAMPLES = 5120  # 32 mel frames, 16 latent frames
DURATION = NUM_SAMPLES / 16000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (tens of times slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backend() -> type[MelLatentDiffusion]:
    return AudioLDM


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("audioldm"))


@pytest.fixture
def model(backend, tiny_dir: Path) -> MelLatentDiffusion:
    return backend(pretrained=str(tiny_dir), duration=DURATION)


@pytest.fixture(scope="module", name="batch")
def batch_fixture(tiny_corpus) -> dict:
    dataset = AudioTextDataset(read_manifest(tiny_corpus.train_manifest)[:2], 16000, NUM_SAMPLES, split="forget")
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def _half_padded(batch: dict) -> dict:
    mask = batch["mask"].clone()
    mask[:, mask.shape[1] // 2 :] = False
    return {**batch, "audio": batch["audio"] * mask, "mask": mask}


def _unet_changed(model, before: dict) -> set[str]:
    return {name for name, param in model.named_parameters() if not torch.equal(before[name], param)}


# ------------------------------------------------------------------------------------- contract, any mel backend
def test_round_trip_gives_bit_identical_losses(backend, model, batch, tmp_path):
    inputs = model.fixed_loss_inputs(batch["id"])
    with torch.no_grad():
        next(iter(model.unet.parameters())).add_(0.01)
    model.save_pretrained(tmp_path / "saved")
    loaded = backend.from_pretrained(tmp_path / "saved")
    assert loaded.num_samples != model.num_samples  # the default duration is the UNet's native length
    loaded = backend(pretrained=str(tmp_path / "saved"), duration=DURATION)
    assert torch.equal(loaded.loss(batch, **inputs), model.loss(batch, **inputs))
    plain = backend.pipeline_class.from_pretrained(tmp_path / "saved")
    assert all(torch.equal(a, b) for a, b in zip(plain.unet.parameters(), model.unet.parameters(), strict=True))


def test_loss_is_deterministic_per_item_and_seed(model, batch):
    inputs = model.fixed_loss_inputs(batch["id"])
    assert inputs["noise"].shape == (2, *model.latent_shape(model.num_samples))
    first, second = model.loss(batch, **inputs), model.loss(batch, **inputs)
    assert first.shape == (2,) and torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.equal(first, model.loss(batch, **model.fixed_loss_inputs(batch["id"], seed=1)))
    drawn = [model.loss(batch, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*drawn)
    # the draws do not depend on the captions: the same generator gives the same noisy input and target
    conditional = model.predict(batch, generator=torch.Generator().manual_seed(4))
    unconditional = model.predict(batch, captions=["", ""], generator=torch.Generator().manual_seed(4))
    assert torch.equal(conditional.target, unconditional.target)
    assert not torch.allclose(conditional.output, unconditional.output)


def test_padding_is_honoured(model, batch):
    padded = _half_padded(batch)
    inputs = model.fixed_loss_inputs(batch["id"])
    weight = model.predict(padded, **inputs).weight
    frames = weight.shape[2]
    assert weight.shape == (2, 1, frames, 1) and frames == model.latent_shape(model.num_samples)[1]
    assert (weight[:, :, : frames // 2 - 1] == 1).all() and (weight[:, :, frames // 2 + 1 :] == 0).all()
    noisy_padding = {**padded, "audio": padded["audio"] + (~padded["mask"]) * torch.randn_like(padded["audio"])}
    assert torch.equal(model.loss(padded, **inputs), model.loss(noisy_padding, **inputs))
    assert not torch.allclose(model.loss(padded, **inputs), model.loss(batch, **inputs))


def test_cached_targets_replace_audio_and_encoding_is_deterministic(model, batch):
    inputs = model.fixed_loss_inputs(batch["id"])
    targets = model.encode_audio(batch["audio"], batch["mask"])
    assert torch.equal(targets, model.encode_audio(batch["audio"], batch["mask"]))
    assert targets.dtype == torch.float32 and targets.shape == (2, *model.latent_shape(model.num_samples))
    cached = {**batch, "targets": targets, "audio": torch.zeros_like(batch["audio"])}
    assert torch.equal(model.loss(cached, **inputs), model.loss(batch, **inputs))
    assert model.audio_encoder() is model.vae and model.targets_settings()["frames"] == targets.shape[2] * 2


def test_front_end_is_the_original_tacotron_stft(model, batch):
    librosa = pytest.importorskip("librosa")
    vocoder = model.vocoder.config
    assert (model.sample_rate, model.hop_length, model.mel.n_mels) == (vocoder.sampling_rate, 160, 64)
    audio = batch["audio"][:1]
    mel = model.log_mel(audio, batch["mask"][:1])
    assert mel.shape == (1, 1, model.mel_frames(NUM_SAMPLES), 64)
    clip = audio - audio.mean()
    clip = 0.5 * clip / clip.abs().max()  # the original loaders' normalize_wav
    clip = torch.nn.functional.pad(clip, (0, model.mel_frames(NUM_SAMPLES) * 160 - NUM_SAMPLES))
    clip = torch.nn.functional.pad(clip[:, None], (432, 432), mode="reflect")[:, 0]
    spectrum = torch.stft(clip, 1024, 160, 1024, window=torch.hann_window(1024), center=False,
                          return_complex=True).abs()
    basis = torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000))
    expected = (basis @ spectrum).clamp_min(1e-5).log().transpose(1, 2)
    torch.testing.assert_close(mel[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_generate_shape_seeds_and_duration(model):
    model.train()
    prompts = ["a piece by aurora vale", "a piece by copper lanterns"]
    audio = model.generate(prompts, seed=[5, 6], num_inference_steps=2)
    assert model.training and not model.vae.training  # the mode is restored, frozen parts stay in eval
    assert audio.shape == (2, 1, model.num_samples) and audio.dtype == torch.float32 and torch.isfinite(audio).all()
    assert model.sample_rate == 16000
    again = model.generate(prompts[1:], seed=[6], num_inference_steps=2)
    torch.testing.assert_close(audio[1], again[0], rtol=1e-3, atol=1e-4)  # per prompt: independent of the batch
    other = model.generate(prompts[:1], seed=[7], num_inference_steps=2)[0]
    assert (other - audio[0]).abs().max() > 0.01 * audio[0].abs().max() > 0
    short = model.generate(prompts[:1], seed=1, num_inference_steps=1, duration=0.2)
    assert short.shape == (1, 1, 3200)
    with pytest.raises(ValueError, match="one seed per prompt"):
        model.generate(prompts, seed=[1])


def test_parameter_groups_are_the_unet_and_only_the_unet(model):
    groups = model.parameter_groups()
    assert set(PARAMETER_GROUPS) | {"text_conditioning"} <= set(groups)
    assert all(groups[name] for name in groups), [name for name in groups if not groups[name]]
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert ids["all"] == {id(p) for p in model.unet.parameters()}
    assert all(ids[name] <= ids["all"] for name in ids)
    assert ids["cross_attention_kv"] < ids["cross_attention"]
    frozen = {id(p) for name in model.frozen for p in getattr(model, name).parameters()}
    assert frozen and not frozen & ids["all"]
    model.train()
    assert all(not getattr(model, name).training for name in model.frozen)
    assert not any(p.requires_grad for name in model.frozen for p in getattr(model, name).parameters())


def _fit_one_step(model, corpus, groups: list[str], **trainer) -> dict:
    """One real GradientAscent step through a Lightning Trainer on the tiny corpus; its loss terms."""
    module = GradientAscent(model, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), parameter_groups=groups)
    terms = []
    objective = module.objective
    module.objective = lambda forget, retain: terms.append(objective(forget, retain)) or terms[-1]
    data = ForgetRetainDataModule(manifest=str(corpus.train_manifest), forget_groups=[corpus.artists[0]],
                                  batch_size=2, sample_rate=model.sample_rate, num_samples=model.num_samples)
    L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, **trainer).fit(module, data)
    assert len(terms) == 1
    return terms[0]


def test_one_unlearning_step_changes_only_the_selected_groups(model, tiny_corpus):
    selected = {name for name, p in model.named_parameters()
                if id(p) in {id(q) for q in model.parameter_groups()["cross_attention"]}}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    terms = _fit_one_step(model, tiny_corpus, ["cross_attention"])
    assert all(torch.isfinite(value) for value in terms.values())
    assert selected and _unet_changed(model, before) == selected


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_one_step_and_generation_under_lightning_bf16(model, tiny_corpus, precision):
    terms = _fit_one_step(model, tiny_corpus, ["self_attention"], precision=precision)
    assert all(torch.isfinite(value) for value in terms.values())
    assert model.unet.dtype == (torch.bfloat16 if precision == "bf16-true" else torch.float32)
    assert torch.isfinite(model.generate(["a piece"], num_inference_steps=1)).all()


def test_frozen_reference_shares_the_frozen_components(model, batch):
    trainable = model.parameter_groups()["cross_attention_kv"]
    reference = frozen_reference(model, trainable)
    assert reference.vae is not model.vae and next(reference.vae.parameters()) is next(model.vae.parameters())
    assert reference.pipeline.unet is reference.unet  # the copy's pipeline runs the copy's modules
    inputs = model.fixed_loss_inputs(batch["id"])
    assert torch.equal(reference.loss(batch, **inputs), model.loss(batch, **inputs))


def test_lora_trains_only_adapters_and_saves_merged_native_weights(backend, tiny_dir, batch, tmp_path):
    model = backend(pretrained=str(tiny_dir), duration=DURATION, lora_rank=2, lora_alpha=4.0)
    groups = model.parameter_groups()
    names = {id(p): name for name, p in model.named_parameters()}
    assert all(groups[name] for name in PARAMETER_GROUPS)
    assert all("lora_" in names[id(p)] for params in groups.values() for p in params)
    assert {id(p) for p in groups["all"]} == {id(p) for p in model.parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(groups["all"], lr=0.5)
    model.loss(batch, **model.fixed_loss_inputs(batch["id"])).mean().backward()
    optimizer.step()
    changed = _unet_changed(model, before)
    assert changed and all("lora_" in name for name in changed)

    inputs = model.fixed_loss_inputs(batch["id"])
    with torch.no_grad():
        adapted = model.loss(batch, **inputs)
    model.save_pretrained(tmp_path / "merged")
    assert has_lora(model.unet) and torch.equal(model.loss(batch, **inputs).detach(), adapted)  # still adapted
    weights = load_file(tmp_path / "merged" / "unet" / "diffusion_pytorch_model.safetensors")
    original = load_file(tiny_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert set(weights) == set(original) and not any("lora" in key for key in weights)
    plain = backend.pipeline_class.from_pretrained(tmp_path / "merged")
    assert not has_lora(plain.unet)
    loaded = backend(pretrained=str(tmp_path / "merged"), duration=DURATION)
    assert all(torch.equal(a, b) for a, b in zip(plain.unet.parameters(), loaded.unet.parameters(), strict=True))
    torch.testing.assert_close(loaded.loss(batch, **inputs), adapted, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(backend(pretrained=str(tiny_dir), duration=DURATION).loss(batch, **inputs), adapted)


def test_gradient_checkpointing_changes_neither_loss_nor_gradients(backend, tiny_dir, batch):
    results = []
    for checkpointing in (False, True):
        model = backend(pretrained=str(tiny_dir), duration=DURATION, gradient_checkpointing=checkpointing).train()
        assert model.unet.is_gradient_checkpointing == checkpointing
        loss = model.loss(batch, **model.fixed_loss_inputs(batch["id"])).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.unet.parameters()]))
    (plain_loss, plain_grads), (checkpointed_loss, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=1e-6, atol=0)
    for plain_grad, checkpointed_grad in zip(plain_grads, checkpointed_grads, strict=True):
        torch.testing.assert_close(checkpointed_grad, plain_grad, rtol=1e-4, atol=1e-7)


def test_bf16_mixed_and_true_precision(model, batch):
    batch = {key: value[:1] for key, value in batch.items()}
    inputs = model.fixed_loss_inputs(batch["id"])
    full = model.loss(batch, **inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.loss(batch, **inputs)
        assert model.encode_audio(batch["audio"], batch["mask"]).dtype == torch.float32
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed, full, rtol=0.1, atol=0.0)
    model.to(torch.bfloat16)
    true = model.loss(batch, **inputs)
    assert torch.isfinite(true).all()
    torch.testing.assert_close(true, full, rtol=0.1, atol=0.0)


def test_constructor_errors(backend, tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        backend(pretrained=str(tmp_path / "missing-folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        backend(pretrained=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="lora_rank"):
        backend(pretrained=str(tiny_dir), lora_rank=-1)
    with pytest.raises(ValueError, match="lora_groups"):
        backend(pretrained=str(tiny_dir), lora_rank=2, lora_groups=["attention"])
    with pytest.raises(ValueError, match="duration"):
        backend(pretrained=str(tiny_dir), duration=0.01)


def test_a_clip_within_the_mel_padding_is_refused_at_construction_and_the_shortest_one_trains(backend, tiny_dir, batch):
    # The front end reflect-pads (n_fft - hop) / 2 samples, which F.pad allows only on a longer clip: a shorter one
    # used to pass the one-latent-frame check and crash in the first loss ("Padding size should be less than ...").
    probe = backend(pretrained=str(tiny_dir), duration=DURATION)
    pad, rate = (N_FFT - probe.hop_length) // 2, probe.sample_rate
    assert pad > probe.vae_scale * probe.hop_length  # the case the latent-frame check alone let through
    with pytest.raises(ValueError, match=r"needs at least \d+ ") as refused:
        backend(pretrained=str(tiny_dir), duration=pad / rate)
    minimum = int(re.search(r"needs at least (\d+) ", str(refused.value)).group(1))
    with pytest.raises(ValueError, match=f"needs at least {minimum} "):
        backend(pretrained=str(tiny_dir), duration=(minimum - 1) / rate)
    shortest = backend(pretrained=str(tiny_dir), duration=minimum / rate)
    clip = {**batch, "audio": batch["audio"][:, :minimum], "mask": batch["mask"][:, :minimum]}
    assert shortest.loss(clip, **shortest.fixed_loss_inputs(clip["id"])).isfinite().all()


# -------------------------------------------------------------------------------------------- AudioLDM itself
def test_text_reaches_the_unet_only_through_the_film_pathway(model):
    groups = {name: {id(p) for p in params} for name, params in model.parameter_groups().items()}
    film = {id(p) for name, p in model.unet.named_parameters() if "time_emb_proj" in name.split(".")}
    embedding = {id(p) for p in model.unet.class_embedding.parameters()}
    assert groups["cross_attention_kv"] == embedding
    assert groups["cross_attention"] == groups["text_conditioning"] == embedding | film
    attention = {id(p) for name, p in model.unet.named_parameters() if {"attn1", "attn2"} & set(name.split("."))}
    assert groups["self_attention"] == attention and not attention & groups["cross_attention"]


def test_conditioning_and_generation_match_the_library_pipeline(model):
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
