"""Unlearning a query: one step is the closed form ``lr * g / (N F + eps)`` on the selected parameters only, the
query's loss rises, the masking variants differ on a padded query as specified, and the fit writes the delta."""

from __future__ import annotations

import json

import lightning as L
import pytest
import soundfile as sf
import torch

from datamodules import read_manifest
from datamodules.attribution_store import FisherFile
from datamodules.audio import AudioTextDataset
from datamodules.items import ItemsDataModule
from lightning_modules.attribution.query import QueryUnlearning
from lightning_modules.attribution.settings import AscentSettings
from lightning_modules.gradients import weights_digest
from lightning_modules.models import ToyTextToMusic
from lightning_modules.passes import NonFiniteLossError
from tests.conftest import TINY_SAMPLES, poison_loss

GROUPS = ["cross_attention"]
COUNT = 8
LR = 0.02


@pytest.fixture
def setup(tmp_path, tiny_corpus, tiny_model_dir):
    """A model, a synthetic Fisher file at its weights, and a manifest of one half-padded query."""
    model = ToyTextToMusic.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    names = {id(p): n for n, p in model.named_parameters()}
    fisher = {names[id(p)]: torch.rand(p.shape, generator=generator) + 0.5 for p in model.select_parameters(GROUPS)}
    FisherFile(tmp_path / "fisher.pt").save(fisher, weights=weights_digest(sorted(model.state_dict().items())),
                count=COUNT)
    source = read_manifest(tiny_corpus.train_manifest)[0]
    audio, rate = sf.read(source.path, dtype="float32")
    sf.write(tmp_path / "query.wav", audio[: TINY_SAMPLES // 2], rate)
    (tmp_path / "queries.jsonl").write_text(json.dumps({"id": "query0", "path": "query.wav",
                                                        "caption": source.caption}) + "\n")
    dataset = AudioTextDataset(read_manifest(tmp_path / "queries.jsonl"), 16000, TINY_SAMPLES)
    batch = torch.utils.data.default_collate([dataset[0]])
    assert not batch["mask"].all() and batch["mask"].any()  # the query is padded
    return model, fisher, batch, tmp_path


def _module(model, tmp_path, parameter_groups=GROUPS, **kwargs) -> QueryUnlearning:
    settings = {"lr": LR, "steps": 1, "draws": 2, "masking": "mixed", **kwargs}
    return QueryUnlearning(model, str(tmp_path / "fisher.pt"), str(tmp_path / "delta.pt"), parameter_groups,
                           AscentSettings(**settings))


def test_one_step_is_the_closed_form_on_the_selected_parameters_only(setup, tiny_model_dir):
    model, fisher, batch, tmp_path = setup
    before = {name: value.clone() for name, value in model.state_dict().items()}
    flags = [param.requires_grad for param in model.parameters()]
    module = _module(model, tmp_path, eps=1e-3)
    delta = module.unlearn(model, batch)

    reference = ToyTextToMusic.from_pretrained(tiny_model_dir).eval()
    params = dict(reference.named_parameters())
    names = list(fisher)
    gradient = {name: torch.zeros_like(params[name]) for name in names}
    for draw in range(2):
        loss = reference.loss(batch, **reference.fixed_loss_inputs(["query0"], module.seed + draw), reduction="mean")
        for name, grad in zip(names, torch.autograd.grad(loss, [params[n] for n in names]), strict=True):
            gradient[name] += grad / 2
    assert sorted(delta) == sorted(names) and all("attn2" in name for name in names)
    for name in names:
        expected = before[name] + LR * gradient[name] / (COUNT * fisher[name] + 1e-3)
        assert torch.allclose(delta[name], expected, rtol=1e-5, atol=1e-8), name
        assert not torch.equal(delta[name], before[name])
    after = model.state_dict()
    assert all(torch.equal(after[name], value) for name, value in before.items() if name not in delta)
    assert module.query_loss["after"] > module.query_loss["before"]  # the query is unlearned
    assert [param.requires_grad for param in model.parameters()] == flags  # flags restored


def test_masking_variants_on_a_padded_query(setup, tiny_model_dir):
    _, _, batch, tmp_path = setup
    deltas = {}
    for masking in ("none", "dual", "mixed"):
        module = _module(ToyTextToMusic.from_pretrained(tiny_model_dir), tmp_path, masking=masking)
        deltas[masking] = module.unlearn(module.model, batch)
        assert module.measure_masked == (masking == "dual")
    assert all(torch.equal(deltas["dual"][name], deltas["mixed"][name]) for name in deltas["dual"])
    assert any(not torch.allclose(deltas["none"][name], deltas["mixed"][name]) for name in deltas["none"])
    with pytest.raises(ValueError, match="masking"):
        _module(ToyTextToMusic.from_pretrained(tiny_model_dir), tmp_path, masking="half")


def test_fit_writes_the_delta_and_its_settings(setup, tiny_model_dir):
    _, _, batch, tmp_path = setup
    module = _module(ToyTextToMusic.from_pretrained(tiny_model_dir), tmp_path, steps=2)
    data = ItemsDataModule(str(tmp_path / "queries.jsonl"), sample_rate=16000, num_samples=TINY_SAMPLES)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    written = torch.load(tmp_path / "delta.pt", weights_only=True)
    direct = _module(ToyTextToMusic.from_pretrained(tiny_model_dir), tmp_path, steps=2)
    expected = direct.unlearn(direct.model, batch)
    assert sorted(written) == sorted(expected)
    assert all(torch.allclose(written[name], expected[name], rtol=1e-6, atol=1e-9) for name in expected)
    settings = json.loads((tmp_path / "delta.json").read_text())
    assert settings["queries"] == ["query0"] and settings["measure_masked"] is False and settings["steps"] == 2
    assert settings["query_loss"]["after"] > settings["query_loss"]["before"]


def test_a_fisher_at_other_weights_or_groups_is_refused(setup, tiny_model_dir):
    model, _, batch, tmp_path = setup
    with pytest.raises(ValueError, match="no entry"):
        _module(model, tmp_path, parameter_groups=["all"]).unlearn(model, batch)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="weights"):
        _module(model, tmp_path).unlearn(model, batch)


def test_a_non_finite_query_loss_raises_naming_the_query_and_changes_and_writes_nothing(setup, monkeypatch):
    model, _, batch, tmp_path = setup
    before = {name: value.clone() for name, value in model.state_dict().items()}
    poison_loss(monkeypatch, {"query0"})
    with pytest.raises(NonFiniteLossError, match="query loss at ascent step 0, draw 0 is not finite .*\\['query0'\\]"):
        _module(model, tmp_path).unlearn(model, batch)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    data = ItemsDataModule(str(tmp_path / "queries.jsonl"), sample_rate=16000, num_samples=TINY_SAMPLES)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NonFiniteLossError, match="query0") as error:
        trainer.fit(_module(model, tmp_path), datamodule=data)
    assert error.value.ids == ["query0"]
    assert not (tmp_path / "delta.pt").exists() and not (tmp_path / "delta.json").exists()
