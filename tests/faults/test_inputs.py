"""Bad audio and manifest inputs, driven through the public entry points (`check_audio_files`, `load_audio`,
`read_manifest`, `ForgetRetainDataModule.setup`, ``scripts/make_manifest.py`` and one ``train.py fit``): each case
either loads as the signal written (after the loader's resampling and downmix, within a stated tolerance) or fails
before training with a message naming the file."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules import ForgetRetainDataModule, ManifestItem, ToyCorpus, read_manifest
from datamodules.audio import AudioTextDataset, load_audio
from datamodules.manifest import check_audio_files
from scripts.make_manifest import main as make_manifest
from tests.conftest import write_config
from tests.faults.conftest import RATE, AudioCase

pytestmark = pytest.mark.faults

CLIP = 2 * RATE  # the loader's clip length in these tests: 2 s, longer than most files, so they are padded
# Tolerances of the decoded audio against the signal written; the measured max |error| (libsndfile 1.2.2) beside each.
TOLERANCE = {
    "pcm_u8": 2 / 256,  # one 8-bit step (libsndfile truncates); measured 7.7e-3
    "pcm_24": 2 * 2**-23,  # two 24-bit steps; measured 1.2e-7
    "flac": 2**-15,  # one 16-bit step; measured 1.5e-5
    "unicode": 2**-15,  # 16-bit PCM; measured 3.0e-5
    "six_channels": 1e-6,  # float WAV, the mean of 6 channels; measured 2.4e-8
    "ten_minutes": 0.0,  # float WAV, cropped: bit-exact
    "48k_stereo": 1e-3,  # the resampling filter, 64 samples from each end left out; measured 1.0e-4
}
VORBIS_RELATIVE_L2 = 0.05  # lossy: relative L2 error of the whole clip; measured 0.013


def item(case: AudioCase, name: str, **kwargs: object) -> ManifestItem:
    return ManifestItem(name, case.path, f"a piece called {name}", **kwargs)


@pytest.mark.parametrize("name", [*TOLERANCE, "vorbis"])
def test_unusual_but_valid_files_pass_the_check_and_load_as_written(bad_inputs, name):
    case = bad_inputs[name]
    check_audio_files([item(case, name)], "the corpus")

    audio, mask = load_audio(item(case, name), RATE, CLIP)

    expected = torch.from_numpy(case.expected[:CLIP]).float()
    valid = expected.shape[0]
    assert audio.shape == mask.shape == (CLIP,)
    assert int(mask.sum()) == valid and mask[:valid].all()  # padding after the file's end is masked
    assert torch.count_nonzero(audio[valid:]) == 0
    if name == "vorbis":
        assert torch.linalg.vector_norm(audio[:valid] - expected) / torch.linalg.vector_norm(expected) < \
            VORBIS_RELATIVE_L2
        return
    edge = 64 if name == "48k_stereo" else 0  # the resampler's transient where the sines start and stop abruptly
    torch.testing.assert_close(audio[edge:valid - edge], expected[edge:valid - edge], rtol=0, atol=TOLERANCE[name])


def test_a_truncated_wav_is_refused_by_the_check_and_loaded_as_present_by_the_loader(bad_inputs):
    """A WAV whose data chunk is cut short (header: 1 s of samples, 0.5 s present): libsndfile reads it as the 0.5 s
    present, so the check compares the header's data size with the bytes there; the loader alone masks the rest as
    padding, inventing nothing."""
    case = bad_inputs["truncated"]
    assert sf.info(str(case.path)).frames == RATE // 2
    with pytest.raises(ValueError, match=rf"{re.escape(str(case.path))} \(item 't' of the corpus\) is truncated: its "
                                         rf"header declares {2 * RATE} bytes of samples, but {RATE} follow it"):
        check_audio_files([item(case, "t", offset=0.25)], "the corpus")
    audio, mask = load_audio(item(case, "t"), RATE, CLIP)
    assert int(mask.sum()) == RATE // 2 and mask[: RATE // 2].all()
    torch.testing.assert_close(audio[: RATE // 2], torch.from_numpy(case.expected).float(), rtol=0, atol=2**-15)


def test_a_ten_minute_file_is_checked_block_by_block_and_cropped_cheaply(bad_inputs):
    case = bad_inputs["ten_minutes"]
    size_mib = case.path.stat().st_size / 2**20  # 36.6 MiB of float samples
    tracemalloc.start()
    try:
        start = time.perf_counter()
        check_audio_files([item(case, "long")], "the corpus")
        check_s = time.perf_counter() - start
        check_peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.reset_peak()
        start = time.perf_counter()
        audio, mask = load_audio(item(case, "long"), RATE, CLIP)
        load_s = time.perf_counter() - start
        load_peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()

    assert check_peak_mib < size_mib / 2  # blocks of 2**20 frames; measured 12.0 MiB
    assert check_s < 5.0  # measured 0.07 s on an idle core
    assert load_peak_mib < 1.0  # only the clip is read; measured 0.19 MiB
    assert load_s < 1.0  # measured 1.5 ms
    assert mask.all()
    torch.testing.assert_close(audio, torch.from_numpy(case.expected).float(), rtol=0, atol=0)


def test_a_nan_at_the_end_of_a_ten_minute_file_is_found(bad_inputs):
    case = bad_inputs["ten_minutes_nan_at_end"]
    with pytest.raises(ValueError, match=rf"{re.escape(str(case.path))} \(item 'long' of the corpus\) holds a "
                                         r"non-finite sample \(nan\) at frame 9598400 \(599\.900 s\), channel 0"):
        check_audio_files([item(case, "long")], "the corpus")
    audio, mask = load_audio(item(case, "long"), RATE, CLIP)  # the clip at the start is finite
    assert mask.all() and torch.isfinite(audio).all()


# name -> (the error, its message from check_audio_files and load_audio: {of} is where the check names the set)
BROKEN = {
    "nan": (ValueError, r"nan\.wav \(item 'nan'{of}\) holds a non-finite sample \(nan\) at frame 3000 \(0\.18[78] s\), "
            "channel 0"),
    "pos_inf": (ValueError, r"pos_inf\.wav \(item 'pos_inf'{of}\) holds a non-finite sample \(inf\) at frame 4000 "
                r"\(0\.250 s\), channel 1"),
    "corrupt": (ValueError, r"Cannot decode .*corrupt\.wav \(item 'corrupt'{of}\): .*Malformed 'fmt ' chunk"),
    "text": (ValueError, r"Cannot decode .*text\.wav \(item 'text'{of}\): .*Format not recognised"),
}
BROKEN_FILES = [*BROKEN, "missing", "empty", "zero_frames", "truncated_flac"]


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_a_broken_file_is_named_by_the_check_and_the_loader(bad_inputs, name):
    case = bad_inputs[name]
    if name == "missing":
        with pytest.raises(FileNotFoundError, match=rf"1 audio file\(s\) of the corpus are missing:\n  "
                                                    rf"{re.escape(str(case.path))}"):
            check_audio_files([item(case, name)], "the corpus")
        with pytest.raises(ValueError, match=r"Cannot decode .*missing\.wav \(item 'missing'\)"):
            load_audio(item(case, name), RATE, CLIP)
        return
    if name == "empty":
        with pytest.raises(ValueError, match=r"empty\.wav \(item 'empty' of the corpus\) is an empty file \(0 bytes\)"):
            check_audio_files([item(case, name)], "the corpus")
        with pytest.raises(ValueError, match=r"Cannot decode .*empty\.wav \(item 'empty'\): .*Format not recognised"):
            load_audio(item(case, name), RATE, CLIP)
        return
    if name == "zero_frames":
        with pytest.raises(ValueError, match=r"zero_frames\.wav \(item 'zero_frames' of the corpus\) holds no audio"):
            check_audio_files([item(case, name)], "the corpus")
        audio, mask = load_audio(item(case, name), RATE, CLIP)  # the loader alone returns an all-padding clip
        assert not mask.any() and torch.count_nonzero(audio) == 0
        return
    if name == "truncated_flac":
        with pytest.raises(ValueError, match=r"Cannot decode .*truncated\.flac \(item 'truncated_flac' of the "
                                             r"corpus\): .*The file is corrupt or truncated"):
            check_audio_files([item(case, name)], "the corpus")
        with pytest.raises(ValueError, match=r"Cannot decode .*truncated\.flac \(item 'truncated_flac'\)"):
            load_audio(item(case, name, offset=0.75), RATE, CLIP)  # a clip in the lost half
        return
    error, message = BROKEN[name]
    with pytest.raises(error, match=message.format(of=" of the corpus")):
        check_audio_files([item(case, name)], "the corpus")
    with pytest.raises(error, match=message.format(of="")):
        AudioTextDataset([item(case, name)], RATE, CLIP)[0]


# --- manifests, through ForgetRetainDataModule.setup --------------------------------------------------------------


def rows(bad_inputs: dict[str, AudioCase]) -> list[dict]:
    """Four good items of two groups."""
    return [{"id": name, "path": str(bad_inputs[name].path), "caption": f"a piece called {name}", "group": group}
            for name, group in (("pcm_24", "A"), ("flac", "A"), ("unicode", "B"), ("six_channels", "B"))]


def write_jsonl(path: Path, lines: list[dict], newline: str = "\n", bom: str = "", last_encoding: str = "utf-8",
                **dumps: object) -> Path:
    """One JSON object a line; the last line encoded with `last_encoding` (a file of mixed encodings)."""
    text = [json.dumps(line, **dumps) + newline for line in lines]
    path.write_bytes((bom + "".join(text[:-1])).encode() + text[-1].encode(last_encoding))
    return path


def write_csv(path: Path, lines: list[dict], newline: str = "\n", bom: str = "", last_encoding: str = "utf-8") -> Path:
    """A header and one row per item; the last row encoded with `last_encoding` (a file of mixed encodings)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["id", "path", "caption", "group", "offset"], lineterminator=newline)
    writer.writeheader()
    writer.writerows(lines[:-1])
    head = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    writer.writerow(lines[-1])
    path.write_bytes((bom + head).encode() + buffer.getvalue().encode(last_encoding))
    return path


