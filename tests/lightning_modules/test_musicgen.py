"""The MusicGen backend honours the `TextToMusicModel` contract (`BackendContract`), on a tiny random MusicGen saved as
a transformers folder and loaded back through the code path of the public checkpoints; plus what is its own: the
transformers objective on delayed codes, the unconditional half of transformers' `generate`, one step of two methods,
LoRA, gradient checkpointing, bf16, soft targets and the codec's bandwidth."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers import ClassifierFreeGuidanceLogitsProcessor, MusicgenForConditionalGeneration

from datamodules import ForgetRetainDataModule, read_manifest
from datamodules.audio import AudioTextDataset
from lightning_modules.models.lora import has_lora
from lightning_modules.models.musicgen import MusicGen, PerPromptSampler
from lightning_modules.unlearning import ESD, GradientAscent
from tests.lightning_modules.contract import BackendContract, half_padded
from tests.tiny.musicgen import save_tiny

DURATION = 0.25  # 8000 samples at 32 kHz: 13 EnCodec frames of 640 samples, the last one partial
FRAMES = 13


@pytest.fixture(scope="module")
def musicgen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("musicgen"))


@pytest.fixture(scope="module")
def loaded(musicgen_dir: Path) -> MusicGen:
    return MusicGen.from_pretrained(musicgen_dir, duration=DURATION)


@pytest.fixture
def model(loaded: MusicGen) -> MusicGen:
    """A model of its own for each test: a copy of the one loaded once per module."""
    return copy.deepcopy(loaded)


@pytest.fixture(scope="module")
def batch(tiny_corpus) -> dict:
    dataset = AudioTextDataset(read_manifest(tiny_corpus.train_manifest)[:3], 32000, round(DURATION * 32000),
                               split="forget")
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


class TestMusicGenContract(BackendContract):
    backend = MusicGen
    sample_rate = 32000
    fixed_noise = False
    prompts = ("a piece by aurora", "calm music")

    def load(self, folder: Path, **kwargs: Any) -> MusicGen:
        return MusicGen.from_pretrained(folder, duration=DURATION, **kwargs)

    def perturb(self, model: MusicGen) -> None:
        model.model.decoder.model.decoder.layers[0].encoder_attn.k_proj.weight.add_(0.05)

    def frozen_modules(self, model: MusicGen) -> Sequence[nn.Module]:
        return [model.model.text_encoder, model.model.audio_encoder]

    def check_generation(self, model: MusicGen, audio: torch.Tensor) -> None:
        prompts = list(self.prompts)
        assert model.model.decoder.training
        assert model.sample_rate == model.model.config.audio_encoder.sampling_rate
        assert torch.equal(audio, model.generate(prompts, seed=[5, 6]))
        short = model.generate(prompts, seed=[5, 6], duration=0.1, num_inference_steps=999)
        assert short.shape == (2, 1, 3200)  # num_inference_steps means nothing to MusicGen and is ignored
        assert not torch.allclose(short, model.generate(prompts, seed=[5, 7], duration=0.1))

    def test_loss_is_deterministic_per_item_and_seed(self, model, batch):
        super().test_loss_is_deterministic_per_item_and_seed(model, batch)
        assert torch.equal(model.loss(batch), model.loss(batch, generator=torch.Generator().manual_seed(1)))

    def test_fixed_loss_inputs_depend_on_the_item_id_only(self, model, batch):
        """Replaced: the loss is cross-entropy on the codec's codes, with no noise or timesteps to fix."""
        assert model.fixed_loss_inputs(batch["id"]) == {} == model.fixed_loss_inputs(batch["id"], seed=1)

    def test_cached_targets_replace_audio_and_encoding_is_deterministic(self, model, batch, musicgen_dir):
        super().test_cached_targets_replace_audio_and_encoding_is_deterministic(model, batch)
        assert model.targets_key() == MusicGen.from_pretrained(musicgen_dir, duration=DURATION).targets_key()

    def test_parameter_groups(self, model):
        """Named after the decoder's modules."""
        super().test_parameter_groups(model)
        groups = model.parameter_groups()
        named = {id(p): name for name, p in model.model.named_parameters()}
        ids = {group: {id(p) for p in params} for group, params in groups.items()}
        trained = {id(p) for p in (*model.model.decoder.parameters(), *model.model.enc_to_dec_proj.parameters())}
        assert ids["all"] == trained
        assert ids["cross_attention_kv"] < ids["cross_attention"] < ids["transformer_blocks"] < ids["all"]
        projection = {id(p) for p in model.model.enc_to_dec_proj.parameters()}
        assert ids["text_conditioning"] == ids["cross_attention"] | projection
        assert all(".encoder_attn." in named[i] and named[i].split(".")[-2] in ("k_proj", "v_proj")
                   for i in ids["cross_attention_kv"])
        assert all(".self_attn." in named[i] for i in ids["self_attention"])
        assert len(ids["cross_attention"]) == 2 * 4  # two layers of q, k, v, out projections (no biases)

    def test_round_trip_gives_bit_identical_losses(self, model, batch, tmp_path):
        """Saved as a transformers folder that the library loads."""
        super().test_round_trip_gives_bit_identical_losses(model, batch, tmp_path)
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in (tmp_path / "saved").iterdir()}
        plain = MusicgenForConditionalGeneration.from_pretrained(tmp_path / "saved")
        assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.model.state_dict().values(),
                                                     strict=True))

    def test_constructor_errors(self, musicgen_dir, tmp_path):
        super().test_constructor_errors(tmp_path)
        with pytest.raises(ValueError, match="lora_rank"):
            MusicGen(pretrained=str(musicgen_dir), lora_groups=["cross_attention"])
        with pytest.raises(ValueError, match="Unknown lora_groups"):
            MusicGen(pretrained=str(musicgen_dir), lora_rank=2, lora_groups=["attention"])
        with pytest.raises(ValueError, match="duration"):
            MusicGen(pretrained=str(musicgen_dir), duration=0)
        stereo = shutil.copytree(musicgen_dir, tmp_path / "stereo")
        config = json.loads((stereo / "config.json").read_text())
        config["decoder"]["audio_channels"] = 2
        (stereo / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match="stereo"):
            MusicGen(pretrained=str(stereo))


