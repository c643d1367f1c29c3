"""The attribution Fisher pass: equal to a direct per-item computation, the same over two DDP processes as over one,
skipped when its file matches, refused when its recipe differs, computed again when its file fails verification
(NaN under the right recipe included)."""

from __future__ import annotations

import re
import subprocess
import sys

import lightning as L
import pytest
import torch
import yaml

from datamodules import read_manifest
from datamodules.attribution_store import FisherFile
from datamodules.audio import AudioTextDataset
from datamodules.items import ItemsDataModule
from lightning_modules.attribution.fisher import FisherEstimation
from lightning_modules.gradients import loss_gradient, squared_gradients
from lightning_modules.io import CorruptFileError
from lightning_modules.models import ToyTextToMusic
from lightning_modules.passes import NonFiniteLossError
from tests.conftest import REPO, TINY_SAMPLES, poison_loss

GROUPS = ["cross_attention"]


def _predict(model, corpus, path, **kwargs) -> FisherEstimation:
    module = FisherEstimation(model, str(path), parameter_groups=GROUPS, **kwargs)
    data = ItemsDataModule(str(corpus.train_manifest), batch_size=3, sample_rate=16000, num_samples=TINY_SAMPLES)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)  # default inference_mode=True: the step must re-enable grads
    trainer.predict(module, datamodule=data, return_predictions=False)
    return module


def test_fisher_equals_a_direct_per_item_computation(tmp_path, tiny_corpus, tiny_model_dir):
    model = ToyTextToMusic.from_pretrained(tiny_model_dir)
    _predict(model, tiny_corpus, tmp_path / "fisher.pt", draws=2, seed=3)
    fisher, info = FisherFile(tmp_path / "fisher.pt").load()

    reference = ToyTextToMusic.from_pretrained(tiny_model_dir).eval()
    params = dict(reference.named_parameters())
    names = info["names"]
    items = read_manifest(tiny_corpus.train_manifest)
    dataset = AudioTextDataset(items, 16000, TINY_SAMPLES)
    expected = {name: torch.zeros_like(params[name]) for name in names}
    for index in range(len(dataset)):
        one = torch.utils.data.default_collate([dataset[index]])
        for draw in range(2):
            loss = reference.loss(one, **reference.fixed_loss_inputs(one["id"], 3 + draw)).sum()
            for name, grad in zip(names, torch.autograd.grad(loss, [params[n] for n in names]), strict=True):
                expected[name] += grad.pow(2) / 2 / len(dataset)
    assert info["count"] == len(items) and info["draws"] == 2 and info["seed"] == 3
    assert info["parameter_groups"] == GROUPS and names and all("attn2" in name for name in names)
    assert set(fisher) == set(names)
    for name in names:
        assert torch.allclose(fisher[name], expected[name], rtol=1e-5, atol=1e-12), name
    assert sum(value.sum() for value in fisher.values()) > 0


def test_a_matching_file_skips_the_pass_and_another_recipe_raises(tmp_path, tiny_corpus, tiny_model_dir):
    path = tmp_path / "fisher.pt"
    model = ToyTextToMusic.from_pretrained(tiny_model_dir)
    first = _predict(model, tiny_corpus, path)
    assert not first.reused
    written = path.stat().st_mtime_ns

    steps = []
    model = ToyTextToMusic.from_pretrained(tiny_model_dir)
    module = FisherEstimation(model, str(path), parameter_groups=GROUPS)
    module.predict_step = lambda *args, **kwargs: steps.append(1)  # type: ignore[method-assign]
    data = ItemsDataModule(str(tiny_corpus.train_manifest), sample_rate=16000, num_samples=TINY_SAMPLES)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(module, datamodule=data)
    assert module.reused and not steps and path.stat().st_mtime_ns == written

    with pytest.raises(ValueError, match="draws"):
        _predict(ToyTextToMusic.from_pretrained(tiny_model_dir), tiny_corpus, path, draws=2)
    changed = ToyTextToMusic.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="weights"):
        _predict(changed, tiny_corpus, path)
    with pytest.raises(FileNotFoundError, match="fisher.yaml"):
        FisherFile(tmp_path / "absent.pt").load()


