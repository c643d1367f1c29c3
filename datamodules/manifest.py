"""Manifests: the list of audio files, captions and groups (artists) that every DataModule reads.

A manifest is JSONL (one object per line) or CSV with the keys ``id``, ``path`` and ``caption``, and optionally
``group`` (such as the artist), ``offset`` and ``duration`` in seconds. Relative paths are relative to the manifest's
folder. Ids are unique and stable: metrics, caches and attribution scores are keyed by them. Manifests are UTF-8 (a
byte order mark and CRLF line ends are fine). Every error names the manifest, the line and the key.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from lightning_modules.io import check_folder_name, write_text_atomic

REQUIRED_KEYS = ("id", "path", "caption")
OPTIONAL_KEYS = ("group", "offset", "duration")
# Subtypes whose samples can be NaN or infinite, so `check_audio_files` reads their samples. Integer PCM (WAV, FLAC,
# AIFF) cannot hold them, and the lossy codecs (Vorbis, Opus, MP3) decode integer-quantised data: libsndfile's Vorbis
# encoder turns NaN input into silence and its MP3 encoder aborts on it. `load_audio` still checks every clip it reads.
FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
CHECK_BLOCK_FRAMES = 1 << 20  # frames per block when `check_audio_files` reads samples (4 MiB per channel)


@dataclass(frozen=True)
class ManifestItem:
    """One training or evaluation track."""

    id: str
    path: Path
    caption: str
    group: str = ""
    offset: float = 0.0
    duration: float | None = None


def read_utf8(path: Path) -> str:
    """The text of `path` decoded as UTF-8, a leading byte order mark dropped, line endings kept as they are.

    Raises:
        ValueError: the bytes are not UTF-8, naming the file and the line of the first bad byte.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 (byte {data[err.start:err.start + 1]!r} at offset "
                         f"{err.start}: {err.reason}); save the file as UTF-8.") from err


def check_finite(data: np.ndarray, first_frame: int, sample_rate: int, item: ManifestItem, what: str = "") -> None:
    """Refuse audio holding NaN or infinite samples.

    Args:
        data: `(frames, channels)` samples read from the item's file.
        first_frame: the file's frame index of `data[0]`, so the message gives the position in the file.
        sample_rate: the file's sample rate in Hz.
        item: the item the samples belong to, named in the message.
        what: names the set in the message (e.g. the manifest path); nothing when empty.

    Raises:
        ValueError: naming the file, the item, the first bad sample (frame index, seconds, channel) and its value.
    """
    finite = np.isfinite(data)
    if finite.all():
        return
    frame, channel = (int(i) for i in np.argwhere(~finite)[0])
    index = first_frame + frame
    of = f" of {what}" if what else ""
    raise ValueError(f"{item.path} (item {item.id!r}{of}) holds a non-finite sample ({data[frame, channel]}) at "
                     f"frame {index} ({index / sample_rate:.3f} s), channel {channel}: the file is corrupt. Re-export "
                     "it or remove the item from the manifest.")