def test_loss_is_the_transformers_objective(model, batch):
    losses = model.loss(batch)
    # the same objective as MusicgenForConditionalGeneration(labels=delayed codes), which does not delay them itself
    codes = model.encode_audio(batch["audio"], batch["mask"])
    labels = model.delayed(codes)[..., 1:].transpose(1, 2)
    tokens = model.processor.tokenizer(batch["caption"], padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model.model(**tokens, labels=labels).loss
    assert torch.allclose(losses.mean(), reference, rtol=1e-5)


def test_delay_pattern_and_padding(model, batch):
    codes = model.encode_audio(batch["audio"], batch["mask"])
    assert codes.dtype == torch.long and codes.shape == (3, 4, FRAMES)
    assert torch.equal(codes, model.encode_audio(batch["audio"], batch["mask"]))
    start = model.start_token_id
    sequence = model.delayed(codes)
    for k in range(4):  # codebook k is delayed by k steps after the start column
        assert torch.equal(sequence[:, k, k + 1 : k + 1 + FRAMES], codes[:, k])
        assert (sequence[:, k, : k + 1] == start).all() and (sequence[:, k, k + 1 + FRAMES :] == start).all()
    padded = half_padded(batch)
    prediction = model.predict(padded)
    steps = FRAMES + 3
    assert prediction.output.shape == (3, 4, steps, 64) and prediction.target.shape == (3, 4, steps)
    real_frames = 7  # ceil(4000 / 640)
    assert torch.equal(prediction.weight.sum((1, 2, 3)), torch.full((3,), 4.0 * real_frames))
    assert (prediction.target[prediction.weight[..., 0] > 0] < 64).all()  # no delay padding is ever a target


def test_empty_caption_is_the_unconditional_half_of_generate(model, batch):
    """Logits `predict` gives under the captions and under "" equal the raw logits transformers' `generate` returns for
    its conditional and unconditional halves (``output_logits``), on the codes it sampled; only public outputs are
    read (the returned logits and the codes `generate` hands to the codec's public `decode`)."""
    prompts = ["a piece by aurora", "calm music"]
    decoded = []
    decode = model.model.audio_encoder.decode
    model.model.audio_encoder.decode = lambda codes, *args, **kwargs: decoded.append(codes) or decode(codes, *args,
                                                                                                        **kwargs)
    steps = FRAMES + 3  # every delayed step after the start column
    tokens = model.processor.tokenizer(prompts, padding=True, return_tensors="pt")
    try:
        torch.manual_seed(3)
        output = model.model.generate(**tokens, do_sample=True, guidance_scale=3.0, max_new_tokens=steps,
                                      return_dict_in_generate=True, output_logits=True)
    finally:
        model.model.audio_encoder.decode = decode
    codes = decoded[0][0]  # (batch, codebooks, frames)
    assert codes.shape == (2, 4, FRAMES) and len(output.logits) == steps
    # each step's raw logits are (2 * batch * codebooks, vocab): the conditional batch, then the unconditional one
    logits = torch.stack(output.logits, dim=1).view(2, 2, 4, steps, -1)  # (half, batch, codebooks, steps, vocab)
    cached = {"targets": codes, "mask": torch.ones(2, model.num_samples, dtype=torch.bool), "caption": prompts,
              "id": ["x", "y"]}
    with torch.no_grad():
        conditional = model.predict(cached).output
        unconditional = model.predict(cached, captions=["", ""]).output
    torch.testing.assert_close(conditional, logits[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unconditional, logits[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)
    assert not torch.allclose(model.loss({**batch, "caption": [""] * 3}), model.loss(batch))


def test_a_prompts_audio_depends_on_its_seed_not_on_its_batch(model):
    """Each prompt samples from its own generator: a batch of three gives the codes and audio of the prompts
    generated one by one (and two plus one), with the same seeds; another seed changes only its own prompt's codes."""
    prompts = ["a piece by aurora", "calm music", "the song"]
    codes = []
    decode = model.model.audio_encoder.decode
    model.model.audio_encoder.decode = lambda c, *args, **kwargs: codes.append(c[0]) or decode(c, *args, **kwargs)
    try:
        together = model.generate(prompts, seed=[5, 6, 7], duration=0.1)
        alone = torch.cat([model.generate([prompt], seed=[seed], duration=0.1)
                           for prompt, seed in zip(prompts, [5, 6, 7], strict=True)])
        split = torch.cat([model.generate(prompts[:2], seed=[5, 6], duration=0.1),
                           model.generate(prompts[2:], seed=[7], duration=0.1)])
        model.generate(prompts, seed=[5, 9, 7], duration=0.1)
    finally:
        model.model.audio_encoder.decode = decode
    batched, one_by_one, two_and_one, other = codes[0], torch.cat(codes[1:4]), torch.cat(codes[4:6]), codes[6]
    assert torch.equal(batched, one_by_one) and torch.equal(batched, two_and_one)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(together, split, rtol=0, atol=1e-6)
    assert torch.equal(other[[0, 2]], batched[[0, 2]]) and not torch.equal(other[1], batched[1])


def test_the_per_prompt_sampler_draws_from_the_guided_filtered_softmax():
    """Over many draws the codes follow the softmax of the guided logits over temperature, never leave the top k, and
    the guidance processor transformers applies after the sampler gives its scores back unchanged."""
    torch.manual_seed(0)
    conditional, unconditional = torch.randn(2, 8), torch.randn(2, 8)  # one prompt, two codebooks, eight codes
    guided = unconditional + 3.0 * (conditional - unconditional)
    sampler = PerPromptSampler([11], num_codebooks=2, guidance_scale=3.0, temperature=0.7, top_k=5)
    draws = []
    for _ in range(4000):
        scores = sampler(torch.zeros(2, 1, dtype=torch.long), torch.cat([conditional, unconditional]))
        assert scores.shape == (4, 8) and torch.equal(scores[:2], scores[2:])
        torch.testing.assert_close(ClassifierFreeGuidanceLogitsProcessor(3.0)(torch.zeros(2, 1), scores), scores[:2])
        draws.append(scores[:2].argmax(-1))
    counts = torch.nn.functional.one_hot(torch.stack(draws), 8).sum(0).float()  # (codebooks, codes)
    top = guided.topk(5, dim=-1).indices
    expected = torch.zeros_like(guided).scatter(-1, top, (guided.gather(-1, top) / 0.7).softmax(-1))
    assert (counts[expected == 0] == 0).all()  # outside the top 5: never drawn
    # binomial standard error at 4000 draws is at most 0.008; 0.03 is about 4 of them
    torch.testing.assert_close(counts / 4000, expected, rtol=0, atol=0.03)


def _data(corpus, model: MusicGen) -> ForgetRetainDataModule:
    return ForgetRetainDataModule(manifest=str(corpus.train_manifest), forget_groups=[corpus.artists[0]], batch_size=2,
                                  sample_rate=model.sample_rate, num_samples=model.num_samples)


@pytest.mark.parametrize("method", [GradientAscent, ESD])
def test_one_unlearning_step_changes_only_the_selected_groups(method, model, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TTM_UNLEARNING_CACHE", str(tmp_path))
    module = method(model, optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
                    parameter_groups=["cross_attention"])
    selected = {id(p) for p in model.parameter_groups()["cross_attention"]}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    terms = []
    objective = module.objective
    module.objective = lambda forget, retain: terms.append(objective(forget, retain)) or terms[-1]
    L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, _data(tiny_corpus, model))
    assert all(torch.isfinite(value) for value in terms[0].values())
    for name, param in model.named_parameters():
        assert (not torch.equal(before[name], param)) == (id(param) in selected), name


def test_lora_trains_adapters_and_saves_merged_native_weights(musicgen_dir, batch, tmp_path):
    model = MusicGen.from_pretrained(musicgen_dir, duration=DURATION, lora_rank=2, lora_groups=["cross_attention"])
    groups = model.parameter_groups()
    names = {id(p): name for name, p in model.named_parameters()}
    assert groups["cross_attention"] and all("lora_" in names[id(p)] for params in groups.values() for p in params)
    assert not groups["self_attention"] and {id(p) for p in groups["all"]} == {id(p) for p in groups["cross_attention"]}
    module = GradientAscent(model, optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
                            parameter_groups=["cross_attention"])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = module.configure_optimizers()
    module.objective(batch, batch)["loss"].backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert changed and all("lora_B" in name for name in changed)
    model.eval()
    model.save_pretrained(tmp_path / "merged")
    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as weights:
        assert not any("lora" in key or "base_layer" in key for key in weights.keys())  # noqa: SIM118
    _, info = MusicgenForConditionalGeneration.from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    merged = MusicGen.from_pretrained(tmp_path / "merged", duration=DURATION)
    with torch.no_grad():
        assert torch.allclose(merged.predict(batch).output, model.predict(batch).output, atol=1e-5)
    assert has_lora(model.model)  # the adapters are back after saving


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(musicgen_dir, batch):
    results = []
    for checkpointing in (False, True):
        model = MusicGen.from_pretrained(musicgen_dir, duration=DURATION, gradient_checkpointing=checkpointing).train()
        torch.manual_seed(0)  # dropout: the recomputation replays the same random state
        loss = model.loss(batch, reduction="mean")
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameter_groups()["all"]]))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_bf16_autocast_and_bf16_weights(model, batch):
    reference = model.loss(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.encode_audio(batch["audio"], batch["mask"]),
                           model.encode_audio(batch["audio"], batch["mask"]))
        mixed = model.loss(batch)
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, reference, rtol=0.05)
    model.to(torch.bfloat16)
    assert torch.isfinite(model.loss(batch)).all()
    assert model.generate(["calm music"], duration=0.1).dtype == torch.float32


