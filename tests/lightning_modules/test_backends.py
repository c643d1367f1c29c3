"""Every unlearning method takes a step on every real backend, through the `TextToMusicModel` contract alone: tiny
random components saved in each family's native format and loaded back as real checkpoints are."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from datamodules import ForgetRetainDataModule
from lightning_modules.unlearning import SalUn
from tests.lightning_modules.backends import backend_class
from tests.lightning_modules.methods import METHODS, REQUIRED


@pytest.fixture(scope="module")
def loaded(tiny_backend):
    """The backend's model as loaded from its folder, once per module; each test trains a deep copy."""
    class_path, folder, kwargs = tiny_backend
    return backend_class(class_path)(pretrained=str(folder), **kwargs)


def _data(corpus, model) -> ForgetRetainDataModule:
    return ForgetRetainDataModule(manifest=str(corpus.train_manifest), forget_groups=[corpus.artists[0]],
                                  batch_size=2, sample_rate=model.sample_rate, num_samples=model.num_samples)


@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.__name__)
def test_every_method_takes_a_step_on_every_backend(method, loaded, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TTM_UNLEARNING_CACHE", str(tmp_path))
    model = copy.deepcopy(loaded)
    module = method(model, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                    parameter_groups=["cross_attention_kv"], **REQUIRED.get(method, {}))
    selected = {id(p) for p in model.parameter_groups()["cross_attention_kv"]}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    terms = []
    objective = module.objective
    module.objective = lambda forget, retain: terms.append(objective(forget, retain)) or terms[-1]
    L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, _data(tiny_corpus, model))
    assert {"loss", "forget_loss", "retain_loss"} <= set(terms[0])
    assert all(torch.isfinite(value) for value in terms[0].values())
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert changed <= {name for name, p in model.named_parameters() if id(p) in selected}
    assert changed or method is SalUn  # SalUn may mask every weight of so small a group
