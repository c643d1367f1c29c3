"""Every unlearning method and the evaluation report on every real backend, through the `TextToMusicModel` contract
alone: tiny random components saved in each family's native format and loaded back as real checkpoints are."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from datamodules import ForgetRetainDataModule
from lightning_modules.unlearning import SalUn
from tests.conftest import write_config
from tests.lightning_modules.test_unlearning import METHODS, REQUIRED

BACKENDS = {  # name: (class path, extra constructor arguments)
    "audioldm": ("lightning_modules.models.AudioLDM", {}),
    "musicldm": ("lightning_modules.models.MusicLDM", {}),
    "audioldm2": ("lightning_modules.models.AudioLDM2", {}),
    "stable_audio": ("lightning_modules.models.StableAudioOpen", {}),
    "musicgen": ("lightning_modules.models.MusicGen", {"duration": 0.25}),
}


def _class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend(request, tmp_path_factory) -> tuple[str, Path, dict]:
    folder = tmp_path_factory.mktemp(request.param)
    importlib.import_module(f"tests.tiny.{request.param}").save_tiny(folder)
    class_path, kwargs = BACKENDS[request.param]
    return class_path, folder, kwargs


@pytest.fixture(scope="module")
def loaded(backend):
    """The backend's model as loaded from its folder, once per module; each test trains a deep copy."""
    class_path, folder, kwargs = backend
    return _class(class_path)(pretrained=str(folder), **kwargs)


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


def test_the_evaluation_report_runs_on_every_backend(backend, tiny_corpus, tiny_clap_dir, tmp_path, monkeypatch):
    from train import main

    class_path, folder, kwargs = backend
    config = write_config(tmp_path, tiny_corpus, folder, tiny_clap_dir,
                          evaluation={"num_prompts": 2, "num_inference_steps": 2, "log_audio": 1})
    content = yaml.safe_load(config.read_text())
    content["model"]["init_args"]["model"] = {"class_path": class_path,
                                              "init_args": {"pretrained": str(folder), **kwargs}}
    content["model"]["init_args"]["parameter_groups"] = ["cross_attention"]
    content["trainer"]["max_steps"] = 1
    config.write_text(yaml.safe_dump(content))
    main(["fit", "--config", str(config)])
    run = sorted((tmp_path / "logs" / "lightning_logs").iterdir())[-1]
    report = json.loads((run / "results.json").read_text())["columns"]
    for column in ("before", "after"):
        assert all(torch.isfinite(torch.tensor(report[column][split]["loss"])) for split in report[column])
        assert {"fad", "clap_score", "recognition"} <= set(report[column]["forget"])
    _class(class_path).from_pretrained(run / "pretrained")  # SavePretrained wrote a loadable native folder
