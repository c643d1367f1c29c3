"""The toy queries: the toy model's "a piece by <artist>" generations with the prompted artist as ground truth,
deterministic, reused when present, refused when made with other settings."""

import pytest
import soundfile as sf

from datamodules.manifest import read_queries
from datamodules.toy_corpus import ARTISTS
from datamodules.toy_queries import ToyQueries
from lightning_modules.models import ToyTextToMusic
from tests.conftest import TINY_SAMPLES


def test_queries_name_their_artist_and_are_reused(tmp_path, tiny_model_dir):
    settings = {"model": str(tiny_model_dir), "num_artists": 2, "num_inference_steps": 2}
    source = ToyQueries(ToyTextToMusic, root=str(tmp_path / "queries"), per_artist=2, **settings)
    source.prepare()
    items = read_queries(source.manifest)  # ids usable as folder names, every file readable
    artists = [style.name for style in ARTISTS[:2]]
    assert [item.group for item in items] == [artists[0], artists[0], artists[1], artists[1]]
    assert all(item.caption == f"a piece by {item.group}" for item in items)
    audio = [sf.read(item.path, dtype="float32")[0] for item in items]
    assert all(len(clip) == TINY_SAMPLES for clip in audio)
    assert not (audio[0] == audio[1]).all()  # each piece its own seed
    again = ToyQueries(ToyTextToMusic, root=str(tmp_path / "again"), per_artist=2, **settings)
    again.prepare()
    assert (sf.read(read_queries(again.manifest)[0].path, dtype="float32")[0] == audio[0]).all()  # deterministic

    mtime = source.manifest.stat().st_mtime_ns
    source.prepare()  # present: nothing rewritten
    assert source.manifest.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="per_artist"):
        ToyQueries(ToyTextToMusic, root=str(tmp_path / "queries"), per_artist=1, **settings).prepare()


def test_backend_must_be_a_model_class(tmp_path):
    with pytest.raises(TypeError, match="TextToMusicModel class"):
        ToyQueries("lightning_modules.models.toy.ToyTextToMusic", root=str(tmp_path / "queries"))


def test_lds_queries_hold_every_kind_and_split_each_artist_across_the_halves(tmp_path, tiny_model_dir, tiny_corpus):
    from datamodules.manifest import read_manifest
    from datamodules.toy_queries import ToyLdsQueries

    source = ToyLdsQueries(ToyTextToMusic, root=str(tmp_path / "lds_queries"), model=str(tiny_model_dir),
                           corpus=str(tiny_corpus.root), num_artists=2, prompted=2, described=1, heldout=1,
                           num_inference_steps=2)
    source.prepare()
    items = read_queries(source.manifest)
    artists = [style.name for style in ARTISTS[:2]]
    kinds = ["prompted", "prompted", "described", "heldout"]
    assert [(item.group, item.id.split("-")[1]) for item in items] == [(a, kind) for a in artists for kind in kinds]
    for item in items:
        kind = item.id.split("-")[1]
        if kind == "prompted":
            assert item.caption == f"a piece by {item.group}"
        elif kind == "described":  # describes the music without the name
            assert item.group not in item.caption and "register" in item.caption
    heldout = {item.group: item for item in reversed(read_manifest(tiny_corpus.heldout_manifest))}  # each first
    for item in items[3::4]:  # the real tracks, copied with their captions
        assert item.caption == heldout[item.group].caption
        assert item.path.read_bytes() == heldout[item.group].path.read_bytes()
    split = source.split()
    assert set(split) == {item.id for item in items}
    for half in ("validation", "test"):
        mine = [item for item in items if split[item.id] == half]
        assert len(mine) == 4 and {item.group for item in mine} == set(artists)  # every artist in both halves
        assert sorted(item.id.split("-")[1] for item in mine) == ["described", "heldout", "prompted", "prompted"]
