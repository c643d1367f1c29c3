"""Manifests: reading JSONL and CSV, the errors that name the manifest and line, writing, and the audio file check."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from datamodules.manifest import ManifestItem, check_audio_files, read_manifest, write_manifest


def write_jsonl(path: Path, rows: list) -> Path:
    """One JSON value per line; a None row writes a blank line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\n" if row is None else json.dumps(row) + "\n" for row in rows))
    return path


def write_wav(path: Path, num_frames: int = 1600, sample_rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(num_frames, dtype=np.float32), sample_rate)
    return path


def test_read_jsonl_resolves_paths_parses_optional_keys_and_skips_blank_lines(tmp_path):
    manifest = write_jsonl(tmp_path / "sets" / "train.jsonl", [
        {"id": "a", "path": "audio/a.wav", "caption": "a calm piece"},
        None,
        {"id": "b", "path": "/abs/b.wav", "caption": "a fast piece", "group": "Aurora Vale", "offset": 1.5,
         "duration": 2},
        None,
    ])

    items = read_manifest(manifest)

    assert items == [
        ManifestItem("a", tmp_path / "sets" / "audio" / "a.wav", "a calm piece"),
        ManifestItem("b", Path("/abs/b.wav"), "a fast piece", group="Aurora Vale", offset=1.5, duration=2.0),
    ]
    assert items[0].group == "" and items[0].offset == 0.0 and items[0].duration is None


def test_read_csv_parses_numbers_and_treats_empty_cells_as_absent(tmp_path):
    manifest = tmp_path / "sets" / "train.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "id,path,caption,group,offset,duration\n"
        "a,audio/a.wav,\"a piece, with a comma\",Copper Lanterns,0.25,1.0\n"
        "b,b.wav,plain,,,\n"
    )

    items = read_manifest(manifest)

    assert items == [
        ManifestItem("a", tmp_path / "sets" / "audio" / "a.wav", "a piece, with a comma", "Copper Lanterns", 0.25, 1.0),
        ManifestItem("b", tmp_path / "sets" / "b.wav", "plain"),
    ]


def test_missing_manifest_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_manifest(tmp_path / "nope.jsonl")


def test_bad_json_line_names_file_and_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "path": "a.wav", "caption": "c"}\n\n{"id": "b", oops}\n')

    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}, line 3: not valid JSON"):
        read_manifest(manifest)


def test_json_line_that_is_not_an_object_is_an_error(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [["a", "a.wav", "c"]])

    with pytest.raises(ValueError, match="line 1: expected a JSON object, got list"):
        read_manifest(manifest)


GOOD = {"id": "a", "path": "a.wav", "caption": "c"}


@pytest.mark.parametrize(("row", "message"), [
    ({"id": "b", "path": "b.wav"}, r"line 2: missing key\(s\) \['caption'\]"),
    ({"id": "b", "path": "", "caption": "c"}, r"line 2: missing key\(s\) \['path'\]"),
    ({"id": "b", "path": "b.wav", "caption": "c", "artist": "x"}, r"line 2: unknown key\(s\) \['artist'\]"),
    ({"id": "b", "path": "b.wav", "caption": "c", "offset": "soon"}, r"line 2: `offset` must be a number.*'soon'"),
    ({"id": "b", "path": "b.wav", "caption": "c", "duration": -1}, r"line 2: `duration` must be positive, got -1"),
    ({"id": "b", "path": "b.wav", "caption": "c", "duration": 0}, r"line 2: `duration` must be positive"),
    ({"id": "b", "path": "b.wav", "caption": "c", "duration": "nan"}, r"line 2: `duration` must be finite"),
    ({"id": "b", "path": "b.wav", "caption": "c", "duration": "inf"}, r"line 2: `duration` must be finite"),
    ({"id": "b", "path": "b.wav", "caption": "c", "offset": -1.0}, r"line 2: `offset`"),
])
def test_malformed_item_names_manifest_line_and_key(tmp_path, row, message):
    manifest = write_jsonl(tmp_path / "m.jsonl", [GOOD, row])

    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}, {message}"):
        read_manifest(manifest)


