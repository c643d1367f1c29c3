"""What every mel latent-diffusion backend (AudioLDM, MusicLDM, AudioLDM 2: `MelLatentDiffusion`) does beyond
`BackendContract`: the original Tacotron STFT front end, the UNet as the only trained part, one Lightning step and bf16,
a frozen reference sharing the frozen components, LoRA saved as merged native weights, gradient checkpointing, and the
shortest clip the front end can pad. Each backend's ``Test<Backend>Contract`` sets `backend` and `save_tiny`; the
fixtures ``tiny_dir``, ``model`` and ``batch`` are built here from them, once per class (``model``, a copy of
the model loaded once per class, for each test)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from datamodules import read_manifest
from datamodules.audio import AudioTextDataset
from lightning_modules.models.base import PARAMETER_GROUPS
from lightning_modules.models.lora import has_lora
from lightning_modules.models.mel_diffusion import N_FFT, MelLatentDiffusion
from lightning_modules.unlearning.base import frozen_reference
from tests.lightning_modules.contract import BackendContract, fit_one_step, half_padded

NUM_SAMPLES = 5120  # 32 mel frames, 16 latent frames
DURATION = NUM_SAMPLES / 16000


def _unet_changed(model, before: dict) -> set[str]:
    return {name for name, param in model.named_parameters() if not torch.equal(before[name], param)}




class MelDiffusionContract(BackendContract):
    backend: ClassVar[type[MelLatentDiffusion]]
    save_tiny: ClassVar[Callable[[Path], Path]]
    sample_rate = 16000
    generate_kwargs: ClassVar[dict[str, Any]] = {"num_inference_steps": 2}

    # ---------------------------------------------------------------------------------------------- fixtures
    @pytest.fixture(scope="class", autouse=True)
    def one_thread(self):
        """Tiny tensors: intra-op threads only add synchronisation (tens of times slower on a busy 2-core machine)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    @pytest.fixture(scope="class")
    def tiny_dir(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return self.save_tiny(tmp_path_factory.mktemp(self.backend.__name__.lower()))

    @pytest.fixture(scope="class")
    def loaded(self, tiny_dir: Path) -> MelLatentDiffusion:
        return self.load(tiny_dir)

    @pytest.fixture
    def model(self, loaded: MelLatentDiffusion) -> MelLatentDiffusion:
        """A model of its own for each test: a copy of the one loaded once per class."""
        return copy.deepcopy(loaded)

    @pytest.fixture(scope="class")
    def batch(self, tiny_corpus) -> dict:
        dataset = AudioTextDataset(read_manifest(tiny_corpus.train_manifest)[:2], 16000, NUM_SAMPLES, split="forget")
        return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])

    # -------------------------------------------------------------------------------------- contract hooks
    def load(self, folder: Path, **kwargs: Any) -> MelLatentDiffusion:
        return self.backend(pretrained=str(folder), duration=DURATION, **kwargs)

    def perturb(self, model: MelLatentDiffusion) -> None:
        next(iter(model.unet.parameters())).add_(0.01)

    def frozen_modules(self, model: MelLatentDiffusion) -> Sequence[nn.Module]:
        return [getattr(model, name) for name in model.frozen]

    def check_generation(self, model: MelLatentDiffusion, audio: torch.Tensor) -> None:
        prompts = list(self.prompts)
        again = model.generate(prompts[1:], seed=[6], num_inference_steps=2)
        torch.testing.assert_close(audio[1], again[0], rtol=1e-3, atol=1e-4)  # per prompt: independent of the batch
        other = model.generate(prompts[:1], seed=[7], num_inference_steps=2)[0]
        assert (other - audio[0]).abs().max() > 0.01 * audio[0].abs().max() > 0
        short = model.generate(prompts[:1], seed=1, num_inference_steps=1, duration=0.2)
        assert short.shape == (1, 1, 3200)

    # ----------------------------------------------------------------------------------- contract, extended
    def test_loss_is_deterministic_per_item_and_seed(self, model, batch):
        super().test_loss_is_deterministic_per_item_and_seed(model, batch)
        assert model.fixed_loss_inputs(batch["id"])["noise"].shape == (2, *model.latent_shape(model.num_samples))

    def test_padding_is_honoured(self, model, batch):
        super().test_padding_is_honoured(model, batch)
        weight = model.predict(half_padded(batch), **model.fixed_loss_inputs(batch["id"])).weight
        frames = weight.shape[2]
        assert weight.shape == (2, 1, frames, 1) and frames == model.latent_shape(model.num_samples)[1]
        assert (weight[:, :, : frames // 2 - 1] == 1).all() and (weight[:, :, frames // 2 + 1 :] == 0).all()

    def test_cached_targets_replace_audio_and_encoding_is_deterministic(self, model, batch):
        super().test_cached_targets_replace_audio_and_encoding_is_deterministic(model, batch)
        targets = model.encode_audio(batch["audio"], batch["mask"])
        assert targets.dtype == torch.float32 and targets.shape == (2, *model.latent_shape(model.num_samples))
        assert model.audio_encoder() is model.vae and model.targets_settings()["frames"] == targets.shape[2] * 2

    def test_parameter_groups(self, model):
        super().test_parameter_groups(model)
        assert {id(p) for p in model.parameter_groups()["all"]} == {id(p) for p in model.unet.parameters()}

    def test_round_trip_gives_bit_identical_losses(self, model, batch, tmp_path):
        super().test_round_trip_gives_bit_identical_losses(model, batch, tmp_path)
        loaded = self.backend.from_pretrained(tmp_path / "saved")
        assert loaded.num_samples != model.num_samples  # the default duration is the UNet's native length
        plain = self.backend.pipeline_class.from_pretrained(tmp_path / "saved")
        assert all(torch.equal(a, b) for a, b in zip(plain.unet.parameters(), model.unet.parameters(), strict=True))

    def test_constructor_errors(self, tiny_dir, tmp_path):
        super().test_constructor_errors(tmp_path)
        backend = self.backend
        (tmp_path / "empty").mkdir()
        with pytest.raises(FileNotFoundError, match="model_index.json"):
            backend(pretrained=str(tmp_path / "empty"))
        with pytest.raises(ValueError, match="lora_rank"):
            backend(pretrained=str(tiny_dir), lora_rank=-1)
        with pytest.raises(ValueError, match="lora_groups"):
            backend(pretrained=str(tiny_dir), lora_rank=2, lora_groups=["attention"])
        with pytest.raises(ValueError, match="duration"):
            backend(pretrained=str(tiny_dir), duration=0.01)

    # ------------------------------------------------------------------------------------- mel backends only
    def test_front_end_is_the_original_tacotron_stft(self, model, batch):
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

    def test_text_reaches_the_unet_only_through_the_film_pathway(self, model):
        """AudioLDM and MusicLDM: the pooled text embedding is the UNet's ``class_labels`` (FiLM)."""
        groups = {name: {id(p) for p in params} for name, params in model.parameter_groups().items()}
        film = {id(p) for name, p in model.unet.named_parameters() if "time_emb_proj" in name.split(".")}
        embedding = {id(p) for p in model.unet.class_embedding.parameters()}
        assert groups["cross_attention_kv"] == embedding
        assert groups["cross_attention"] == groups["text_conditioning"] == embedding | film
        attention = {id(p) for name, p in model.unet.named_parameters() if {"attn1", "attn2"} & set(name.split("."))}
        assert groups["self_attention"] == attention and not attention & groups["cross_attention"]

    def test_one_unlearning_step_changes_only_the_selected_groups(self, model, tiny_corpus):
        selected = {name for name, p in model.named_parameters()
                    if id(p) in {id(q) for q in model.parameter_groups()["cross_attention"]}}
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        terms = fit_one_step(model, tiny_corpus, ["cross_attention"])
        assert all(torch.isfinite(value) for value in terms.values())
        assert selected and _unet_changed(model, before) == selected

    @pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
    def test_one_step_and_generation_under_lightning_bf16(self, model, tiny_corpus, precision):
        terms = fit_one_step(model, tiny_corpus, ["self_attention"], precision=precision)
        assert all(torch.isfinite(value) for value in terms.values())
        assert model.unet.dtype == (torch.bfloat16 if precision == "bf16-true" else torch.float32)
        assert torch.isfinite(model.generate(["a piece"], num_inference_steps=1)).all()

    def test_frozen_reference_shares_the_frozen_components(self, model, batch):
        trainable = model.parameter_groups()["cross_attention_kv"]
        reference = frozen_reference(model, trainable)
        assert reference.vae is not model.vae and next(reference.vae.parameters()) is next(model.vae.parameters())
        assert reference.pipeline.unet is reference.unet  # the copy's pipeline runs the copy's modules
        inputs = model.fixed_loss_inputs(batch["id"])
        assert torch.equal(reference.loss(batch, **inputs), model.loss(batch, **inputs))

    def test_lora_trains_only_adapters_and_saves_merged_native_weights(self, tiny_dir, batch, tmp_path):
        backend = self.backend
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

    def test_gradient_checkpointing_changes_neither_loss_nor_gradients(self, tiny_dir, batch):
        results = []
        for checkpointing in (False, True):
            model = self.backend(pretrained=str(tiny_dir), duration=DURATION,
                                 gradient_checkpointing=checkpointing).train()
            assert model.unet.is_gradient_checkpointing == checkpointing
            loss = model.loss(batch, **model.fixed_loss_inputs(batch["id"])).mean()
            loss.backward()
            results.append((loss.detach(), [p.grad for p in model.unet.parameters()]))
        (plain_loss, plain_grads), (checkpointed_loss, checkpointed_grads) = results
        torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=1e-6, atol=0)
        for plain_grad, checkpointed_grad in zip(plain_grads, checkpointed_grads, strict=True):
            torch.testing.assert_close(checkpointed_grad, plain_grad, rtol=1e-4, atol=1e-7)

    def test_bf16_mixed_and_true_precision(self, model, batch):
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

    def test_a_clip_within_the_mel_padding_is_refused_at_construction_and_the_shortest_one_trains(
            self, tiny_dir, batch):
        # The front end reflect-pads (n_fft - hop) / 2 samples, which F.pad allows only on a longer clip: a shorter one
        # used to pass the one-latent-frame check and crash in the first loss ("Padding size should be less than ...").
        backend = self.backend
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
