"""Local weight files for the embedders backed by third-party networks (PANN, VGGish, LAION-CLAP, EnCodec).

Nothing is ever downloaded: a missing file raises `FileNotFoundError` naming the exact path to fill and the URL to
fetch it from, before any heavy package is imported or any network is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

Config = TypeVar("Config")


def config_for_rate(configs: dict[int, Config], sample_rate: int, what: str) -> Config:
    """The entry of `configs` for `sample_rate`, or a `ValueError` naming `what` and the rates there are."""
    if sample_rate not in configs:
        raise ValueError(f"{what} has no checkpoint for sample_rate={sample_rate}; choose one of {sorted(configs)}.")
    return configs[sample_rate]


def require_file(path: Path, what: str, url: str, note: str = "") -> Path:
    """Return `path` if it is a file, else raise `FileNotFoundError` saying where to place it and where to get it.

    Args:
        path: the file the embedder loads.
        what: what the file holds, to start the message (e.g. ``"PANN weights"``).
        url: where to download it from.
        note: an optional sentence appended to the message.

    Raises:
        FileNotFoundError: ``"{what} not found: place {path.name} (from {url}) in {path.parent}"``.
    """
    if not path.is_file():
        message = f"{what} not found: place {path.name} (from {url}) in {path.parent}"
        raise FileNotFoundError(f"{message}. {note}".strip() if note else message)
    return path


def _numpy_globals() -> list[Any]:
    """The globals a pickle of numpy arrays and scalars refers to, under numpy 1 and numpy 2 module names."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed: list[Any] = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 may pickle dtypes by their class
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return allowed


def load_checkpoint(path: Path) -> Any:
    """`torch.load` a checkpoint onto the CPU with ``weights_only=True``, also accepting numpy arrays and scalars.

    Training checkpoints (PANN's hold the data sampler's numpy state next to the model) pickle numpy objects, which
    plain ``weights_only=True`` refuses; they are allow-listed here, and any other pickled object is still refused
    by `torch.load` (``pickle.UnpicklingError``), so loading never runs arbitrary code.

    Args:
        path: the checkpoint file.
    """
    with torch.serialization.safe_globals(_numpy_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)