def setup(manifest: Path, **kwargs: object) -> ForgetRetainDataModule:
    dm = ForgetRetainDataModule(manifest=str(manifest), **{"forget_groups": ["A"], "sample_rate": RATE,
                                                          "num_samples": CLIP, "batch_size": 2, **kwargs})
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("style", ["jsonl crlf", "jsonl bom", "jsonl unicode unescaped", "csv crlf", "csv bom crlf"])
def test_crlf_bom_and_unicode_manifests_give_the_same_sets_and_audio(bad_inputs, tmp_path, style):
    reference = setup(write_jsonl(tmp_path / "plain.jsonl", rows(bad_inputs)))
    newline = "\r\n" if "crlf" in style else "\n"
    bom = "\ufeff" if "bom" in style else ""
    if style.startswith("csv"):
        manifest = write_csv(tmp_path / "odd.csv", rows(bad_inputs), newline, bom)
    else:
        manifest = write_jsonl(tmp_path / "odd.jsonl", rows(bad_inputs), newline, bom,
                               ensure_ascii="unescaped" not in style)

    dm = setup(manifest)

    assert dm.sets == reference.sets
    assert [i.id for i in dm.sets["retain"]] == ["unicode", "six_channels"]
    assert dm.sets["retain"][0].path.name == "♪ naïve piece.wav" and " with spaces" in str(dm.sets["retain"][0].path)
    retain = dm.split_dataset("retain", with_audio=True)
    torch.testing.assert_close(retain[0]["audio"][: RATE // 2],
                               torch.from_numpy(bad_inputs["unicode"].expected).float(), rtol=0, atol=2**-15)


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_a_broken_file_in_the_manifest_fails_setup_naming_it(bad_inputs, tmp_path, name):
    lines = [*rows(bad_inputs), {"id": name, "path": str(bad_inputs[name].path), "caption": "x", "group": "B"}]
    manifest = write_jsonl(tmp_path / "m.jsonl", lines)

    error = FileNotFoundError if name == "missing" else ValueError
    with pytest.raises(error, match=rf"{re.escape(str(bad_inputs[name].path))}"):
        setup(manifest)


@pytest.mark.parametrize(("change", "match"), [
    ("duplicate", r"m\.{ext}, line 5: id 'pcm_24' repeats line {first}"),
    ("unknown group", r"forget_groups \['Nobody'\] are not groups of .*m\.{ext}"),
    ("offset past the end", r"Item 'late' of the retain set starts at offset 5\.0 s, past the end of .*flac\.flac"),
    ("nan offset", r"m\.{ext}, line 5: `offset` must be finite, got '?(nan|NaN)'?"),
    ("latin-1", r"m\.{ext}, line 5: not UTF-8 \(byte b'\\xe9'.*save the file as UTF-8"),
    ("whitespace caption", r"m\.{ext}, line 5: key\(s\) \['caption'\] hold only whitespace"),
])
@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_a_bad_manifest_fails_setup_naming_file_and_line(bad_inputs, tmp_path, change, match, ext):
    lines = rows(bad_inputs)
    extra = {"id": "late", "path": str(bad_inputs["flac"].path), "caption": "a late piece", "group": "B"}
    kwargs: dict = {}
    if change == "duplicate":
        extra["id"] = "pcm_24"
    elif change == "unknown group":
        kwargs["forget_groups"] = ["Nobody"]
    elif change == "offset past the end":
        extra["offset"] = 5.0  # the file lasts 0.5 s
    elif change == "nan offset":
        extra["offset"] = float("nan")  # JSON: the literal NaN; CSV: the cell "nan"
    elif change == "latin-1":
        extra["caption"] = "un morceau d'été"
    elif change == "whitespace caption":
        extra["caption"] = " \t "
    lines.append(extra)
    encoding = "latin-1" if change == "latin-1" else "utf-8"  # the bad item's line only
    # The CSV has a header line, so the fifth item is on line 6.
    if ext == "jsonl":
        manifest = write_jsonl(tmp_path / "m.jsonl", lines, last_encoding=encoding, ensure_ascii=False)
        first, pattern = 1, match
    else:
        manifest = write_csv(tmp_path / "m.csv", lines, last_encoding=encoding)
        first, pattern = 2, match.replace("line 5", "line 6")

    with pytest.raises(ValueError, match=pattern.format(ext=ext, first=first)):
        setup(manifest, **kwargs)


# --- the converter: scripts/make_manifest.py ----------------------------------------------------------------------

HEADER = "ytid,start_s,end_s,aspect_list,caption,author_id"


@pytest.fixture
def audio_dir(bad_inputs, tmp_path) -> Path:
    folder = tmp_path / "audio"
    folder.mkdir()
    shutil.copy(bad_inputs["flac"].path, folder / "abc.flac")
    shutil.copy(bad_inputs["pcm_24"].path, folder / "def.wav")
    shutil.copy(bad_inputs["nan"].path, folder / "poisoned.wav")
    return folder


def convert(table: Path, audio_dir: Path, out: Path) -> list[ManifestItem]:
    make_manifest(["--captions", str(table), "--audio-dir", str(audio_dir), "--out", str(out), "--group-column",
                   "author_id", "--offset-column", "start_s", "--end-column", "end_s"])
    return read_manifest(out)


@pytest.mark.parametrize(("bom", "newline"), [("\ufeff", "\n"), ("", "\r\n"), ("\ufeff", "\r\n")])
def test_the_converter_reads_bom_and_crlf_tables_as_plain_ones(audio_dir, tmp_path, bom, newline):
    lines = [HEADER, "abc,0,0.25,[],calm piano,4", 'def,0.1,0.3,[],"fast, loud",7']
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    odd = tmp_path / "odd.csv"
    odd.write_bytes((bom + newline.join(lines) + newline).encode())

    items = convert(odd, audio_dir, tmp_path / "odd.jsonl")

    assert items == convert(plain, audio_dir, tmp_path / "plain.jsonl")
    assert [(i.id, i.caption, i.group, i.offset, i.duration) for i in items] == [
        ("abc", "calm piano", "4", 0.0, 0.25), ("def", "fast, loud", "7", 0.1, pytest.approx(0.2))]


@pytest.mark.parametrize(("row", "encoding", "match"), [
    ("abc,nan,1,[],calm,4", "utf-8", r"caps\.csv, line 3: start_s must be a finite number of seconds, got 'nan'"),
    ("abc,0,inf,[],calm,4", "utf-8", r"caps\.csv, line 3: end_s must be a finite number of seconds, got 'inf'"),
    ("abc,0,1,[],café,4", "latin-1", r"caps\.csv, line 3: not UTF-8 .*save the file as UTF-8"),
    ("abc,0,1,[], \t ,4", "utf-8", r"caps\.csv, line 3: the caption of 'abc' is empty or only whitespace"),
    ("poisoned,0,0.5,[],noise,4", "utf-8", r"poisoned\.wav \(item 'poisoned' of .*caps\.csv\) holds a non-finite"),
])
def test_the_converter_names_file_and_line_of_a_bad_row(audio_dir, tmp_path, row, encoding, match):
    table = tmp_path / "caps.csv"
    table.write_bytes(f"{HEADER}\ndef,0,0.5,[],fine,7\n{row}\n".encode(encoding))
    out = tmp_path / "m.jsonl"

    with pytest.raises(ValueError, match=match):
        convert(table, audio_dir, out)
    assert not out.exists()  # nothing written that the reader would refuse


# --- end to end ---------------------------------------------------------------------------------------------------


def test_fit_with_a_nan_wav_in_the_corpus_fails_before_training_naming_it(tmp_path, tiny_corpus, tiny_model_dir):
    from train import main

    root = Path(shutil.copytree(tiny_corpus.root, tmp_path / "toy"))
    corpus = ToyCorpus(root=str(root), num_artists=len(tiny_corpus.artists))
    poisoned = next(i for i in read_manifest(corpus.train_manifest) if i.group != corpus.artists[0])  # in retain
    clip, rate = sf.read(poisoned.path, dtype="float32")
    clip[100] = np.nan
    sf.write(poisoned.path, clip, rate, subtype="FLOAT")
    config = write_config(tmp_path / "run", corpus, tiny_model_dir)

    with pytest.raises(ValueError, match=rf"{re.escape(str(poisoned.path))} \(item {poisoned.id!r} of the retain "
                                         r"set\) holds a non-finite sample \(nan\) at frame 100"):
        main(["fit", "--config", str(config)])
    assert not list((tmp_path / "run").rglob("*.ckpt")) and not list((tmp_path / "run").rglob("results.json"))
