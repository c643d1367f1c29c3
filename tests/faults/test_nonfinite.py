"""A NaN loss in `train.py fit` (issue 13, "nothing poisoned, nothing lost"): one forget track whose samples are finite
but so loud (1e36) that the model's log-mel overflows, so its loss is not finite. The run must end with an error that
names the track, at the step that drew it, before that step's update: the checkpoints written before it hold finite
weights, none is written after it, and no model is saved."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from datamodules import read_manifest, write_manifest
from lightning_modules.passes import NonFiniteLossError
from tests.conftest import TINY_SAMPLES, write_config

pytestmark = pytest.mark.faults


def test_a_nan_loss_ends_the_fit_naming_the_item_with_no_non_finite_checkpoint(tmp_path, tiny_corpus, tiny_model_dir):
    from train import main

    items = read_manifest(tiny_corpus.train_manifest)
    # the last forget track: drawn after a good step, whose checkpoint must stay clean
    index, loud = [(i, item) for i, item in enumerate(items) if item.group == tiny_corpus.artists[0]][-1]
    sf.write(tmp_path / "loud.wav", np.full(TINY_SAMPLES, 1e36, dtype=np.float32), 16000, subtype="FLOAT")
    items[index] = dataclasses.replace(loud, path=tmp_path / "loud.wav")
    write_manifest(items, tmp_path / "train.jsonl")

    config_path = write_config(tmp_path, tiny_corpus, tiny_model_dir, max_steps=6, limit_val_batches=0,
                               num_sanity_val_steps=0)
    config = yaml.safe_load(config_path.read_text())
    config["data"]["init_args"]["manifest"] = str(tmp_path / "train.jsonl")
    config["trainer"]["callbacks"] = [  # no evaluation: nothing else would notice the NaN
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 1, "save_top_k": -1}},
        {"class_path": "callbacks.SavePretrained"}]
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(NonFiniteLossError, match=f"GradientAscent training loss at step \\d+ is not finite.*"
                                                 f"forget: \\[[^]]*'{loud.id}'") as error:
        main(["fit", "--config", str(config_path)])
    assert loud.id in error.value.ids
    step = int(re.search(r"at step (\d+)", str(error.value)).group(1))
    assert step >= 1

    (run,) = (tmp_path / "logs" / "lightning_logs").iterdir()
    checkpoints = sorted(run.glob("checkpoints/*.ckpt"), key=lambda path: int(path.stem.rsplit("step=", 1)[1]))
    assert [int(path.stem.rsplit("step=", 1)[1]) for path in checkpoints] == list(range(1, step + 1))
    for path in checkpoints:  # the good steps' checkpoints, each with finite weights
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert state and all(torch.isfinite(value).all() for value in state.values()), path.name
    assert not (run / "pretrained").exists()
