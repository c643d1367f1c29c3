"""The converter from a folder of audio and a MusicCaps-style captions CSV to a manifest."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from datamodules import read_manifest
from datamodules.captions import manifest_from_captions
from tests.conftest import REPO

COLUMNS = ["ytid", "start_s", "end_s", "aspect_list", "caption", "author_id"]


def _table(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([dict(zip(COLUMNS, row, strict=True)) for row in rows])
    return path


@pytest.fixture
def folder(tmp_path):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    for name, seconds in (("abc", 2.0), ("sub/def", 1.0)):
        sf.write(audio / f"{name}.wav", np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    (audio / "broken.wav").write_bytes(b"not audio")
    return tmp_path


def test_musiccaps_rows_become_a_manifest_with_offsets_and_groups(folder):
    table = _table(folder / "caps.csv", [("abc", 0.5, 1.5, "[]", "calm piano", "4"),
                                         ("def", 0, 1, "[]", "fast drums", "7")])
    out = folder / "data" / "manifest.jsonl"
    result = subprocess.run([sys.executable, "scripts/make_manifest.py", "--captions", str(table), "--audio-dir",
                             str(folder / "audio"), "--out", str(out), "--group-column", "author_id",
                             "--offset-column", "start_s", "--end-column", "end_s"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    items = read_manifest(out)
    assert [(i.id, i.caption, i.group, i.offset, i.duration) for i in items] == [
        ("abc", "calm piano", "4", 0.5, 1.0), ("def", "fast drums", "7", 0.0, 1.0)]
    assert items[1].path == (folder / "audio" / "sub" / "def.wav").resolve()


def test_missing_audio_fails_unless_skipped(folder):
    table = _table(folder / "caps.csv", [("abc", 0, 1, "", "calm piano", ""), ("zzz", 0, 1, "", "lost", "")])
    with pytest.raises(FileNotFoundError, match="1 row.*zzz"):
        manifest_from_captions(table, folder / "audio", folder / "m.jsonl")
    items = manifest_from_captions(table, folder / "audio", folder / "m.jsonl", skip_missing=True)
    assert [item.id for item in items] == ["abc"] and items[0].offset == 0.0 and items[0].duration is None


@pytest.mark.parametrize("rows, error, match", [
    ([("broken", 0, 1, "", "noise", "")], ValueError, "Cannot decode .*broken.wav"),
    ([("abc", 0, 1, "", " ", "")], ValueError, "line 2: the caption of 'abc' is empty"),
    ([("abc", 0, 1, "", "a", ""), ("abc", 0, 1, "", "b", "")], ValueError, "line 3: id 'abc' repeats line 2"),
    ([("abc", 5, 6, "", "late", "")], ValueError, "offset 5.0 s, past the end"),
])
def test_bad_rows_and_files_are_named(folder, rows, error, match):
    table = _table(folder / "caps.csv", rows)
    with pytest.raises(error, match=match):
        manifest_from_captions(table, folder / "audio", folder / "m.jsonl", offset_column="start_s",
                               end_column="end_s")


def test_a_missing_column_is_named(folder):
    table = _table(folder / "caps.csv", [("abc", 0, 1, "", "x", "")])
    with pytest.raises(ValueError, match=r"no column\(s\) \['artist'\]"):
        manifest_from_captions(table, folder / "audio", folder / "m.jsonl", group_column="artist")