def _parse_row(row: dict, manifest: Path, line: int) -> ManifestItem:
    where = f"{manifest}, line {line}"
    if None in row:
        raise ValueError(f"{where}: the row has more cells than the header has columns.")
    missing = [key for key in REQUIRED_KEYS if row.get(key) in (None, "")]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; every item needs {list(REQUIRED_KEYS)}.")
    blank = [key for key in REQUIRED_KEYS if not str(row[key]).strip()]
    if blank:
        raise ValueError(f"{where}: key(s) {blank} hold only whitespace; every item needs a non-blank "
                         f"{' and '.join(blank)}.")
    unknown = set(row) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown, key=str)}; allowed: "
                         f"{list(REQUIRED_KEYS + OPTIONAL_KEYS)}.")
    numbers: dict[str, float | None] = {}
    for key in ("offset", "duration"):
        value = row.get(key)
        if isinstance(value, bool):
            raise ValueError(f"{where}: `{key}` must be a number of seconds, got {value!r}.")
        try:
            numbers[key] = None if value in (None, "") else float(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: `{key}` must be a number of seconds, got {value!r}.") from err
        if numbers[key] is not None and not math.isfinite(numbers[key]):
            raise ValueError(f"{where}: `{key}` must be finite, got {value!r}.")
    if numbers["offset"] is not None and numbers["offset"] < 0:
        raise ValueError(f"{where}: `offset` must be >= 0, got {numbers['offset']}.")
    if numbers["duration"] is not None and numbers["duration"] <= 0:
        raise ValueError(f"{where}: `duration` must be positive, got {numbers['duration']}.")
    path = Path(os.path.expanduser(str(row["path"])))
    return ManifestItem(
        id=str(row["id"]),
        path=path if path.is_absolute() else Path(os.path.normpath(manifest.parent / path)),
        caption=str(row["caption"]),
        group=str(row.get("group") or ""),
        offset=numbers["offset"] or 0.0,
        duration=numbers["duration"],
    )


def read_manifest(path: str | os.PathLike) -> list[ManifestItem]:
    """Read a JSONL or CSV manifest.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: the file is not UTF-8 (a byte order mark is fine), a line is malformed, a key is missing, blank
            or unknown, a time is not a finite number, or an id repeats.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"Manifest {manifest} not found (relative paths are taken from {Path.cwd()}).")
    rows: list[tuple[int, dict]] = []
    content = read_utf8(manifest)
    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(content, newline=""))
        rows = [(reader.line_num, row) for row in reader]
    else:
        # Lines end at "\n" (or "\r\n") only: JSON strings may hold U+2028 and other characters that
        # str.splitlines would also split at.
        for n, text in enumerate(content.split("\n"), start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{manifest}, line {n}: not valid JSON ({err.msg}).") from err
            if not isinstance(row, dict):
                raise ValueError(f"{manifest}, line {n}: expected a JSON object, got {type(row).__name__}.")
            rows.append((n, row))
    items = [_parse_row(row, manifest, n) for n, row in rows]
    seen: dict[str, int] = {}
    for (n, _), item in zip(rows, items, strict=True):
        if item.id in seen:
            raise ValueError(f"{manifest}, line {n}: id {item.id!r} repeats line {seen[item.id]}; ids must be unique.")
        seen[item.id] = n
    return items


def write_manifest(items: Iterable[ManifestItem], path: str | os.PathLike) -> None:
    """Write `items` as JSONL atomically, with paths relative to the manifest's folder where possible."""
    target = Path(path)
    lines = []
    for item in items:
        row: dict = {"id": item.id, "path": os.path.relpath(item.path, target.parent), "caption": item.caption}
        if item.group:
            row["group"] = item.group
        if item.offset:
            row["offset"] = item.offset
        if item.duration is not None:
            row["duration"] = item.duration
        lines.append(json.dumps(row) + "\n")
    write_text_atomic(target, "".join(lines))


def check_audio_files(items: Sequence[ManifestItem], what: str) -> None:
    """Check, before any training starts, that every file exists and decodes to the end of the item's clip (from its
    offset to its end, or to the file's end), and that no float file holds NaN or infinite samples in the clip.

    Float files (`FLOAT_SUBTYPES`) are read through the clip in blocks of `CHECK_BLOCK_FRAMES` frames; other files,
    which cannot hold NaN, are only read at the clip's last frame, which finds a truncated FLAC (its header states
    the full length). libsndfile takes a WAV's length from the file size, so a WAV's ``data`` chunk is compared with
    the bytes that follow it (`_wav_shortfall`) to find a truncated one.

    Args:
        items: the items to check.
        what: names the set in the error message (e.g. the manifest path).

    Raises:
        FileNotFoundError: listing every missing file.
        ValueError: naming the first file that is empty, that soundfile cannot decode, that holds no audio, whose item
            starts past its end, that ends before its header says, or that holds a non-finite sample (with its
            position).
    """
    missing = [str(item.path) for item in items if not item.path.is_file()]
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise FileNotFoundError(f"{len(missing)} audio file(s) of {what} are missing:\n  {shown}")
    for item in items:
        if item.path.stat().st_size == 0:
            raise ValueError(f"{item.path} (item {item.id!r} of {what}) is an empty file (0 bytes): download or export "
                             "it again, or remove the item.")
        try:
            with sf.SoundFile(str(item.path)) as f:
                _check_clip(f, item, what)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise ValueError(f"Cannot decode {item.path} (item {item.id!r} of {what}): {str(err).rstrip('.')}. The "
                             "file is corrupt or truncated: download or export it again, or remove the item.") from err


def _check_clip(f: sf.SoundFile, item: ManifestItem, what: str) -> None:
    """Read the item's clip of the open file `f` as `check_audio_files` says."""
    if f.frames == 0:
        raise ValueError(f"{item.path} (item {item.id!r} of {what}) holds no audio.")
    if f.format in ("WAV", "WAVEX"):
        shortfall = _wav_shortfall(item.path)
        if shortfall is not None:
            declared, present = shortfall
            raise ValueError(f"{item.path} (item {item.id!r} of {what}) is truncated: its header declares {declared} "
                             f"bytes of samples, but {present} follow it. Download or export it again, or remove the "
                             "item.")
    if item.offset >= f.frames / f.samplerate:
        raise ValueError(f"Item {item.id!r} of {what} starts at offset {item.offset} s, past the end of "
                         f"{item.path} ({f.frames / f.samplerate:.3f} s).")
    start = min(round(item.offset * f.samplerate), f.frames - 1)
    stop = f.frames if item.duration is None else min(f.frames, start + max(1, round(item.duration * f.samplerate)))
    if f.subtype in FLOAT_SUBTYPES:
        f.seek(start)
        position = start
        for block in f.blocks(blocksize=CHECK_BLOCK_FRAMES, frames=stop - start, dtype="float32", always_2d=True):
            check_finite(block, position, f.samplerate, item, what)
            position += block.shape[0]
    else:
        f.seek(stop - 1)
        position = stop - 1 + f.read(1, dtype="float32", always_2d=True).shape[0]
    if position < stop:
        raise ValueError(f"{item.path} (item {item.id!r} of {what}) ends at {position / f.samplerate:.3f} s, before "
                         f"the {f.frames / f.samplerate:.3f} s its header states: the file is truncated. Download or "
                         "export it again, or remove the item.")


def _wav_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes its ``data`` chunk declares, bytes present after it) of a RIFF WAV cut short, else None. A size of 0 or
    0xFFFFFFFF (written by streaming encoders that never went back to fill it in) states nothing and passes."""
    with open(path, "rb") as file:
        header = file.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None  # RIFX (big-endian) and RF64 headers: leave them to libsndfile
        while len(chunk := file.read(8)) == 8:
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                present = path.stat().st_size - file.tell()
                return (size, present) if 0 < size < 0xFFFFFFFF and present < size else None
            file.seek(size + size % 2, os.SEEK_CUR)  # chunks are padded to an even size
    return None


def read_queries(path: str | os.PathLike) -> list[ManifestItem]:
    """The generated pieces to attribute, from a manifest: at least one, ids usable as folder names (each query's
    results go to ``<out_dir>/<query id>/``), every audio file readable.

    Raises:
        FileNotFoundError, ValueError: as `read_manifest` and `check_audio_files`, or no item, or an id that cannot
            name a folder.
    """
    queries = read_manifest(path)
    if not queries:
        raise ValueError(f"The queries manifest {path} lists no item; give at least one generated piece to attribute.")
    for item in queries:
        check_folder_name(item.id, f"Query id (in {path})")
    check_audio_files(queries, path)
    return queries