def test_a_bad_file_is_refused_by_name_and_the_pass_computes_it_again(tmp_path, tiny_corpus, tiny_model_dir):
    path = tmp_path / "fisher.pt"
    first = _predict(ToyTextToMusic.from_pretrained(tiny_model_dir), tiny_corpus, path)
    fisher, info = FisherFile(path).load(**first.recipe)
    poisoned = {name: value.clone() for name, value in fisher.items()}
    next(iter(poisoned.values())).view(-1)[0] = float("nan")
    FisherFile(path).save(poisoned, **info)  # a well-formed file of this very recipe, with its digest, holding a NaN
    with pytest.raises(CorruptFileError, match=f"{re.escape(str(path))} .*1 NaN.*configs/attribution/fisher.yaml"):
        FisherFile(path).load(**first.recipe)
    again = _predict(ToyTextToMusic.from_pretrained(tiny_model_dir), tiny_corpus, path)
    assert not again.reused  # computed again (the pass writes this file), to the same values
    rebuilt, _ = FisherFile(path).load(**first.recipe)
    assert all(torch.allclose(rebuilt[name], fisher[name], rtol=1e-6, atol=0) for name in fisher)


@pytest.mark.ddp
def test_two_ddp_processes_give_the_single_process_fisher(tmp_path, tiny_corpus, tiny_model_dir):
    _predict(ToyTextToMusic.from_pretrained(tiny_model_dir), tiny_corpus, tmp_path / "single.pt")
    config = yaml.safe_load((REPO / "configs" / "attribution" / "fisher.yaml").read_text())
    config["trainer"].update(accelerator="cpu", enable_progress_bar=False, default_root_dir=str(tmp_path / "ddp"))
    config["model"]["init_args"].update(
        model={"class_path": "lightning_modules.models.ToyTextToMusic",
               "init_args": {"pretrained": str(tiny_model_dir)}},
        fisher_path=str(tmp_path / "ddp.pt"), parameter_groups=GROUPS)
    config["data"]["init_args"] = {"manifest": str(tiny_corpus.train_manifest), "batch_size": 3}  # 8 items: 2 + 1
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "train.py", "predict", "--config", str(tmp_path / "ddp.yaml"),
                             "--trainer.strategy=ddp", "--trainer.devices=2"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (single, single_info), (ddp, ddp_info) = (FisherFile(tmp_path / name).load() for name in ("single.pt", "ddp.pt"))
    assert single_info["count"] == ddp_info["count"] == len(read_manifest(tiny_corpus.train_manifest))
    assert all(single_info[key] == ddp_info[key] for key in ("weights", "items", "names"))
    assert set(single) == set(ddp)
    for name, value in single.items():
        assert torch.allclose(ddp[name], value, rtol=1e-4, atol=1e-12), name


def test_a_non_finite_loss_raises_naming_the_item_and_writes_no_fisher(tmp_path, tiny_corpus, tiny_model_dir,
                                                                       monkeypatch):
    bad = read_manifest(tiny_corpus.train_manifest)[4].id  # in the second batch of 3
    poison_loss(monkeypatch, {bad})
    with pytest.raises(NonFiniteLossError, match=f"per-item loss \\(at 2 draw\\(s\\)\\) of the squared-gradient "
                                                 f"\\(Fisher\\) pass is not finite .*\\['{bad}'\\]") as error:
        _predict(ToyTextToMusic.from_pretrained(tiny_model_dir), tiny_corpus, tmp_path / "fisher.pt", draws=2)
    assert error.value.ids == [bad]
    assert list(tmp_path.iterdir()) == []  # no Fisher file, not even a partial one


def test_a_gradient_that_overflows_raises_naming_the_batch():
    class Steep(torch.nn.Module):
        """A model whose loss is finite (1e20) but whose squared gradient (1e40) overflows float32."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2))

        def fixed_loss_inputs(self, ids: list[str], seed: int = 0) -> dict:
            return {}

        def with_targets(self, batch: dict) -> dict:
            return batch

        def loss(self, batch: dict) -> torch.Tensor:
            return (self.weight.sum() * 1e20).expand(len(batch["id"]))

    model = Steep()
    batch = {"id": ["a", "b"], "x": torch.zeros(2)}
    with pytest.raises(NonFiniteLossError, match="sum of squared gradients \\(Fisher\\) turned non-finite .*"
                                                 "\\['a', 'b'\\], whose losses are finite") as error:
        squared_gradients(model, [model.weight], [batch])
    assert error.value.ids == ["a", "b"]
    loss_gradient(model, [model.weight], [batch])  # the plain gradient (2e20) stays finite: no error
