"""The loss sweep of attribution by unlearning: `LossSweep` equals a naive per-item loss loop, `SweepWriter` resumes
an interrupted sweep to the same losses recomputing only missing shards and refuses another recipe, two DDP processes
give the same losses as one, the masking flag and the unlearned-weights delta change what is measured, and the sweep
and the ascent refuse arithmetic below float32."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from callbacks.sweep_writer import SweepWriter
from datamodules import read_manifest, write_manifest
from datamodules.attribution_store import Delta, Sweep
from datamodules.audio import AudioTextDataset
from datamodules.sweep import NO_SHARD, SweepDataModule
from lightning_modules.attribution.query import FisherAscent
from lightning_modules.attribution.sweep import LossSweep
from lightning_modules.io import CorruptFileError
from lightning_modules.passes import NonFiniteLossError
from tests.conftest import REPO, TINY_SAMPLES, poison_loss

DRAWS = 3


def _sweep(model, manifest: Path, sweep_dir: Path, *callbacks: L.Callback, **options) -> None:
    module = LossSweep(model, draws=options.pop("draws", DRAWS), micro_batch_size=4, **options)
    data = SweepDataModule(manifest=str(manifest), sweep_dir=str(sweep_dir), shard_size=3, sample_rate=16000,
                           num_samples=TINY_SAMPLES)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[SweepWriter(), *callbacks])
    trainer.predict(module, datamodule=data, return_predictions=False)


class _FailAfterFirstShard(L.Callback):
    def on_predict_batch_end(self, *args, **kwargs) -> None:
        raise RuntimeError("interrupted after the first shard")


def _batch(items) -> dict:
    dataset = AudioTextDataset(items, 16000, TINY_SAMPLES)
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


@pytest.fixture(scope="module")
def reference(tiny_corpus, tiny_model_dir, tmp_path_factory) -> tuple[Path, list[str], torch.Tensor]:
    from lightning_modules.models import ToyTextToMusic

    folder = tmp_path_factory.mktemp("sweep") / "reference"
    _sweep(ToyTextToMusic.from_pretrained(tiny_model_dir), tiny_corpus.train_manifest, folder)
    ids, losses = Sweep(folder).read()
    return folder, ids, losses


def test_sweep_equals_a_naive_per_item_loop(reference, tiny_corpus, tiny_model):
    folder, ids, losses = reference
    items = sorted(read_manifest(tiny_corpus.train_manifest), key=lambda item: item.id)
    assert ids == [item.id for item in items] and len(ids) == 8
    assert sorted(path.name for path in folder.glob("shard-*.pt")) == [f"shard-0000{i}.pt" for i in range(3)]
    assert losses.shape == (8, DRAWS)
    naive = torch.empty(8, DRAWS)
    with torch.no_grad():
        for i, item in enumerate(items):
            one = _batch([item])
            for draw in range(DRAWS):
                naive[i, draw] = tiny_model.loss(one, **tiny_model.fixed_loss_inputs([item.id], draw))[0]
    assert torch.allclose(losses, naive, atol=1e-6, rtol=0)
    assert not torch.allclose(losses[:, 0], losses[:, 1])  # the draws differ


def test_an_interrupted_sweep_resumes_to_the_same_losses(reference, tiny_corpus, tiny_model, tmp_path):
    folder = tmp_path / "sweep"
    with pytest.raises(RuntimeError, match="interrupted"):
        _sweep(tiny_model, tiny_corpus.train_manifest, folder, _FailAfterFirstShard())
    assert [path.name for path in folder.glob("shard-*.pt")] == ["shard-00000.pt"]
    first = Sweep(folder).shard_path(0).stat().st_mtime_ns
    with pytest.raises(FileNotFoundError, match="incomplete"):
        Sweep(folder).read()
    _sweep(tiny_model, tiny_corpus.train_manifest, folder)  # resumes: shards 1 and 2
    assert Sweep(folder).shard_path(0).stat().st_mtime_ns == first

    Sweep(folder).shard_path(1).unlink()  # a lost shard is recomputed, the others are left alone
    others = {index: Sweep(folder).shard_path(index).stat().st_mtime_ns for index in (0, 2)}
    _sweep(tiny_model, tiny_corpus.train_manifest, folder)
    assert {index: Sweep(folder).shard_path(index).stat().st_mtime_ns for index in (0, 2)} == others
    ids, losses = Sweep(folder).read()
    assert ids == reference[1] and torch.equal(losses, reference[2])

    damaged = Sweep(folder).shard_path(2)
    damaged.write_bytes(damaged.read_bytes()[:100])  # a damaged shard: named, recomputed
    with pytest.raises(CorruptFileError, match=f"{Sweep(folder).shard_path(2)} \\(loss sweep shard\\) does not match"):
        Sweep(folder).read()
    _sweep(tiny_model, tiny_corpus.train_manifest, folder)
    assert Sweep(folder).shard_path(0).stat().st_mtime_ns == others[0]
    ids, losses = Sweep(folder).read()
    assert ids == reference[1] and torch.equal(losses, reference[2])

    mtimes = {path: path.stat().st_mtime_ns for path in folder.iterdir()}
    _sweep(tiny_model, tiny_corpus.train_manifest, folder)  # complete: one placeholder step, nothing rewritten
    assert {path: path.stat().st_mtime_ns for path in folder.iterdir()} == mtimes


def test_ranks_without_a_shard_left_get_a_placeholder_step(reference, tiny_corpus):
    data = SweepDataModule(manifest=str(tiny_corpus.train_manifest), sweep_dir=str(reference[0]), shard_size=3,
                           num_samples=TINY_SAMPLES)
    data.setup("predict")
    data.trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(barrier=lambda name: None))
    loader = data.predict_dataloader()
    assert loader.dataset.shards == [NO_SHARD, NO_SHARD]  # every shard written: each of two ranks gets a placeholder
    step = next(iter(loader))
    assert step == {"shard": NO_SHARD}


def test_another_recipe_into_the_same_folder_is_refused(reference, tiny_corpus, tiny_model, tmp_path):
    folder = reference[0]
    with pytest.raises(ValueError, match="draws"):
        _sweep(tiny_model, tiny_corpus.train_manifest, folder, draws=2)
    with pytest.raises(ValueError, match="masked"):
        _sweep(tiny_model, tiny_corpus.train_manifest, folder, masked=False)
    fewer = tmp_path / "fewer.jsonl"
    write_manifest(read_manifest(tiny_corpus.train_manifest)[:5], fewer)
    with pytest.raises(ValueError, match="ids, num_items"):
        _sweep(tiny_model, fewer, folder)


def test_masked_false_measures_the_padding(tiny_corpus, tiny_model):
    items = read_manifest(tiny_corpus.train_manifest)[:2]
    items[0] = dataclasses.replace(items[0], duration=0.2)  # 3200 of 8192 samples real, the rest zero padding
    batch = _batch(items)
    assert not batch["mask"][0].all() and batch["mask"][1].all()
    masked = LossSweep(tiny_model, draws=2).losses(batch)
    unmasked = LossSweep(tiny_model, draws=2, masked=False).losses(batch)
    assert not torch.allclose(masked[0], unmasked[0])
    assert torch.allclose(masked[1], unmasked[1], atol=1e-6, rtol=0)


def test_the_delta_file_changes_the_losses(tiny_corpus, tiny_model, tiny_model_dir, tmp_path):
    from lightning_modules.models import ToyTextToMusic

    batch = _batch(read_manifest(tiny_corpus.train_manifest)[:3])
    before = LossSweep(tiny_model, draws=2)
    name, param = next(iter(tiny_model.named_parameters()))
    Delta(tmp_path / "delta.pt").write({name: param.detach() + 0.05}, {})
    after = LossSweep(ToyTextToMusic.from_pretrained(tiny_model_dir), pretrained_delta=str(tmp_path / "delta.pt"),
                      draws=2)
    assert not torch.allclose(before.losses(batch), after.losses(batch))
    assert before.recipe()["weights"] != after.recipe()["weights"]
    Delta(tmp_path / "bad.pt").write({"no.such.weight": param.detach()}, {})
    with pytest.raises(ValueError, match="no.such.weight"):
        LossSweep(tiny_model, pretrained_delta=str(tmp_path / "bad.pt"))
    torch.save({name: param.detach() + 0.05}, tmp_path / "unverified.pt")  # no digest: not trusted
    with pytest.raises(CorruptFileError, match="unverified.pt .*no digest file.*unlearn the query again"):
        LossSweep(tiny_model, pretrained_delta=str(tmp_path / "unverified.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        LossSweep(tiny_model, pretrained_delta=str(tmp_path / "missing.pt"))


def _cli_sweep(tiny_corpus, tiny_model_dir, sweep_dir: Path, *flags: str) -> None:
    args = [sys.executable, "train.py", "predict", "--config", "configs/attribution/sweep.yaml",
            "--model.init_args.model.init_args.pretrained", str(tiny_model_dir), f"--model.init_args.draws={DRAWS}",
            "--model.init_args.micro_batch_size=4", "--data.init_args.manifest", str(tiny_corpus.train_manifest),
            "--data.init_args.sweep_dir", str(sweep_dir), "--data.init_args.shard_size=3",
            "--data.init_args.source=null", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
            "--trainer.default_root_dir", str(sweep_dir.parent / "logs"), *flags]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.ddp
def test_two_ddp_processes_give_the_losses_of_one(reference, tiny_corpus, tiny_model_dir, tmp_path):
    folder = tmp_path / "ddp"
    _cli_sweep(tiny_corpus, tiny_model_dir, folder, "--trainer.strategy=ddp", "--trainer.devices=2")
    ids, losses = Sweep(folder).read()
    assert ids == reference[1] and torch.allclose(losses, reference[2], atol=1e-6, rtol=0)


def test_a_model_whose_loss_draws_nothing_is_measured_once(tiny_corpus, tiny_model, monkeypatch):
    batch = _batch(read_manifest(tiny_corpus.train_manifest)[:3])
    monkeypatch.setattr(tiny_model, "fixed_loss_inputs", lambda ids, seed=0: {})  # as MusicGen's cross-entropy
    sweep = LossSweep(tiny_model, draws=5)
    assert sweep.draws == 1 and sweep.recipe()["draws"] == 1
    assert sweep.losses(batch).shape == (3, 1)


def test_a_non_finite_loss_raises_naming_the_item_before_its_shard_is_written(tiny_corpus, tiny_model, tmp_path,
                                                                               monkeypatch):
    first = sorted(item.id for item in read_manifest(tiny_corpus.train_manifest))[0]  # in shard 0, the first step
    poison_loss(monkeypatch, {first})
    folder = tmp_path / "sweep"
    with pytest.raises(NonFiniteLossError, match=f"loss sweep's per-item loss is not finite .* for 1 of 3 item\\(s\\): "
                                                 f"\\['{first}'\\]") as error:
        _sweep(tiny_model, tiny_corpus.train_manifest, folder)
    assert error.value.ids == [first]
    assert not list(folder.glob("shard-*")) and not list(folder.glob("*.tmp*"))  # no shard, not even a partial one


# ----------------------------------------------------------------------------------------------- precision
def test_the_sweep_and_the_ascent_refuse_arithmetic_below_float32(tiny_corpus, tiny_model, tmp_path):
    batch = _batch(read_manifest(tiny_corpus.train_manifest)[:2])
    with pytest.raises(ValueError, match="under torch.bfloat16 autocast on cpu: .*--trainer.precision=32-true"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            LossSweep(tiny_model, draws=2).losses(batch)
    folder = tmp_path / "sweep"
    module = LossSweep(tiny_model, draws=DRAWS)
    data = SweepDataModule(manifest=str(tiny_corpus.train_manifest), sweep_dir=str(folder), shard_size=3,
                           sample_rate=16000, num_samples=TINY_SAMPLES)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[SweepWriter()])
    with pytest.raises(ValueError, match="LossSweep cannot run at trainer.precision='bf16-mixed': .*1e-4 .*32-true"):
        trainer.predict(module, datamodule=data, return_predictions=False)
    assert not folder.exists() or not list(folder.iterdir())  # refused before any recipe or shard
    names = [name for name, _ in tiny_model.named_parameters()]
    tiny_model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="The loss sweep cannot run on weights in torch.bfloat16"):
        LossSweep(tiny_model, draws=2).losses(batch)
    with pytest.raises(ValueError, match="The query's ascent cannot run on weights in torch.bfloat16: .*float32"):
        FisherAscent(names, tmp_path / "fisher.pt").unlearn(tiny_model, batch)  # before it reads the Fisher


def test_each_item_is_encoded_once_whatever_its_draws(tiny_corpus, tiny_model, monkeypatch):
    """The sweep, the squared-gradient (Fisher) pass and the gradient features encode each item's audio once, not
    once per draw (a VAE or codec costs about a denoiser's forward per clip or more), at the losses of encoding inside
    every loss; a batch with cached targets is not encoded again."""
    from lightning_modules.attribution.similarity import gradient_features
    from lightning_modules.attribution.sweep import sweep_losses
    from lightning_modules.gradients import squared_gradients

    batch = _batch(read_manifest(tiny_corpus.train_manifest)[:5])
    draws = 4
    with torch.no_grad():  # the loss encoding the audio itself, at each draw
        inside = torch.stack([tiny_model.loss(batch, **tiny_model.fixed_loss_inputs(list(batch["id"]), draw))
                              for draw in range(draws)], dim=1)
    encoded: list[int] = []
    encode = tiny_model.encode_audio

    def counting(waveform, mask):
        encoded.append(len(waveform))
        return encode(waveform, mask)

    monkeypatch.setattr(tiny_model, "encode_audio", counting)
    losses = sweep_losses(tiny_model, batch, draws, seed=0, micro_batch_size=2)
    assert encoded == [2, 2, 1]  # 5 items in micro-batches of 2, not 20 (item, draw) rows
    assert torch.allclose(losses, inside, atol=1e-6, rtol=0)
    encoded.clear()
    squared_gradients(tiny_model, tiny_model.select_parameters(["cross_attention"]), [batch], draws=draws)
    gradient_features(tiny_model, ["cross_attention"], [batch], draws=draws, projection_dim=8)
    assert encoded == [5, 5]
    encoded.clear()
    sweep_losses(tiny_model, tiny_model.with_targets(batch), draws, seed=0)
    assert encoded == [5]  # with_targets itself; the sweep encodes nothing more
