"""kill -9 in an unlearning fit: ``train.py fit`` on the tiny model and corpus (SalUn with AdamW and a step LR schedule,
`UnlearningGuard`, `UnlearningEvaluation` with its "before" column and a check every 3 steps, a `last.ckpt` after every
step, 2 batches per epoch) is SIGKILLed by itself half-way through an optimizer step (after the backward pass, before
the update: the checkpoint of the step before is the newest), resumed with ``--ckpt_path last``, killed again and
resumed again, and compared with an uninterrupted run of the same config. A seeded RNG picks the two steps: the first
right after an epoch's last batch (the epoch's validation then ran after the checkpoint), the second mid-epoch.
Resuming restores the trainable weights, the optimizer and schedule, the SalUn mask, the guard's and the evaluation's
state, the data loaders' position and the global random state, and validation leaves that state as it found it, so
the final weights and the report are bit-identical; only the report's timing differs (wall-clock seconds).
``TTM_KILL_SEED`` picks other steps."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, write_config

pytestmark = [pytest.mark.faults, pytest.mark.ddp]

SEED = int(os.environ.get("TTM_KILL_SEED", "0"))
STEPS = 8
KILL_ENV = "TTM_TEST_KILL_AT_STEP"


class KillAt(L.Callback):
    """SIGKILLs its own process in the optimizer step after `global_step` reaches ``$TTM_TEST_KILL_AT_STEP`` (after
    the backward pass, before the update); does nothing without the variable, so every run shares one config."""

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if os.environ.get(KILL_ENV) == str(trainer.global_step):
            os.kill(os.getpid(), signal.SIGKILL)


def _config(tmp_path: Path, corpus: Any, model_dir: Path) -> Path:
    path = write_config(tmp_path, corpus, model_dir, evaluation={"every_n_train_steps": 3}, max_steps=STEPS)
    config = yaml.safe_load(path.read_text())
    evaluation, save_pretrained = config["trainer"]["callbacks"]
    config["trainer"]["callbacks"] = [
        {"class_path": "callbacks.UnlearningGuard",  # never trips here: its state must still survive the kill
         "init_args": {"max_retain_ratio": 100.0, "check_every_n_steps": 2, "num_items": 4}},
        evaluation, save_pretrained,
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 1}},
        {"class_path": f"{__name__}.KillAt"},
    ]
    config["model"] = {"class_path": "lightning_modules.unlearning.SalUn", "init_args": {
        "model": config["model"]["init_args"]["model"], "parameter_groups": ["cross_attention"],
        "saliency_fraction": 0.5,
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001, "weight_decay": 0.0}},
        "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 3, "gamma": 0.5}},
    }}
    config["data"]["init_args"]["global_batch_size"] = config["data"]["init_args"].pop("batch_size")
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, run: str, *flags: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TTM_UNLEARNING_CACHE": str(config.parent / "cache"), "OMP_NUM_THREADS": "1"}
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    return subprocess.run([sys.executable, "train.py", "fit", "--config", str(config), "--run_name", run, *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.rglob("*.safetensors"))
    assert files, f"no weights in {folder}"
    return {f"{file.relative_to(folder)}:{name}": value for file in files for name, value in load_file(file).items()}


def test_a_killed_fit_resumes_to_the_uninterrupted_result(tmp_path, tiny_corpus, tiny_model_dir):
    config = _config(tmp_path, tiny_corpus, tiny_model_dir)
    runs = tmp_path / "logs" / "lightning_logs"
    rng = random.Random(SEED)
    at_epoch_end = rng.choice([2, 4])  # 2 batches per epoch
    mid_epoch = rng.choice([step for step in (3, 5) if step > at_epoch_end])

    whole = _fit(config, "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    last = runs / "cut" / "checkpoints" / "last.ckpt"
    for kill_at, flags in ((at_epoch_end, ()), (mid_epoch, ("--ckpt_path", "last"))):
        killed = _fit(config, "cut", *flags, kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == kill_at
        assert not (runs / "cut" / "results.json").exists()
    resumed = _fit(config, "cut", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr + resumed.stdout

    expected, got = _weights(runs / "whole" / "pretrained"), _weights(runs / "cut" / "pretrained")
    assert expected.keys() == got.keys()
    base = _weights(tiny_model_dir)
    changed = [name for name, value in expected.items() if not torch.equal(value, base[name])]
    assert changed, "the fit changed no weight: the comparison would prove nothing"
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, (f"killed at steps {at_epoch_end} and {mid_epoch} and resumed: {len(different)} tensors "
                           f"differ, e.g. {different[:3]}")

    reports = [json.loads((runs / run / "results.json").read_text()) for run in ("whole", "cut")]
    for key in ("columns", "gap_to_oracle", "history", "settings"):  # "before" is the start's, not re-measured
        assert reports[1][key] == reports[0][key], key
    assert [entry["step"] for entry in reports[1]["history"]] == [0, 3, 6, STEPS]
    # "timing" differs in its wall-clock seconds only: the resumed fit counts every step of the fit, as the whole one
    assert reports[1]["timing"]["steps"] == reports[0]["timing"]["steps"] == STEPS
    assert reports[1]["timing"]["train_seconds"] > 0


def test_a_fresh_fit_into_a_run_that_exists_is_refused(tmp_path, tiny_corpus, tiny_model_dir):
    from train import main

    config = _config(tmp_path, tiny_corpus, tiny_model_dir)
    run = tmp_path / "logs" / "lightning_logs" / "done"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's")
    with pytest.raises(FileExistsError, match=r"already holds the run 'done'.*--ckpt_path last.*--run_name"):
        main(["fit", "--config", str(config), "--run_name", "done"])
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"an earlier run's"  # untouched
    with pytest.raises(FileNotFoundError, match=r"the run 'never' has no checkpoint .*never/checkpoints/last.ckpt"):
        main(["validate", "--config", str(config), "--run_name", "never", "--ckpt_path", "last"])

