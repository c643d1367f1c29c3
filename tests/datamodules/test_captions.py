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


@pytest.mark.ddp
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


@pytest.mark.parametrize(("start", "end", "column"), [("nan", "1", "start_s"), ("0", "inf", "end_s"),
                                                      ("-inf", "1", "start_s"), ("0", "NaN", "end_s")])
def test_a_non_finite_time_is_refused_naming_file_line_and_column(folder, start, end, column):
    table = _table(folder / "caps.csv", [("def", 0, 1, "", "fine", ""), ("abc", start, end, "", "calm", "")])
    out = folder / "m.jsonl"

    with pytest.raises(ValueError, match=rf"caps\.csv, line 3: {column} must be a finite number of seconds, "
                                         rf"got '{start if column == 'start_s' else end}'"):
        manifest_from_captions(table, folder / "audio", out, offset_column="start_s", end_column="end_s")
    assert not out.exists()


HEADER = "ytid,start_s,end_s,aspect_list,caption,author_id"
TABLE_ROWS = ["abc,0.5,1.5,[],calm piano,4", 'def,0,1,[],"fast, loud drums",7']


@pytest.mark.parametrize(("bom", "newline"), [("", "\n"), ("", "\r\n"), ("\ufeff", "\n"), ("\ufeff", "\r\n")])
def test_bom_and_line_endings_give_the_same_manifest(folder, bom, newline):
    table = folder / "caps.csv"
    table.write_bytes((bom + newline.join([HEADER, *TABLE_ROWS]) + newline).encode())

    items = manifest_from_captions(table, folder / "audio", folder / "m.jsonl", group_column="author_id",
                                   offset_column="start_s", end_column="end_s")

    assert [(i.id, i.caption, i.group, i.offset, i.duration) for i in items] == [
        ("abc", "calm piano", "4", 0.5, 1.0), ("def", "fast, loud drums", "7", 0.0, 1.0)]
    assert read_manifest(folder / "m.jsonl") == items


def test_a_table_that_is_not_utf8_names_the_line(folder):
    table = folder / "caps.csv"
    table.write_bytes("\n".join([HEADER, TABLE_ROWS[0], "def,0,1,[],caf\xe9 music,7"]).encode("latin-1"))

    with pytest.raises(ValueError, match=r"caps\.csv, line 3: not UTF-8 .*save the file as UTF-8"):
        manifest_from_captions(table, folder / "audio", folder / "m.jsonl")


@pytest.mark.parametrize(("row", "match"), [
    ("abc,0,1,[],calm piano,4,extra", r"line 2: the row has more cells than the header"),
    ("abc,0,1", r"line 2: the row has fewer cells than the header; no value for column\(s\) \['caption'\]"),
    (",0,1,[],calm piano,4", r"line 2: the id \(ytid\) is empty"),
    ("abc,0,1,[],\t ,4", r"line 2: the caption of 'abc' is empty or only whitespace"),
])
def test_malformed_rows_are_named(folder, row, match):
    table = folder / "caps.csv"
    table.write_text(f"{HEADER}\n{row}\n")

    with pytest.raises(ValueError, match=match):
        manifest_from_captions(table, folder / "audio", folder / "m.jsonl")


def test_new_tracks_merge_into_a_training_manifest_with_their_paths_rewritten(folder):
    """The own-data path: a user's tracks added to the model's training manifest, which lives elsewhere."""
    elsewhere = folder / "train" / "deep"
    elsewhere.mkdir(parents=True)
    sf.write(elsewhere / "old.wav", np.zeros(16000, dtype=np.float32), 16000)
    (elsewhere / "train.jsonl").write_text('{"id": "old", "path": "old.wav", "caption": "an old track", '
                                           '"group": "Old Band"}\n')
    table = _table(folder / "caps.csv", [("abc", 0, 1, "[]", "calm piano", "Me")])
    out = folder / "mine" / "train.jsonl"
    items = manifest_from_captions(table, folder / "audio", out, group_column="author_id",
                                   merge_with=elsewhere / "train.jsonl")

    merged = read_manifest(out)
    assert [(i.id, i.group) for i in merged] == [("old", "Old Band"), ("abc", "Me")] == [(i.id, i.group) for i in items]
    assert merged[0].path == (elsewhere / "old.wav").resolve()  # resolved from out's folder, as written there
    assert '"path": "../train/deep/old.wav"' in out.read_text()
    with pytest.raises(ValueError, match=r"1 id\(s\) of .*caps.csv are already in .*mine/train.jsonl: \['abc'\]"):
        manifest_from_captions(table, folder / "audio", out, group_column="author_id", merge_with=out)
