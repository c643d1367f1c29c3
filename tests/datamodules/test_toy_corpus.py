"""The toy corpus: deterministic, split into members and held-out tracks, captions naming the artist, safe prepare."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from datamodules.manifest import read_manifest
from datamodules.toy_corpus import ARTISTS, ToyCorpus

SMALL = {"num_artists": 2, "tracks_per_artist": 4, "heldout_per_artist": 1, "duration": 0.5}


def make(root: Path, **settings) -> ToyCorpus:
    corpus = ToyCorpus(root=str(root), **{**SMALL, **settings})
    corpus.prepare()
    return corpus


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    a = files(make(tmp_path / "a", seed=3).root)
    b = files(make(tmp_path / "b", seed=3).root)

    assert len([name for name in a if name.endswith(".wav")]) == 2 * 4
    assert {"train.jsonl", "heldout.jsonl", "corpus.json"} <= set(a)
    assert a == b


def test_different_seed_gives_different_audio(tmp_path):
    a = make(tmp_path / "a", seed=0)
    b = make(tmp_path / "b", seed=1)

    for item in read_manifest(a.train_manifest):
        other = b.root / item.path.relative_to(a.root)
        assert not np.array_equal(sf.read(item.path)[0], sf.read(other)[0]), item.id


def test_manifests_split_members_and_heldout(tmp_path):
    corpus = make(tmp_path / "toy")
    train, heldout = read_manifest(corpus.train_manifest), read_manifest(corpus.heldout_manifest)

    assert len(train) == 2 * 3 and len(heldout) == 2 * 1
    assert not {item.id for item in train} & {item.id for item in heldout}
    assert corpus.artists == [ARTISTS[0].name, ARTISTS[1].name]
    for items, per_artist in ((train, 3), (heldout, 1)):
        assert sorted(item.group for item in items) == sorted(corpus.artists * per_artist)
    for item in train + heldout:
        assert item.group in item.caption, item
        info = sf.info(str(item.path))
        assert (info.samplerate, info.frames, info.channels) == (16000, 8000, 1)


def test_prepare_again_is_a_no_op(tmp_path):
    root = make(tmp_path / "toy").root
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    contents = files(root)

    make(root)  # a new instance with the same settings

    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert files(root) == contents
    assert sorted(os.listdir(tmp_path)) == ["toy"]  # no temporary folder left beside it


def test_prepare_refuses_a_corpus_made_with_other_settings(tmp_path):
    root = make(tmp_path / "toy").root
    train = (root / "train.jsonl").read_text()

    with pytest.raises(ValueError, match=r"holds a toy corpus made with .*'seed': 0.*not the requested.*'seed': 5"):
        make(root, seed=5)
    with pytest.raises(ValueError, match="tracks_per_artist"):
        make(root, tracks_per_artist=5)
    assert (root / "train.jsonl").read_text() == train
    assert json.loads((root / "corpus.json").read_text())["settings"]["seed"] == 0


def test_prepare_refuses_a_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")

    with pytest.raises(FileExistsError, match="mine exists and is not a toy corpus"):
        make(root)
    assert os.listdir(root) == ["notes.txt"] and (root / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(("settings", "message"), [
    ({"num_artists": 0}, "num_artists=0"),
    ({"num_artists": len(ARTISTS) + 1}, f"num_artists={len(ARTISTS) + 1}"),
    ({"tracks_per_artist": 4, "heldout_per_artist": 4}, r"heldout_per_artist=4 must be in \[0, tracks_per_artist=4\)"),
    ({"heldout_per_artist": -1}, "heldout_per_artist=-1"),
])
def test_invalid_settings_are_rejected(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        ToyCorpus(root=str(tmp_path / "toy"), **{**SMALL, **settings})
    assert not (tmp_path / "toy").exists()


def low_band_fraction(audio: np.ndarray, sample_rate: int, cutoff_hz: float = 150.0) -> float:
    power = np.abs(np.fft.rfft(audio)) ** 2
    return float(power[np.fft.rfftfreq(audio.size, 1 / sample_rate) < cutoff_hz].sum() / power.sum())


def test_artists_have_distinct_audible_signatures(tmp_path):
    # Aurora Vale is a high flute without drums; Copper Lanterns plays over a kick, whose energy lies below 150 Hz.
    assert (ARTISTS[0].percussion, ARTISTS[0].register, ARTISTS[1].percussion) == ("none", "high", "kick")
    corpus = make(tmp_path / "toy")
    fraction: dict[str, list[float]] = {name: [] for name in corpus.artists}
    for item in read_manifest(corpus.train_manifest) + read_manifest(corpus.heldout_manifest):
        audio, rate = sf.read(item.path)
        fraction[item.group].append(low_band_fraction(audio, rate))

    flute, kick = fraction[ARTISTS[0].name], fraction[ARTISTS[1].name]
    assert len(flute) == len(kick) == 4
    assert min(kick) > 1e-3 > 1e-5 > max(flute)
