"""`Throttle`: a callback the kill tests add to a ``train.py predict`` run so that a SIGKILL sent from outside can land
at a chosen point of a pass that would otherwise finish in milliseconds on the tiny fixtures. It changes no
arithmetic: it appends each step's index to a progress file as the step begins (what the test polls), sleeps after
each step, and rewrites the files it names that the run writes through `lightning_modules.io.atomic_file` in two
halves with a sleep between them, so a kill can catch a half-written temporary file."""

from __future__ import annotations

import fnmatch
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L

from lightning_modules import io


class Throttle(L.Callback):
    """Slows a predict pass down without changing what it computes.

    Args:
        progress: file to which each predict step appends its index (one line) as it begins.
        step_s: seconds to sleep after each predict step (after the writers' hooks of callbacks listed before it).
        write_s: seconds between the two halves of each atomic write of a file whose name matches `slow_files`.
        slow_files: glob of the file names to write slowly (others, such as digest files, are written at once).
    """

    def __init__(self, progress: str, step_s: float = 0.0, write_s: float = 0.0, slow_files: str = "*") -> None:
        self.progress = Path(progress)
        self.step_s = step_s
        self.write_s = write_s
        self.slow_files = slow_files

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.write_s > 0:
            original = io.atomic_file
            slow = _slow_atomic_file(original, self.write_s, self.slow_files)
            for module in list(sys.modules.values()):  # every module that imported atomic_file by name
                if getattr(module, "atomic_file", None) is original:
                    module.atomic_file = slow

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        with self.progress.open("a") as file:
            file.write(f"{batch_idx}\n")

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        time.sleep(self.step_s)


def _slow_atomic_file(atomic_file: Any, write_s: float, slow_files: str) -> Any:
    @contextmanager
    def slow(path: str | os.PathLike) -> Iterator[Path]:
        with atomic_file(path) as tmp:
            yield tmp
            if not fnmatch.fnmatch(Path(path).name, slow_files):
                return
            data = tmp.read_bytes()  # what the writer wrote, written again: first half, a pause, the rest
            with tmp.open("wb") as file:
                file.write(data[: len(data) // 2])
                file.flush()
                time.sleep(write_s)
                file.write(data[len(data) // 2 :])

    return slow