def test_soft_targets_give_the_cross_entropy_against_their_softmax(model, batch):
    with torch.no_grad():
        prediction = model.predict(batch)
        hard = model.criterion(*prediction)
        one_hot = torch.nn.functional.one_hot(prediction.target.clamp(max=63), 64).float() * 1e4
        assert torch.allclose(model.criterion(prediction.output, one_hot, prediction.weight), hard, rtol=1e-5)
        entropy = model.criterion(prediction.output, prediction.output, prediction.weight)
        assert (entropy < hard).all()  # the model's own distribution is its cheapest soft target


def test_a_codec_bandwidth_that_disagrees_with_the_decoder_names_both(musicgen_dir, batch, tmp_path):
    # The tiny codec: 50 frames/s of 64-entry codebooks, 0.3 kbps each; 0.6 kbps gives 2 where the decoder predicts 4.
    folder = shutil.copytree(musicgen_dir, tmp_path / "narrow")
    config = json.loads((folder / "config.json").read_text())
    config["audio_encoder"]["target_bandwidths"] = [0.6]
    (folder / "config.json").write_text(json.dumps(config))
    model = MusicGen.from_pretrained(folder, duration=DURATION)
    with pytest.raises(ValueError, match=r"bandwidth 0.6 kbps gives 2 codebooks, but the decoder predicts 4"):
        model.encode_audio(batch["audio"], batch["mask"])


@pytest.mark.network
def test_public_checkpoint_loss_and_generation():
    model = MusicGen(pretrained="facebook/musicgen-small", duration=1.0)
    assert model.sample_rate == 32000 and model.num_codebooks == 4
    torch.manual_seed(0)
    audio = 0.1 * torch.randn(1, model.num_samples)
    batch = {"audio": audio, "mask": torch.ones_like(audio, dtype=torch.bool), "caption": ["lo-fi piano"],
             "id": ["x"]}
    loss = model.loss(batch)
    assert loss.shape == (1,) and torch.isfinite(loss).all()
    generated = model.generate(["lo-fi piano"], seed=0, duration=0.2)
    assert generated.shape == (1, 1, 6400) and torch.isfinite(generated).all()
