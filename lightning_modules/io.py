"""Atomic writes of files and folders: a reader sees the old version or the new one, never half of one; and verified
files, which carry a SHA-256 digest so that a reader refuses a changed, truncated or half-written file by name.

A verified file ``x.pt`` (or ``x.json``) has its digest in the sidecar ``x.pt.sha256`` (``sha256sum`` format, so
``sha256sum -c`` checks it too). The file keeps its plain format (``torch.load`` or ``json.load`` still read it). The
digest is written (atomically) just before the file: a crash or a later change leaves a file whose digest is missing or
wrong, never a trusted bad one, and processes writing the same content at once (DDP ranks recording one recipe) never
show a reader a file without its digest. Each kind's owner states the structure its loaded data must have
(`TensorField`, `TensorMapField`, `StrListField`, or a type, per key), including finiteness where it must be finite.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


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


# ------------------------------------------------------------------------------------------------- verified files
DIGEST_SUFFIX = ".sha256"


class CorruptFileError(ValueError):
    """A verified file whose digest is missing or wrong, or whose content cannot be read or has the wrong structure.

    Attributes:
        path: the file.
    """

    def __init__(self, path: str | os.PathLike, what: str, problem: str, remedy: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path} ({what}) {problem}; {remedy}")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex: what a recipe records of an input file (a Fisher, a query's audio)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def update_with_folder(digest: Any, folder: str | os.PathLike) -> Any:
    """Feed `digest` every file of `folder` in sorted order, each as its relative path, a NUL and its bytes: what a
    saved model's outputs depend on, whatever its format. Returns `digest`."""
    folder = Path(folder)
    for path in sorted(path for path in folder.rglob("*") if path.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 24), b""):
                digest.update(block)
    return digest


def digest_path(path: str | os.PathLike) -> Path:
    """The sidecar holding the SHA-256 digest of `path`: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def _write_verified(path: Path, data: bytes) -> None:
    """The digest of `data`, then `data`, to ``<path>.sha256`` and `path`, each atomically."""
    write_text_atomic(digest_path(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def save_verified(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` `obj` to `path` and its digest to ``<path>.sha256``, each atomically (`load_verified`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _write_verified(Path(path), buffer.getvalue())


def write_json_verified(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as JSON to `path` and its digest to ``<path>.sha256``, each atomically (`read_json_verified`)."""
    _write_verified(Path(path), (json.dumps(data, indent=2) + "\n").encode())


def recorded_sha256(path: str | os.PathLike, what: str, remedy: str) -> str:
    """The SHA-256 that `path`'s digest file records (what a recipe can name a verified input by, without reading a
    large file; its bytes are checked against it when it is read).

    Raises:
        FileNotFoundError: `path` does not exist.
        CorruptFileError: the digest file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} ({what}) not found; {remedy}")
    sidecar = digest_path(path)
    if not sidecar.is_file():
        raise CorruptFileError(path, what, f"has no digest file {sidecar.name} (written before files carried a digest, "
                               "or the digest was deleted), so it cannot be trusted", remedy)
    try:
        return sidecar.read_text(encoding="ascii").split()[0].lower()
    except (UnicodeDecodeError, IndexError, OSError) as error:
        raise CorruptFileError(path, what, f"has an unreadable digest file {sidecar.name} ({type(error).__name__})",
                               remedy) from error


def read_checked_bytes(path: str | os.PathLike, what: str, remedy: str) -> bytes:
    """The bytes of `path` after checking them against its digest file.

    Raises:
        FileNotFoundError: `path` does not exist.
        CorruptFileError: the digest file is missing or unreadable (a file written before files carried a digest),
            or the bytes do not match it (changed, truncated, or a rewrite interrupted after its new digest).
    """
    path = Path(path)
    expected = recorded_sha256(path, what, remedy)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise CorruptFileError(path, what, f"does not match its digest in {digest_path(path).name} ({len(data)} "
                               "bytes): it was changed, truncated or overwritten after it was written", remedy)
    return data


def load_verified(path: str | os.PathLike, what: str, remedy: str, structure: Any = None) -> Any:
    """What `save_verified` wrote to `path`, after checking its digest, loaded with ``torch.load(weights_only=True)``
    (no code runs) and checked against `structure` (see `check_structure`; None: any content).

    Args:
        path: the file.
        what: what the file is, for messages ("sweep shard").
        remedy: what to do about a bad file ("run the sweep command again: it recomputes the shard").

    Raises:
        FileNotFoundError: `path` does not exist.
        CorruptFileError: the digest is missing or wrong, the content cannot be unpickled safely, or it does not
            have `structure`; the message names the file, what it is and `remedy`.
    """
    data = read_checked_bytes(path, what, remedy)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file; torch's text suggests unsafe loading
        raise CorruptFileError(path, what, f"cannot be loaded as plain tensors and containers "
                               f"({type(error).__name__}); it is not a file this package wrote", remedy) from None
    if structure is not None:
        check_structure(obj, structure, path, what, remedy)
    return obj


def read_json_verified(path: str | os.PathLike, what: str, remedy: str) -> Any:
    """What `write_json_verified` wrote to `path`, after checking its digest.

    Raises:
        FileNotFoundError: `path` does not exist.
        CorruptFileError: the digest is missing or wrong, or the bytes are not UTF-8 JSON.
    """
    data = read_checked_bytes(path, what, remedy)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(path, what, f"is not valid JSON ({type(error).__name__}: {error})", remedy) from error


def reusable(path: str | os.PathLike, read: Callable[[Path], Any]) -> bool:
    """Whether the cached file `path` exists and `read` (which verifies it) accepts it; one that fails verification
    is logged with a warning naming it, for the caller to compute it again and overwrite it."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        read(path)
    except CorruptFileError as error:
        log.warning("Computing it again: %s", error)
        return False
    return True


