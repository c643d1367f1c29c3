"""What every `TextToMusicModel` backend must do, stated once, as diffusers' ``PipelineTesterMixin`` states it for its
pipelines: each backend's test module defines the fixtures ``model`` (a model of its own for each test, loaded from the
backend's tiny random checkpoint through the code path of real checkpoints, or a copy of one loaded so) and ``batch`` (a
few items of the tiny corpus), and a ``Test<Backend>Contract`` class that inherits `BackendContract`, sets the class
attributes and hooks below, and extends a test (``super()`` first, then what is special to the backend) or replaces it
where the backend honours the contract otherwise. The class name has no ``Test`` prefix: pytest collects it only where
a test module inherits it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import pytest
import torch
from torch import nn

from datamodules import ForgetRetainDataModule
from lightning_modules.models.base import PARAMETER_GROUPS, TextToMusicModel
from lightning_modules.unlearning import GradientAscent


def half_padded(batch: dict) -> dict:
    """The batch with the second half of every clip padding: masked out and silent."""
    mask = batch["mask"].clone()
    mask[:, mask.shape[1] // 2 :] = False
    return {**batch, "audio": batch["audio"] * mask, "mask": mask}


def fit_one_step(model, corpus, groups: list[str], **trainer) -> dict:
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


class BackendContract:
    """The contract tests; a backend's test class sets:

    - `backend`: the model class.
    - `sample_rate`, `channels`: what `generate` returns.
    - `fixed_noise`: whether `fixed_loss_inputs` fixes noise and timesteps (diffusion) or returns ``{}``
      (autoregressive cross-entropy, deterministic without them).
    - `prompts`, `generate_kwargs`: two prompts and the `generate` arguments of the generation test.
    - `load(folder, **kwargs)`: the model in a folder, loaded as the backend's test fixtures load it.
    - `perturb(model)`: change a trained weight in place (before a save and load round trip).
    - `frozen_modules(model)`: the components that never train.
    - `check_generation(model, audio)`: the backend's per-prompt seed and duration checks of `audio`, generated from
      `prompts` with seeds 5 and 6.
    """

    backend: ClassVar[type[TextToMusicModel]]
    sample_rate: ClassVar[int]
    channels: ClassVar[int] = 1
    fixed_noise: ClassVar[bool] = True
    prompts: ClassVar[tuple[str, str]] = ("a piece by aurora vale", "a piece by copper lanterns")
    generate_kwargs: ClassVar[dict[str, Any]] = {}

    def load(self, folder: Path, **kwargs: Any) -> TextToMusicModel:
        return self.backend.from_pretrained(folder, **kwargs)

    def perturb(self, model: TextToMusicModel) -> None:
        raise NotImplementedError

    def frozen_modules(self, model: TextToMusicModel) -> Sequence[nn.Module]:
        raise NotImplementedError

    def check_generation(self, model: TextToMusicModel, audio: torch.Tensor) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- the loss
    def test_loss_is_deterministic_per_item_and_seed(self, model, batch):
        inputs = model.fixed_loss_inputs(batch["id"])
        assert bool(inputs) == self.fixed_noise
        first, second = model.loss(batch, **inputs), model.loss(batch, **inputs)
        assert first.shape == (len(batch["id"]),) and torch.isfinite(first).all()
        assert torch.equal(first, second)
        if self.fixed_noise:
            assert not torch.equal(first, model.loss(batch, **model.fixed_loss_inputs(batch["id"], seed=1)))
        drawn = [model.loss(batch, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
        assert torch.equal(*drawn)

    def test_fixed_loss_inputs_depend_on_the_item_id_only(self, model):
        a = model.fixed_loss_inputs(["x", "y"])
        b = model.fixed_loss_inputs(["y", "z", "x"])
        assert torch.equal(a["noise"][0], b["noise"][2]) and a["timesteps"][0] == b["timesteps"][2]
        assert not torch.equal(a["noise"][0], a["noise"][1])

    def test_empty_caption_changes_the_output_not_the_target(self, model, batch):
        # the draws do not depend on the captions: the same generator gives the same noisy input and target
        conditional = model.predict(batch, generator=torch.Generator().manual_seed(4))
        unconditional = model.predict(batch, captions=[""] * len(batch["id"]),
                                      generator=torch.Generator().manual_seed(4))
        assert torch.equal(conditional.target, unconditional.target)
        assert not torch.allclose(conditional.output, unconditional.output)

    def test_padding_is_honoured(self, model, batch):
        padded = half_padded(batch)
        inputs = model.fixed_loss_inputs(batch["id"])
        noisy_padding = {**padded, "audio": padded["audio"] + (~padded["mask"]) * torch.randn_like(padded["audio"])}
        assert torch.equal(model.loss(padded, **inputs), model.loss(noisy_padding, **inputs))
        assert not torch.allclose(model.loss(padded, **inputs), model.loss(batch, **inputs))

    def test_cached_targets_replace_audio_and_encoding_is_deterministic(self, model, batch):
        inputs = model.fixed_loss_inputs(batch["id"])
        targets = model.encode_audio(batch["audio"], batch["mask"])
        assert torch.equal(targets, model.encode_audio(batch["audio"], batch["mask"]))
        cached = {**batch, "targets": targets, "audio": torch.zeros_like(batch["audio"])}
        assert torch.equal(model.loss(cached, **inputs), model.loss(batch, **inputs))

    # ------------------------------------------------------------------------------------------- generation
    def test_generate_shape_seeds_and_duration(self, model):
        model.train()
        audio = model.generate(list(self.prompts), seed=[5, 6], **self.generate_kwargs)
        assert model.training and not any(module.training for module in self.frozen_modules(model))
        assert audio.shape == (2, self.channels, model.num_samples)
        assert audio.dtype == torch.float32 and torch.isfinite(audio).all()
        assert model.sample_rate == self.sample_rate
        self.check_generation(model, audio)
        with pytest.raises(ValueError, match="one seed per prompt"):
            model.generate(list(self.prompts), seed=[1])

    # ------------------------------------------------------------------------------------ parameters and io
    def test_parameter_groups(self, model):
        groups = model.parameter_groups()
        ids = {name: {id(p) for p in params} for name, params in groups.items()}
        assert set(PARAMETER_GROUPS) | {"text_conditioning"} <= set(ids)
        assert all(ids.values()), [name for name in ids if not ids[name]]
        assert ids["all"] == {id(p) for p in model.parameters() if p.requires_grad}
        assert all(ids[name] <= ids["all"] for name in ids)
        assert ids["cross_attention_kv"] < ids["cross_attention"]
        assert not ids["cross_attention"] & ids["self_attention"]
        frozen = [p for module in self.frozen_modules(model) for p in module.parameters()]
        assert frozen and not {id(p) for p in frozen} & ids["all"]
        assert not any(p.requires_grad for p in frozen)
        model.train()
        assert model.training and not any(module.training for module in self.frozen_modules(model))
        with pytest.raises(ValueError, match="known:.*cross_attention"):
            model.select_parameters(["attention"])

    def test_round_trip_gives_bit_identical_losses(self, model, batch, tmp_path):
        inputs = model.fixed_loss_inputs(batch["id"])
        with torch.no_grad():
            self.perturb(model)
        model.save_pretrained(tmp_path / "saved")
        loaded = self.load(tmp_path / "saved")
        assert torch.equal(loaded.loss(batch, **inputs), model.loss(batch, **inputs))
        assert loaded.targets_key() == model.targets_key()  # the trained weights changed, the audio encoder did not

    def test_constructor_errors(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="missing-folder"):
            self.backend(pretrained=str(tmp_path / "missing-folder"))
