"""kill -9 in the predict passes: the loss sweep, the Fisher pass and the target-cache encoding pass. Each is run as
a ``train.py predict`` subprocess, SIGKILLed at a point a seeded RNG picks, re-run into the same folder (in this
process, through the same CLI) and compared with an uninterrupted run (also in this process, while the killed one
starts). A `Throttle` callback (tests/faults/throttle.py) slows the killed runs down without changing what they compute,
so the kill lands where it was aimed on a loaded machine: half-way through writing the file of step k+1 (sweep shards,
cached items: the worst moment for a file-per-step pass), and, for the Fisher pass, which writes one file at the end,
in a random step of the pass or half-way through writing the result. The re-runs count their steps through the same
callback: what they recomputed. ``TTM_KILL_SEED`` picks other kill points."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from datamodules import read_manifest
from datamodules.attribution_store import FisherFile, Sweep
from datamodules.target_cache import TargetCache
from tests.conftest import REPO

pytestmark = [pytest.mark.faults, pytest.mark.ddp]

SEED = int(os.environ.get("TTM_KILL_SEED", "0"))
STARTUP_S = 600  # train.py took 12 s to start on 2 lightly loaded cores, 107 s at a load average of 9
STEP_S = 0.3  # the throttle's sleep after each step of a killed Fisher pass
WRITE_S = 0.8  # and between the two halves of each shard, item or Fisher file a killed run writes


def _config(tmp_path: Path, name: str, shipped: str, model_dir: Path, model: dict, data: dict) -> Path:
    """A shipped predict config on the tiny model, with `model` and `data` init_args merged in."""
    config = yaml.safe_load((REPO / "configs" / shipped).read_text())
    config["trainer"].update(accelerator="cpu", enable_progress_bar=False,
                             default_root_dir=str(tmp_path / "logs" / name))
    config["model"]["init_args"].update(model={"class_path": "lightning_modules.models.ToyTextToMusic",
                                               "init_args": {"pretrained": str(model_dir)}}, **model)
    class_path = data.pop("class_path", None) or config["data"]["class_path"]
    config["data"] = {"class_path": class_path, "init_args": data}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _throttled(config: Path, progress: Path, step_s: float = 0.0, write_s: float = 0.0, slow_files: str = "*.pt"
               ) -> Path:
    """`config` with a `Throttle` callback that logs each step into `progress` (and sleeps as asked)."""
    data = yaml.safe_load(config.read_text())
    throttle = {"class_path": "tests.faults.throttle.Throttle",
                "init_args": {"progress": str(progress), "step_s": step_s, "write_s": write_s,
                              "slow_files": slow_files}}
    data["trainer"]["callbacks"] = [*data["trainer"].get("callbacks", []), throttle]
    path = progress.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def _run(config: Path) -> None:
    """``train.py predict --config <config>`` in this process (the runs that are not killed: no start-up cost)."""
    from train import main

    main(["predict", "--config", str(config)])


def _files(folder: Path) -> set[str]:
    """The files under `folder` (relative paths), less the temporary files of writes a kill cut short, which stay
    behind (``.<name>.tmp-*``: nothing reads them)."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file() and ".tmp-" not in path.name}


def _steps(progress: Path) -> int:
    """The number of predict steps a throttled run began."""
    return len(progress.read_text().splitlines()) if progress.is_file() else 0