@dataclass(frozen=True)
class TensorField:
    """A tensor with `ndim` dimensions (None: any) of `dtype` (None: any), all finite if `finite` (floating only)."""

    ndim: int | None = None
    dtype: torch.dtype | None = None
    finite: bool = False

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, torch.Tensor):
            return f"is {type(value).__name__}, not a tensor"
        if self.ndim is not None and value.ndim != self.ndim:
            return f"has shape {tuple(value.shape)}, not {self.ndim} dimension(s)"
        if self.dtype is not None and value.dtype != self.dtype:
            return f"has dtype {value.dtype}, not {self.dtype}"
        if self.finite and (value.is_floating_point() or value.is_complex()) and not bool(value.isfinite().all()):
            return f"holds {int((~value.isfinite()).sum())} NaN or infinite value(s)"
        return None


@dataclass(frozen=True)
class TensorMapField:
    """A dict of str -> tensor (named parameters), each tensor as `TensorField(finite=finite)` requires."""

    finite: bool = False

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"is {type(value).__name__}, not a dict of name -> tensor"
        for name, tensor in value.items():
            if not isinstance(name, str):
                return f"has a key {name!r} that is not a name"
            found = TensorField(finite=self.finite).problem(tensor)
            if found is not None:
                return f"[{name!r}] {found}"
        return None


@dataclass(frozen=True)
class StrListField:
    """A list of str."""

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
            return f"is {type(value).__name__}, not a list of str"
        return None


def check_structure(obj: Any, structure: Any, path: str | os.PathLike, what: str, remedy: str) -> None:
    """Check that loaded `obj` has `structure`: a field (`TensorField`, `TensorMapField`, `StrListField`), a type
    (``isinstance``; int excludes bool), or a mapping key -> structure that `obj`, a dict, must have at least.

    Raises:
        CorruptFileError: naming `path`, the first key that differs and `remedy`.
    """
    found = _problem(obj, structure)
    if found is not None:
        raise CorruptFileError(path, what, f"does not hold what it should: its content{found}", remedy)


def _problem(value: Any, structure: Any) -> str | None:
    if isinstance(structure, Mapping):
        if not isinstance(value, dict):
            return f" is {type(value).__name__}, not a dict with keys {sorted(structure)}"
        for key, inner in structure.items():
            if key not in value:
                return f" lacks key {key!r}"
            found = _problem(value[key], inner)
            if found is not None:
                return f"[{key!r}]{found}"
        return None
    if isinstance(structure, type):
        wrong = not isinstance(value, structure) or (structure is int and isinstance(value, bool))
        return f" is {type(value).__name__}, not {structure.__name__}" if wrong else None
    found = structure.problem(value)
    return None if found is None else f" {found}"
