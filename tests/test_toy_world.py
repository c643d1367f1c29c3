"""The shipped toy world is good enough to make unlearning measurable (checkpoints/toy: CLAP, base, oracle)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from datamodules import ToyCorpus, read_manifest
from datamodules.audio import AudioTextDataset
from lightning_modules.metrics import ClapEmbedder
from lightning_modules.metrics.functional import per_class_accuracy, zero_shot_predictions
from lightning_modules.models import ToyTextToMusic
from tests.conftest import REPO

FORGET_ARTIST = "Kestrel Drive"
TOY = REPO / "checkpoints" / "toy"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> ToyCorpus:
    corpus = ToyCorpus(root=str(tmp_path_factory.mktemp("toy") / "corpus"))
    corpus.prepare()
    return corpus


def _batch(items) -> dict:
    dataset = AudioTextDataset(items, 16000, 32768)
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def test_shipped_clap_recognises_the_artist_of_held_out_tracks(corpus):
    items = read_manifest(corpus.heldout_manifest)
    artists = sorted({item.group for item in items})
    clap = ClapEmbedder(TOY / "clap")
    classes = clap.embed_text([f"a piece by {artist}" for artist in artists])
    predictions = zero_shot_predictions(clap(_batch(items)["audio"], 16000), classes)
    accuracy = per_class_accuracy(predictions, torch.tensor([artists.index(i.group) for i in items]), len(artists))
    assert accuracy.mean() > 0.9 and accuracy.min() >= 0.5  # chance is 1/8


@torch.no_grad()
def test_oracle_never_learned_the_forget_artist(corpus):
    items = read_manifest(corpus.train_manifest)
    forget = _batch([item for item in items if item.group == FORGET_ARTIST][:16])
    retain = _batch([item for item in items if item.group != FORGET_ARTIST][::20])
    base, oracle = ToyTextToMusic.from_pretrained(TOY / "base"), ToyTextToMusic.from_pretrained(TOY / "oracle")

    def mean_loss(model, batch):
        return model.loss(batch, **model.fixed_loss_inputs(batch["id"])).mean().item()

    assert mean_loss(oracle, forget) > 1.3 * mean_loss(base, forget)
    assert mean_loss(oracle, retain) < 1.3 * mean_loss(base, retain)


def test_shipped_base_model_generates_audio():
    model = ToyTextToMusic.from_pretrained(TOY / "base")
    audio = model.generate([f"a piece by {FORGET_ARTIST}"], seed=0, num_inference_steps=5)
    assert audio.shape == (1, 1, model.num_samples) and torch.isfinite(audio).all() and audio.abs().max() > 0


@pytest.mark.slow
def test_quickstart_forgets_the_artist_and_keeps_the_rest(tmp_path):
    subprocess.run([sys.executable, "train.py", "fit", "--config", "configs/quickstart.yaml",
                    f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"],
                   cwd=REPO, check=True, timeout=1200)
    report = json.loads(next(tmp_path.rglob("results.json")).read_text())["columns"]
    before, after = report["before"], report["after"]
    assert after["forget"]["loss"] > 1.5 * before["forget"]["loss"]
    assert after["retain"]["loss"] < 1.25 * before["retain"]["loss"]
    assert after["forget"]["fad"] > 2 * before["forget"]["fad"]  # generations move away from the artist's tracks
    assert set(report["oracle"]["forget"]) == set(after["forget"])
