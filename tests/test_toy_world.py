"""The shipped toy world is good enough to make unlearning measurable (checkpoints/toy: CLAP, judge, base, oracles)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from datamodules import ToyCorpus, read_manifest
from datamodules.audio import AudioTextDataset
from lightning_modules.metrics import ClapEmbedder, FeatureTagger, ZeroShotTagger
from lightning_modules.metrics.functional import per_class_accuracy
from lightning_modules.models import ToyTextToMusic
from tests.conftest import REPO

FORGET_ARTIST = "Kestrel Drive"
TOY = REPO / "checkpoints" / "toy"
ORACLES = {"oracle": FORGET_ARTIST, "oracle_aurora_vale": "Aurora Vale"}  # folder: the artist it never saw


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> ToyCorpus:
    corpus = ToyCorpus(root=str(tmp_path_factory.mktemp("toy") / "corpus"))
    corpus.prepare()
    return corpus


def _batch(items) -> dict:
    dataset = AudioTextDataset(items, 16000, 32768)
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("judge", ["clap", "judge"])
def test_shipped_judges_recognise_the_artist_of_every_held_out_track(corpus, judge):
    items = read_manifest(corpus.heldout_manifest)
    artists = sorted({item.group for item in items})
    tagger = ZeroShotTagger(ClapEmbedder(TOY / "clap"), artists) if judge == "clap" else FeatureTagger(TOY / "judge")
    assert tagger.labels == artists
    predictions = tagger(_batch(items)["audio"], 16000).argmax(-1)
    accuracy = per_class_accuracy(predictions, torch.tensor([artists.index(i.group) for i in items]), len(artists))
    # measured 1.00 for each of the 10 artists (8 tracks each, near pairs included) by both judges; chance is 1/10
    assert accuracy.min() >= 0.875


@torch.no_grad()
@pytest.mark.parametrize(("oracle", "artist"), ORACLES.items())
def test_each_oracle_never_learned_its_artist(corpus, oracle, artist):
    items = read_manifest(corpus.train_manifest)
    forget = _batch([item for item in items if item.group == artist][:16])
    retain = _batch([item for item in items if item.group != artist][::20])
    base, retrained = ToyTextToMusic.from_pretrained(TOY / "base"), ToyTextToMusic.from_pretrained(TOY / oracle)

    def mean_loss(model, batch):
        return model.loss(batch, **model.fixed_loss_inputs(batch["id"])).mean().item()

    # oracle / base loss, measured: forget 1.83 (Kestrel Drive) and 2.05 (Aurora Vale), retain 0.99 and 0.97; the
    # bounds leave 25 % margin below the smaller forget ratio and 25 % above the retain ones
    assert mean_loss(retrained, forget) > 1.3 * mean_loss(base, forget)
    assert mean_loss(retrained, retain) < 1.25 * mean_loss(base, retain)


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
    # measured (the quickstart is configs/unlearn/gradient_difference.yaml: reports/methods, one thread): forget loss
    # x3.25, far retain loss x1.29, forget FAD 0.050 -> 0.886 (x17.7); the bounds sit well inside each effect (x2.0,
    # x5) and 0.11 above the retain cost
    assert after["forget"]["loss"] > 2.0 * before["forget"]["loss"]
    assert after["retain"]["loss"] < 1.4 * before["retain"]["loss"]
    assert after["forget"]["fad"] > 5 * before["forget"]["fad"]  # generations move away from the artist's tracks
    assert set(report["oracle"]["forget"]) == set(after["forget"])