class Kill(threading.Thread):
    """``train.py predict --config <config>`` as a subprocess (output into ``<config>.log``, this process's number of
    threads so its arithmetic is the in-process runs'), SIGKILLed `delay_s` after `ready()` first holds (polled every
    5 ms), watched from a thread so that the uninterrupted run can go on in this process meanwhile. `wait()` fails,
    naming `what`, when the run ended before the kill point or did not reach it within `STARTUP_S`."""

    def __init__(self, config: Path, ready: Callable[[], bool], delay_s: float, what: str) -> None:
        super().__init__(daemon=True)
        self.ready, self.delay_s, self.what = ready, delay_s, what
        self.log = config.with_suffix(".log")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
        with self.log.open("w") as log:
            self.process = subprocess.Popen([sys.executable, "train.py", "predict", "--config", str(config)],
                                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.error: str | None = None
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while not self.ready():
            if self.process.poll() is not None:
                self.error = (f"The run ended (exit {self.process.returncode}) before the kill point ({self.what}); "
                              f"the throttle did not hold it back:\n{self.log.read_text()[-3000:]}")
                return
            if time.monotonic() > deadline:
                self.process.kill()
                self.error = f"The kill point ({self.what}) was not reached within {STARTUP_S} s."
                return
            time.sleep(0.005)
        time.sleep(self.delay_s)
        if self.process.poll() is not None:
            self.error = f"The run ended during the {self.delay_s:.2f} s before the kill ({self.what})."
            return
        os.kill(self.process.pid, signal.SIGKILL)

    def wait(self) -> None:
        self.join(STARTUP_S + 60)
        if self.is_alive() or self.error is not None:
            self.process.kill()
            pytest.fail(self.error or f"The kill thread did not end ({self.what}).")
        assert self.process.wait(timeout=60) == -signal.SIGKILL


class KillMidWrite(Kill):
    """A `Kill` half-way through writing the run's (k+1)-th file: when `k` files matching the glob `files` exist in
    `folder` and a temporary file matching `temporary` (what `lightning_modules.io.atomic_file` writes before its
    rename) does. `wait()` also checks that the kill left `k` files and that temporary file, half-written, and
    returns the latter."""

    def __init__(self, config: Path, folder: Path, files: str, temporary: str, k: int, rng: random.Random) -> None:
        self.folder, self.files, self.temporary, self.k = folder, files, temporary, k
        self.torn: list[Path] = []
        super().__init__(config, self.torn_after_k, rng.uniform(0.15, 0.35) * WRITE_S,
                         f"half-way through writing file {k + 1}")

    def torn_after_k(self) -> bool:
        if len(list(self.folder.glob(self.files))) < self.k:  # counted first: a temporary seen later is file k+1's
            return False
        self.torn = sorted(self.folder.glob(self.temporary))
        return bool(self.torn)

    def wait(self) -> Path:
        super().wait()
        written = len(list(self.folder.glob(self.files)))
        assert written == self.k, f"{written} files written, not {self.k}: the kill came late"
        assert self.torn[0].is_file() and self.torn[0].stat().st_size > 0, self.torn[0]
        return self.torn[0]


def test_a_killed_sweep_resumes_to_the_losses_of_an_uninterrupted_one(tiny_corpus, tiny_model_dir, tmp_path):
    """Eight shards of one track; killed half-way through writing shard k+1 (k random); the re-run computes the
    missing shards only and ends with losses bit-identical to an uninterrupted sweep's."""
    rng = random.Random(f"sweep-{SEED}")

    def config(name: str) -> Path:
        return _config(tmp_path, name, "attribution/sweep.yaml", tiny_model_dir,
                       {"draws": 3, "micro_batch_size": 4},
                       {"manifest": str(tiny_corpus.train_manifest), "sweep_dir": str(tmp_path / name),
                        "shard_size": 1, "source": None})

    folder, n = tmp_path / "b", len(read_manifest(tiny_corpus.train_manifest))
    k = rng.randint(1, n - 2)
    kill = KillMidWrite(_throttled(config("b"), tmp_path / "kill", write_s=WRITE_S), folder, "shard-*.pt",
                        ".shard-*.pt.tmp-*", k, rng)
    _run(config("a"))  # the uninterrupted sweep, while the other one starts
    torn = kill.wait()
    assert torn.name.startswith(f".{Sweep(folder).shard_path(k).name}.tmp-")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        Sweep(folder).read()  # the torn shard is not taken for a written one
    kept = {index: Sweep(folder).shard_path(index).stat().st_mtime_ns for index in range(k)}

    _run(_throttled(config("b"), tmp_path / "resume"))
    assert _steps(tmp_path / "resume") == n - k  # one step per missing shard, none for those kept
    assert {index: Sweep(folder).shard_path(index).stat().st_mtime_ns for index in range(k)} == kept
    ids, losses = Sweep(folder).read()
    reference_ids, reference_losses = Sweep(tmp_path / "a").read()
    assert ids == reference_ids and len(ids) == n and _files(folder) == _files(tmp_path / "a")
    assert torch.equal(losses, reference_losses)  # same draws, same rows per step: bit-identical


def test_a_killed_encoding_pass_resumes_to_the_targets_of_an_uninterrupted_one(tiny_corpus, tiny_model_dir,
                                                                                tmp_path):
    """Twelve items encoded one per step; killed half-way through writing item k+1 (k random); the re-run encodes
    the missing items only and every cached item equals the uninterrupted pass's, bit for bit."""
    rng = random.Random(f"encode-{SEED}")

    def config(name: str) -> Path:
        return _config(tmp_path, name, "encode.yaml", tiny_model_dir, {},
                       {"class_path": "datamodules.ForgetRetainDataModule",
                        "manifest": str(tiny_corpus.train_manifest),
                        "heldout_manifest": str(tiny_corpus.heldout_manifest),
                        "forget_groups": [tiny_corpus.artists[0]], "cache_dir": str(tmp_path / name),
                        "encode_batch_size": 1})

    folder = tmp_path / "b"
    ids = [item.id for manifest in (tiny_corpus.train_manifest, tiny_corpus.heldout_manifest)
           for item in read_manifest(manifest)]
    k = rng.randint(1, len(ids) - 2)
    kill = KillMidWrite(_throttled(config("b"), tmp_path / "kill", write_s=WRITE_S), folder, "*/*.pt",
                        "*/.*.pt.tmp-*", k, rng)
    _run(config("a"))  # the uninterrupted pass, while the other one starts
    kill.wait()
    (key,) = [path.name for path in folder.iterdir()]
    cache = TargetCache(folder, key)
    assert len(cache.missing(ids)) == len(ids) - k  # the torn file does not count as an encoded item
    kept = {path: path.stat().st_mtime_ns for path in folder.glob("*/*.pt")}

    _run(_throttled(config("b"), tmp_path / "resume"))
    assert _steps(tmp_path / "resume") == len(ids) - k  # one step per missing item, none for those kept
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert not cache.missing(ids) and _files(folder) == _files(tmp_path / "a")
    reference_cache = TargetCache(tmp_path / "a", key)
    for item_id in ids:
        (targets, num_valid), (expected, expected_valid) = cache.load(item_id), reference_cache.load(item_id)
        assert num_valid == expected_valid and torch.equal(targets, expected), item_id  # same encoder, same audio


def test_a_killed_fisher_pass_is_recomputed_to_the_uninterrupted_fisher(tiny_corpus, tiny_model_dir, tmp_path):
    """The Fisher pass keeps its sums in memory and writes one file at the end, so it promises no resumption: a
    re-run of a killed pass starts over. One run is killed mid-pass (in step j, j random), another half-way through
    writing the file: neither leaves a file that is read as a Fisher, and each re-run computes the whole pass again
    and equals the uninterrupted pass bit for bit (same items, batches and draws, summed in the same order)."""
    rng = random.Random(f"fisher-{SEED}")

    def config(name: str) -> Path:
        return _config(tmp_path, name, "attribution/fisher.yaml", tiny_model_dir,
                       {"fisher_path": str(tmp_path / name / "fisher.pt"), "parameter_groups": ["all"]},
                       {"manifest": str(tiny_corpus.train_manifest), "batch_size": 1, "source": None})

    n = len(read_manifest(tiny_corpus.train_manifest))
    j = rng.randint(1, n - 1)
    mid_pass = Kill(_throttled(config("b"), tmp_path / "kill-b", STEP_S), lambda: _steps(tmp_path / "kill-b") >= j,
                    rng.uniform(0, 1) * STEP_S, f"in step {j} of {n}")
    mid_write = KillMidWrite(_throttled(config("c"), tmp_path / "kill-c", write_s=WRITE_S), tmp_path / "c", "*.pt",
                             ".fisher.pt.tmp-*", 0, rng)
    _run(config("a"))  # the uninterrupted pass, while the other two start
    mid_pass.wait()
    assert _steps(tmp_path / "kill-b") >= j  # j, or j + 1 when the kill came after the sleep that ends step j
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())  # nothing written mid-pass
    mid_write.wait()
    assert _steps(tmp_path / "kill-c") == n  # the whole pass, then killed while writing
    expected, expected_info = FisherFile(tmp_path / "a" / "fisher.pt").load()
    assert expected_info["count"] == n and sum(value.sum() for value in expected.values()) > 0
    for name in ("b", "c"):
        assert not (tmp_path / name / "fisher.pt").exists()
        with pytest.raises(FileNotFoundError, match="fisher.yaml"):
            FisherFile(tmp_path / name / "fisher.pt").load()

        _run(_throttled(config(name), tmp_path / f"resume-{name}"))
        assert _steps(tmp_path / f"resume-{name}") == n  # recomputed from the start
        fisher, info = FisherFile(tmp_path / name / "fisher.pt").load()
        assert info == expected_info and set(fisher) == set(expected)
        assert _files(tmp_path / name) == _files(tmp_path / "a")
        for key, value in expected.items():
            assert torch.equal(fisher[key], value), key
