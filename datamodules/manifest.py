"""Manifests: the list of audio files, captions and groups (artists) that every DataModule reads.

A manifest is JSONL (one object per line) or CSV with the keys ``id``, ``path`` and ``caption``, and optionally
``group`` (such as the artist), ``offset`` and ``duration`` in seconds. Relative paths are relative to the manifest's
folder. Ids are unique and stable: metrics, caches and attribution scores are keyed by them. Every error names the
manifest, the line and the key.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from lightning_modules.io import check_folder_name, write_text_atomic

REQUIRED_KEYS = ("id", "path", "caption")
OPTIONAL_KEYS = ("group", "offset", "duration")


@dataclass(frozen=True)
class ManifestItem:
    """One training or evaluation track."""

    id: str
    path: Path
    caption: str
    group: str = ""
    offset: float = 0.0
    duration: float | None = None


def _parse_row(row: dict, manifest: Path, line: int) -> ManifestItem:
    where = f"{manifest}, line {line}"
    if None in row:
        raise ValueError(f"{where}: the row has more cells than the header has columns.")
    missing = [key for key in REQUIRED_KEYS if row.get(key) in (None, "")]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; every item needs {list(REQUIRED_KEYS)}.")
    unknown = set(row) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown, key=str)}; allowed: "
                         f"{list(REQUIRED_KEYS + OPTIONAL_KEYS)}.")
    numbers: dict[str, float | None] = {}
    for key in ("offset", "duration"):
        value = row.get(key)
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
        ValueError: a line is malformed, a key is missing or unknown, or an id repeats.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"Manifest {manifest} not found (relative paths are taken from {Path.cwd()}).")
    rows: list[tuple[int, dict]] = []
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]
    else:
        for n, text in enumerate(manifest.read_text().splitlines(), start=1):
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
    """Check that every file exists and can be decoded, before any training starts.

    Args:
        items: the items to check.
        what: names the set in the error message (e.g. the manifest path).

    Raises:
        FileNotFoundError: listing every missing file.
        ValueError: naming the first file soundfile cannot decode.
    """
    missing = [str(item.path) for item in items if not item.path.is_file()]
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise FileNotFoundError(f"{len(missing)} audio file(s) of {what} are missing:\n  {shown}")
    for item in items:
        try:
            info = sf.info(str(item.path))
        except (sf.LibsndfileError, RuntimeError) as err:
            raise ValueError(f"Cannot decode {item.path} (item {item.id!r} of {what}): {err}") from err
        if info.frames == 0:
            raise ValueError(f"{item.path} (item {item.id!r} of {what}) holds no audio.")
        if item.offset >= info.duration:
            raise ValueError(f"Item {item.id!r} of {what} starts at offset {item.offset} s, past the end of "
                             f"{item.path} ({info.duration:.3f} s).")


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
