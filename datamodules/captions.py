"""A manifest from a folder of audio files and a captions table (MusicCaps-style CSV: ``ytid``, ``start_s``,
``end_s``, ``caption``, ...), with every file checked before it is written.

Each row's id names its file: ``<audio_dir>/**/<id>.<ext>`` for one of the audio extensions. Offsets and durations
are read only from the columns named for them (use them when the files are whole recordings and the table gives the
clip; leave them out when the files are already cut, as MusicCaps downloads usually are). A row without a file, an
empty caption, a repeated id or a file that does not decode is an error naming the row, unless rows without a file
are explicitly skipped.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from datamodules.manifest import ManifestItem, check_audio_files, read_manifest, read_utf8, write_manifest

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif")


def index_audio(audio_dir: Path, extensions: Sequence[str]) -> dict[str, Path]:
    """Audio files under `audio_dir` (recursively) by file stem.

    Raises:
        FileNotFoundError: `audio_dir` is not a folder.
        ValueError: two files share a stem, so an id would be ambiguous.
    """
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"Audio folder {audio_dir} not found.")
    wanted = {ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions}
    files: dict[str, Path] = {}
    for path in sorted(audio_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() in wanted:
            if path.stem in files:
                raise ValueError(f"Two audio files are named {path.stem!r}: {files[path.stem]} and {path}; ids must "
                                 "name one file each. Rename one or give a narrower --audio-dir.")
            files[path.stem] = path
    return files


def manifest_from_captions(
    captions_csv: str | os.PathLike,
    audio_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    id_column: str = "ytid",
    caption_column: str = "caption",
    group_column: str | None = None,
    offset_column: str | None = None,
    end_column: str | None = None,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    skip_missing: bool = False,
    merge_with: str | os.PathLike | None = None,
) -> list[ManifestItem]:
    """Write a JSONL manifest of the rows of `captions_csv` whose audio is in `audio_dir`; return its items.

    Args:
        captions_csv: the table, with a header row.
        audio_dir: where the audio files are, named ``<id>.<ext>`` (any sub-folder).
        out: the manifest to write (JSONL; paths relative to its folder).
        id_column: the column of item ids, which name the files.
        caption_column: the column of captions.
        group_column: a column of groups (e.g. the artist), for forgetting by group; none when not given.
        offset_column: a column of clip starts in seconds within each file; clips start at 0 when not given.
        end_column: a column of clip ends in seconds (needs `offset_column`); the clip runs to the file's end when
            not given.
        extensions: the audio file extensions to look for.
        skip_missing: leave out rows without an audio file (the count is logged) instead of failing.
        merge_with: an existing manifest (e.g. the model's training manifest) whose items come first in `out`, with
            their paths rewritten relative to `out`'s folder; an id in both is refused. `out` may be this manifest
            itself, to append to it.

    Raises:
        FileNotFoundError: the table or the folder does not exist, or rows have no audio file.
        ValueError: the table is not UTF-8 (a byte order mark is fine), a column is missing, a row has more or fewer
            cells than the header, an id or caption is empty or blank, a time is not a finite number >= 0, an id
            repeats (also across `merge_with`), a clip is empty, or a file does not decode or holds non-finite
            samples (each message names the row or file).
    """
    table = Path(captions_csv)
    if not table.is_file():
        raise FileNotFoundError(f"Captions table {table} not found.")
    if end_column and not offset_column:
        raise ValueError("end_column needs offset_column: the clip's end is only meaningful with its start.")
    files = index_audio(Path(audio_dir), extensions)
    reader = csv.DictReader(io.StringIO(read_utf8(table), newline=""))
    columns = [c for c in (id_column, caption_column, group_column, offset_column, end_column) if c]
    absent = [c for c in columns if c not in (reader.fieldnames or [])]
    if absent:
        raise ValueError(f"{table} has no column(s) {absent}; its columns: {reader.fieldnames}.")
    rows = [(reader.line_num, row) for row in reader]
    items, missing, seen = [], [], {}
    for line, row in rows:
        where = f"{table}, line {line}"
        if None in row:
            raise ValueError(f"{where}: the row has more cells than the header has columns (quote cells that hold "
                             "a comma).")
        short = [c for c in columns if row[c] is None]
        if short:
            raise ValueError(f"{where}: the row has fewer cells than the header; no value for column(s) {short}.")
        item_id = row[id_column].strip()
        if not item_id:
            raise ValueError(f"{where}: the id ({id_column}) is empty.")
        if item_id in seen:
            raise ValueError(f"{where}: id {item_id!r} repeats line {seen[item_id]}; ids must be unique.")
        seen[item_id] = line
        caption = row[caption_column].strip()
        if not caption:
            raise ValueError(f"{where}: the caption of {item_id!r} is empty or only whitespace.")
        if item_id not in files:
            missing.append(item_id)
            continue
        offset = _seconds(row, offset_column, where) if offset_column else 0.0
        duration = None
        if end_column:
            duration = _seconds(row, end_column, where) - offset
            if duration <= 0:
                raise ValueError(f"{where}: {end_column} must be after {offset_column} (clip of {duration} s).")
        items.append(ManifestItem(id=item_id, path=files[item_id].resolve(), caption=caption,
                                  group=row[group_column].strip() if group_column else "", offset=offset,
                                  duration=duration))
    if missing and not skip_missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{len(missing)} row(s) of {table} have no audio file <id>.{{{','.join(extensions)}}} "
                                f"under {audio_dir}: {shown}. Download them, or pass skip_missing to leave them out.")
    if missing:
        log.info("Left out %d row(s) of %s without an audio file.", len(missing), table)
    if not items:
        raise ValueError(f"No row of {table} has an audio file under {audio_dir}.")
    check_audio_files(items, str(table))
    if merge_with is not None:
        existing = read_manifest(merge_with)
        clashes = sorted({item.id for item in existing} & {item.id for item in items})
        if clashes:
            raise ValueError(f"{len(clashes)} id(s) of {table} are already in {merge_with}: {clashes[:10]}; give "
                             "those tracks other ids (ids name the tracks in every report).")
        log.info("Merged %d items of %s before the %d new ones.", len(existing), merge_with, len(items))
        items = existing + items
    write_manifest(items, out)
    log.info("Wrote %d items to %s.", len(items), out)
    return items


def _seconds(row: dict, column: str, where: str) -> float:
    try:
        value = float(row[column])
    except ValueError as err:
        raise ValueError(f"{where}: {column} must be a number of seconds, got {row[column]!r}.") from err
    if not math.isfinite(value):
        raise ValueError(f"{where}: {column} must be a finite number of seconds, got {row[column]!r}.")
    if value < 0:
        raise ValueError(f"{where}: {column} must be >= 0, got {value}.")
    return value