def test_malformed_csv_cell_names_the_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,caption,offset\na,a.wav,c,0\nb,b.wav,c,later\n")

    with pytest.raises(ValueError, match=r"m\.csv, line 3: `offset` must be a number"):
        read_manifest(manifest)


def test_duplicate_id_names_both_lines(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [GOOD, {**GOOD, "id": "b"}, None, {**GOOD, "path": "other.wav"}])

    with pytest.raises(ValueError, match=r"line 4: id 'a' repeats line 1"):
        read_manifest(manifest)


def test_write_then_read_round_trips_with_relative_paths(tmp_path):
    folder = tmp_path / "sets"
    items = [
        ManifestItem("a", folder / "audio" / "a.wav", "first", group="Aurora Vale"),
        ManifestItem("b", folder / "b.wav", "second", offset=0.5, duration=1.25),
        ManifestItem("c", folder / "audio" / "c.wav", "third"),
    ]
    manifest = folder / "train.jsonl"

    write_manifest(items, manifest)

    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [row["path"] for row in rows] == ["audio/a.wav", "b.wav", "audio/c.wav"]
    assert rows[2] == {"id": "c", "path": "audio/c.wav", "caption": "third"}  # defaults are not written
    assert read_manifest(manifest) == items
    assert list(folder.iterdir()) == [manifest]  # no temporary file left behind


def test_check_audio_files_lists_every_missing_file(tmp_path):
    present = write_wav(tmp_path / "present.wav")
    items = [ManifestItem("p", present, "c"), ManifestItem("m1", tmp_path / "gone1.wav", "c"),
             ManifestItem("m2", tmp_path / "sub" / "gone2.wav", "c")]

    with pytest.raises(FileNotFoundError, match=r"2 audio file\(s\) of the test set are missing") as info:
        check_audio_files(items, "the test set")

    message = str(info.value)
    assert str(tmp_path / "gone1.wav") in message and str(tmp_path / "sub" / "gone2.wav") in message
    assert "present.wav" not in message


def test_check_audio_files_names_an_undecodable_file(tmp_path):
    good = write_wav(tmp_path / "good.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not a RIFF file" * 20)

    with pytest.raises(ValueError, match=rf"Cannot decode {re.escape(str(garbage))} \(item 'g' of train\.jsonl\)"):
        check_audio_files([ManifestItem("ok", good, "c"), ManifestItem("g", garbage, "c")], "train.jsonl")


def test_check_audio_files_rejects_an_empty_file_and_accepts_good_ones(tmp_path):
    good = write_wav(tmp_path / "good.wav")
    check_audio_files([ManifestItem("ok", good, "c")], "x")  # no error

    empty = write_wav(tmp_path / "empty.wav", num_frames=0)
    with pytest.raises(ValueError, match="empty.wav.*holds no audio"):
        check_audio_files([ManifestItem("e", empty, "c")], "x")


def test_csv_error_names_the_file_line_after_blank_lines(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,caption\na,a.wav,c\n\n\nb,,c\n")  # the bad row is on line 5

    with pytest.raises(ValueError, match=r"m\.csv, line 5: missing key"):
        read_manifest(manifest)


def test_csv_row_with_more_cells_than_the_header(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,caption,artist\na,a.wav,c,x,extra\n")
    with pytest.raises(ValueError, match=r"line 2: the row has more cells"):
        read_manifest(manifest)


def test_offset_past_the_end_of_the_file_is_refused(tmp_path):
    good = write_wav(tmp_path / "good.wav", num_frames=1600)  # 0.1 s
    with pytest.raises(ValueError, match=r"offset 0.5 s, past the end"):
        check_audio_files([ManifestItem("late", good, "c", offset=0.5)], "x")


def test_written_manifest_is_readable_by_others(tmp_path):
    write_manifest([ManifestItem("a", tmp_path / "a.wav", "c")], tmp_path / "m.jsonl")
    assert (tmp_path / "m.jsonl").stat().st_mode & 0o044
