"""Unlearning modules: the template's contract and the first methods' behaviour on tiny components."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.training import TextToMusicTraining
from lightning_modules.unlearning import GradientAscent, GradientDifference

METHODS = [GradientAscent, GradientDifference]


def _step(module, batch) -> dict:
    optimizer = module.configure_optimizers()
    optimizer.zero_grad()
    terms = module.objective(batch, batch)
    terms["loss"].backward()
    optimizer.step()
    return terms


@pytest.mark.parametrize("method", METHODS)
def test_one_step_changes_only_the_selected_groups(method, tiny_model, tiny_batch):
    module = method(tiny_model, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                    parameter_groups=["cross_attention_kv"])
    selected = {id(p) for p in tiny_model.parameter_groups()["cross_attention_kv"]}
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    terms = _step(module, tiny_batch)
    assert {"loss", "forget_loss", "retain_loss"} <= set(terms)
    assert all(torch.isfinite(value) for value in terms.values())
    for name, param in tiny_model.named_parameters():
        changed = not torch.equal(before[name], param)
        assert changed == (id(param) in selected), name


def test_gradient_ascent_raises_the_forget_loss(tiny_model, tiny_batch):
    module = GradientAscent(tiny_model, optimizer=lambda params: torch.optim.SGD(params, lr=0.05))
    fixed_before = module.fixed_loss(tiny_batch).mean()
    for _ in range(3):
        terms = _step(module, tiny_batch)
        assert torch.equal(terms["loss"], -terms["forget_loss"])
    assert module.fixed_loss(tiny_batch).mean() > fixed_before


def test_gradient_difference_weights_its_terms(tiny_model, tiny_batch):
    module = GradientDifference(tiny_model, forget_weight=2.0, retain_weight=0.5)
    torch.manual_seed(0)
    terms = module.objective(tiny_batch, tiny_batch)
    assert torch.allclose(terms["loss"], 0.5 * terms["retain_loss"] - 2.0 * terms["forget_loss"])


def test_checkpoint_holds_only_trained_parameters(tiny_model):
    module = GradientAscent(tiny_model, parameter_groups=["cross_attention"])
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    expected = {f"model.unet.{name}" for name, p in tiny_model.unet.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == expected
    assert not any(key.startswith("model.text_encoder") for key in checkpoint["state_dict"])


def test_training_drops_captions_at_the_configured_rate(tiny_model, tiny_batch, monkeypatch):
    seen = []
    monkeypatch.setattr(tiny_model, "loss", lambda batch, **kw: seen.extend(batch["caption"]) or torch.tensor(0.0))
    module = TextToMusicTraining(tiny_model, caption_dropout=0.5)
    module.log = lambda *args, **kwargs: None
    torch.manual_seed(0)
    for _ in range(50):
        module.training_step(tiny_batch, 0)
    share = sum(caption == "" for caption in seen) / len(seen)
    assert 0.35 < share < 0.65
    with pytest.raises(ValueError, match="caption_dropout"):
        TextToMusicTraining(tiny_model, caption_dropout=1.0)
