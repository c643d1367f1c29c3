"""Atomic writes of files and folders: a reader sees the old version or the new one, never half of one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` in one rename.

    Raises:
        FileExistsError: `target` exists and `overwrite` is False.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; delete it or choose another path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder the mode mkdir would
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode open() would
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_cache_dir() -> Path:
    """Where computed results are cached (oracle reports, FAD references, Fisher information):
    ``$TTM_UNLEARNING_CACHE``, else ``~/.cache/ttm_unlearning``."""
    return Path(os.environ.get("TTM_UNLEARNING_CACHE", Path.home() / ".cache" / "ttm_unlearning"))


def cache_key(*parts: Any) -> str:
    """A short file-name-safe hash of JSON-able `parts` (what a cached result depends on)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


FOLDER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+=-]{0,199}")


def check_folder_name(value: str, what: str) -> None:
    """Raise a ValueError naming `value` (described as `what`) unless it can name a folder on every system."""
    if not FOLDER_NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} cannot be used as a folder name: use 1-200 letters, digits or "
                         "'_ . @ + = -', not starting with '.' or '-'.")
