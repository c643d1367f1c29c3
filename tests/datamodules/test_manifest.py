"""Manifests: reading JSONL and CSV, the errors that name the manifest and line, writing, and the audio file check."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from datamodules import manifest as manifest_module
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


def write_float_wav(path: Path, data: np.ndarray, subtype: str = "FLOAT", sample_rate: int = 16000) -> Path:
    """`data` (frames,) or (frames, channels) as a float WAV, NaN and infinities kept."""
    sf.write(path, data, sample_rate, subtype=subtype)
    return path


@pytest.mark.parametrize(("subtype", "value"), [("FLOAT", np.nan), ("FLOAT", np.inf), ("DOUBLE", -np.inf)])
def test_check_audio_files_names_the_first_non_finite_sample(tmp_path, subtype, value):
    data = np.zeros((16000, 2))
    data[12000, 0] = value  # a later bad sample is not the one named
    data[8000, 1] = value
    bad = write_float_wav(tmp_path / "bad.wav", data, subtype)
    good = write_float_wav(tmp_path / "good.wav", np.zeros(1600))

    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))} \(item 'b' of train\.jsonl\) holds a non-finite "
                                         rf"sample \({value}\) at frame 8000 \(0\.500 s\), channel 1"):
        check_audio_files([ManifestItem("ok", good, "c"), ManifestItem("b", bad, "c")], "train.jsonl")


def test_check_audio_files_reads_in_blocks_and_names_the_frame_in_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_module, "CHECK_BLOCK_FRAMES", 1000)
    data = np.zeros(16000, dtype=np.float32)
    data[2500] = np.nan  # in the third block
    bad = write_float_wav(tmp_path / "bad.wav", data)

    with pytest.raises(ValueError, match=r"at frame 2500 \(0\.156 s\), channel 0"):
        check_audio_files([ManifestItem("b", bad, "c")], "x")
    with pytest.raises(ValueError, match=r"at frame 2500 "):  # the clip starts at 0.1 s: frames count from the file
        check_audio_files([ManifestItem("b", bad, "c", offset=0.1)], "x")


def test_check_audio_files_looks_only_at_the_clip(tmp_path):
    data = np.zeros(16000, dtype=np.float32)
    data[[100, 9000]] = np.nan  # before the clip and after it
    path = write_float_wav(tmp_path / "partly.wav", data)

    check_audio_files([ManifestItem("clip", path, "c", offset=0.25, duration=0.25)], "x")  # frames 4000-7999: fine
    with pytest.raises(ValueError, match="at frame 9000"):
        check_audio_files([ManifestItem("rest", path, "c", offset=0.25)], "x")  # to the end of the file


def test_only_float_files_are_read_block_by_block(tmp_path, monkeypatch):
    pcm = write_wav(tmp_path / "pcm.wav")  # PCM_16: cannot hold NaN
    assert sf.info(str(pcm)).subtype == "PCM_16"
    floats = write_float_wav(tmp_path / "float.wav", np.zeros(1600))

    def no_blocks(*args, **kwargs):
        raise AssertionError("read block by block")

    monkeypatch.setattr(sf.SoundFile, "blocks", no_blocks)
    check_audio_files([ManifestItem("p", pcm, "c")], "x")
    with pytest.raises(AssertionError, match="read block by block"):
        check_audio_files([ManifestItem("f", floats, "c")], "x")


def test_a_truncated_flac_or_wav_is_refused(tmp_path):
    signal = 0.4 * np.sin(np.arange(32000) / 10)
    for name in ("whole.flac", "whole.wav"):
        sf.write(tmp_path / name, signal, 16000, subtype="PCM_16")
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut{Path(name).suffix}").write_bytes(data[: len(data) // 2])
    cut_flac, cut_wav = tmp_path / "cut.flac", tmp_path / "cut.wav"
    assert sf.info(str(cut_flac)).frames == 32000  # the FLAC header still states 2 s

    with pytest.raises(ValueError, match=rf"Cannot decode {re.escape(str(cut_flac))} \(item 'f' of x\): .*corrupt or "
                                         "truncated"):
        check_audio_files([ManifestItem("f", cut_flac, "c")], "x")
    check_audio_files([ManifestItem("f", cut_flac, "c", duration=0.5)], "x")  # the clip's 0.5 s are intact
    assert sf.info(str(cut_wav)).frames == 15989  # libsndfile: the frames present ((32022 - 44) / 2)
    with pytest.raises(ValueError, match=rf"{re.escape(str(cut_wav))} \(item 'w' of x\) is truncated: its header "
                                         "declares 64000 bytes of samples, but 31978 follow it"):
        check_audio_files([ManifestItem("w", cut_wav, "c")], "x")
    check_audio_files([ManifestItem("w", tmp_path / "whole.wav", "c")], "x")  # the whole file passes


ROWS = [{"id": "a", "path": "a.wav", "caption": "a calm piece", "group": "g", "offset": 0.5},
        {"id": "b", "path": "b.wav", "caption": "fast, loud"}]
CSV_TEXT = 'id,path,caption,group,offset\na,a.wav,a calm piece,g,0.5\nb,b.wav,"fast, loud",,\n'


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize(("bom", "newline"), [("\ufeff", "\n"), ("", "\r\n"), ("\ufeff", "\r\n")])
def test_a_byte_order_mark_and_crlf_give_the_same_items(tmp_path, suffix, bom, newline):
    text = CSV_TEXT if suffix == ".csv" else "".join(json.dumps(row) + "\n" for row in ROWS)
    plain = tmp_path / f"plain{suffix}"
    plain.write_bytes(text.encode())
    odd = tmp_path / f"odd{suffix}"
    odd.write_bytes((bom + text.replace("\n", newline)).encode())

    items = read_manifest(odd)

    assert items == read_manifest(plain)
    assert [(i.id, i.caption, i.group, i.offset) for i in items] == [("a", "a calm piece", "g", 0.5),
                                                                       ("b", "fast, loud", "", 0.0)]


@pytest.mark.parametrize(("suffix", "text", "line"), [
    (".jsonl", '{"id": "a", "path": "a.wav", "caption": "c"}\n{"id": "b", "path": "b.wav", "caption": "caf\xe9"}\n',
     2),
    (".csv", "id,path,caption\r\na,a.wav,c\r\nb,b.wav,caf\xe9\r\n", 3),
])
def test_a_file_that_is_not_utf8_names_the_line(tmp_path, suffix, text, line):
    manifest = tmp_path / f"m{suffix}"
    manifest.write_bytes(text.encode("latin-1"))

    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}, line {line}: not UTF-8 \(byte b'\\xe9'.*"
                                         "save the file as UTF-8"):
        read_manifest(manifest)


def test_whitespace_only_caption_is_refused_in_jsonl_and_csv(tmp_path):
    jsonl = write_jsonl(tmp_path / "m.jsonl", [GOOD, {"id": "b", "path": "b.wav", "caption": " \t "}])
    csv_manifest = tmp_path / "m.csv"
    csv_manifest.write_text("id,path,caption\na,a.wav,c\nb,b.wav,   \n")

    for manifest in (jsonl, csv_manifest):
        with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}, line \d: key\(s\) \['caption'\] hold only "
                                             "whitespace"):
            read_manifest(manifest)


@pytest.mark.parametrize(("literal", "key"), [("NaN", "offset"), ("Infinity", "offset"), ("-Infinity", "duration")])
def test_json_nan_and_infinity_literals_are_refused(tmp_path, literal, key):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(GOOD) + f'\n{{"id": "b", "path": "b.wav", "caption": "c", "{key}": {literal}}}\n')

    with pytest.raises(ValueError, match=rf"m\.jsonl, line 2: `{key}` must be finite, got -?(nan|inf)"):
        read_manifest(manifest)


def test_csv_nan_offset_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,caption,offset\na,a.wav,c,0\nb,b.wav,c,nan\n")
    with pytest.raises(ValueError, match=r"m\.csv, line 3: `offset` must be finite, got 'nan'"):
        read_manifest(manifest)


def test_a_boolean_time_is_refused(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{**GOOD, "offset": True}])
    with pytest.raises(ValueError, match=r"line 1: `offset` must be a number of seconds, got True"):
        read_manifest(manifest)


def test_json_lines_split_only_at_newlines(tmp_path):
    manifest = tmp_path / "m.jsonl"  # U+2028 and U+0085 are legal inside JSON strings; str.splitlines splits there
    manifest.write_text('{"id": "a", "path": "a.wav", "caption": "one\u2028two\x85three"}\n', encoding="utf-8")

    assert [item.caption for item in read_manifest(manifest)] == ["one\u2028two\x85three"]
