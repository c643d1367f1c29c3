"""Tiny fixtures: a random toy CLAP, a random toy text-to-music model, a two-artist corpus and a feature tagger fitted
on it, built once per session and saved with `save_pretrained`, so tests load them through the code path that loads
real checkpoints."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests make many short-lived objects over a large heap of imported modules (torch, transformers, diffusers):
# with the default thresholds the collector's passes over that heap took about 15 % of the CPU time (measured on
# tests/lightning_modules/test_backends.py). Fewer passes, and the heap as it is after collection frozen out of them
# (pytest_collection_finish); no test relies on when garbage is collected.
gc.set_threshold(10_000, 20, 20)

import fcntl  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

# torch, Lightning and the package are imported where they are used: the xdist controller, which loads this file to
# start the workers and runs no test, then starts them about 14 s sooner (each worker imports them with its tests).
if TYPE_CHECKING:
    import torch

    from datamodules import ToyCorpus
    from lightning_modules.models import ToyTextToMusic

REPO = Path(__file__).resolve().parents[1]
TINY_SAMPLES = 8192


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto`` (in addopts): one per core when the run leaves out the tests that start processes
    (``-m`` with ``not ddp``, as the fast tier ``-m "not slow and not ddp"`` does); none otherwise, so the default
    suite runs in one process as before: its DDP and subprocess tests start processes of their own, and the
    kill-and-resume tests time their signals. ``-n NUM`` on the command line chooses for itself."""
    return _cores() if "not ddp" in (config.option.markexpr or "") else 0


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.collect()
    gc.freeze()


def pytest_configure(config: pytest.Config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:  # an xdist worker: its share of the cores (tiny tensors gain nothing from threads competing for them)
        import torch

        torch.set_num_threads(max(1, _cores() // int(workers)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if "network" in item.keywords and os.environ.get("HF_HUB_OFFLINE") == "1":
            item.add_marker(pytest.mark.skip(reason="needs a model hub (HF_HUB_OFFLINE=1)"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> ToyCorpus:
    from datamodules import ToyCorpus

    corpus = ToyCorpus(root=str(tmp_path_factory.mktemp("corpus") / "toy"), num_artists=2, tracks_per_artist=6,
                       heldout_per_artist=2, duration=TINY_SAMPLES / 16000)
    corpus.prepare()
    return corpus


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: ToyCorpus) -> Path:
    import torch

    from datamodules import read_manifest
    from lightning_modules.models.toy_clap import build_tokenizer, build_toy_clap

    torch.manual_seed(0)
    captions = [item.caption for item in read_manifest(tiny_corpus.train_manifest)] + ["a piece by"]
    model, processor = build_toy_clap(build_tokenizer(captions), hidden_size=16, projection_dim=16, num_text_layers=1)
    folder = tmp_path_factory.mktemp("clap")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: ToyCorpus) -> Path:
    """A feature tagger fitted on the tiny corpus's training tracks."""
    import torch

    from datamodules import read_manifest
    from datamodules.audio import AudioTextDataset
    from lightning_modules.metrics import FeatureTagger

    items = read_manifest(tiny_corpus.train_manifest)
    dataset = AudioTextDataset(items, 16000, TINY_SAMPLES)
    audio = torch.stack([dataset[i]["audio"] for i in range(len(dataset))])
    folder = tmp_path_factory.mktemp("judge") / "judge"
    FeatureTagger.fit(audio, [item.group for item in items], 16000, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_clap_dir: Path) -> Path:
    import torch

    from lightning_modules.models import ToyArchitecture, ToyTextToMusic

    torch.manual_seed(0)
    architecture = ToyArchitecture(num_samples=TINY_SAMPLES, n_mels=32, block_out_channels=(8, 16),
                                   attention_head_dim=4, num_inference_steps=4, griffin_lim_iters=4)
    folder = tmp_path_factory.mktemp("toy_ttm")
    ToyTextToMusic(text_encoder=str(tiny_clap_dir), architecture=architecture).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model(tiny_model_dir: Path) -> ToyTextToMusic:
    from lightning_modules.models import ToyTextToMusic

    return ToyTextToMusic.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_batch(tiny_corpus: ToyCorpus) -> dict:
    import torch

    from datamodules import read_manifest
    from datamodules.audio import AudioTextDataset

    dataset = AudioTextDataset(read_manifest(tiny_corpus.train_manifest)[:4], 16000, TINY_SAMPLES, split="forget")
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def write_config(tmp_path: Path, corpus: ToyCorpus, model_dir: Path, clap_dir: Path | None = None,
                 evaluation: dict | None = None, **trainer) -> Path:
    """A `train.py fit` config: 3 steps of gradient ascent on the tiny model and corpus, evaluated by
    `UnlearningEvaluation` (with generation metrics when `clap_dir` is given; `evaluation` overrides its arguments)."""
    import yaml

    evaluation = {"cache_dir": str(tmp_path / "cache"), "num_prompts": 3, "batch_size": 2, **(evaluation or {})}
    if clap_dir is not None:
        evaluation["clap"] = {"class_path": "lightning_modules.metrics.ClapEmbedder",
                              "init_args": {"pretrained": str(clap_dir)}}
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 3, "default_root_dir": str(tmp_path / "logs"), "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu",
                    "callbacks": [{"class_path": "callbacks.UnlearningEvaluation", "init_args": evaluation},
                                  {"class_path": "callbacks.SavePretrained"}],
                    **trainer},
        "model": {"class_path": "lightning_modules.unlearning.GradientAscent",
                  "init_args": {"model": {"class_path": "lightning_modules.models.ToyTextToMusic",
                                          "init_args": {"pretrained": str(model_dir)}},
                                "parameter_groups": ["all"],
                                "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}}},
        "data": {"class_path": "datamodules.ForgetRetainDataModule",
                 "init_args": {"manifest": str(corpus.train_manifest), "heldout_manifest": str(corpus.heldout_manifest),
                               "forget_groups": [corpus.artists[0]], "batch_size": 2, "eval_batch_size": 3}},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_train(*args: str, timeout: int = 300) -> None:
    """``python train.py <args>`` from the repository root: through `train.main`, what the command runs, in this
    process (a subprocess pays about 13 s of imports per run: most of what the tests of the attribution flow took), or
    in a subprocess when the run starts DDP processes (``--trainer.strategy=ddp``), which Lightning launches by running
    the command again. A failure raises AssertionError with the error and the end of stderr, as a non-zero exit with
    its stderr does."""
    import contextlib
    import io
    import subprocess
    import sys

    if "--trainer.strategy=ddp" in args:
        result = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                                timeout=timeout)
        assert result.returncode == 0, result.stderr[-3000:]
        return
    from train import main

    stderr = io.StringIO()
    try:
        with contextlib.chdir(REPO), contextlib.redirect_stderr(stderr):
            main(list(args))
    except (Exception, SystemExit) as error:  # SystemExit: jsonargparse's refusal of an argument
        raise AssertionError(f"{type(error).__name__}: {error}\n{stderr.getvalue()[-3000:]}") from error


def poison_loss(monkeypatch: pytest.MonkeyPatch, bad_ids: set[str]) -> None:
    """Make `ToyTextToMusic.loss` NaN for the items `bad_ids` (as a bad cached target or a diverging model would),
    whichever pass calls it; every other item's loss, and the mean reduction, are as before."""
    import torch

    from lightning_modules.models import ToyTextToMusic

    original = ToyTextToMusic.loss

    def poisoned(self: ToyTextToMusic, batch: dict, *, reduction: str = "none", **kwargs: object) -> torch.Tensor:
        losses = original(self, batch, **kwargs)
        bad = torch.tensor([item_id in bad_ids for item_id in batch["id"]], device=losses.device)
        losses = torch.where(bad, torch.full_like(losses, float("nan")), losses)
        return losses.mean() if reduction == "mean" else losses

    monkeypatch.setattr(ToyTextToMusic, "loss", poisoned)


@pytest.fixture(scope="session")
def fitted(tmp_path_factory, tiny_corpus, tiny_model_dir, tiny_clap_dir, tiny_judge_dir):
    """(For the evaluation's and the report's tests.) A 3-step fit evaluated at the start, at step 2 and at the end,
    beside an "oracle" (the tiny model itself, which has no training record: accepted unchecked), with recognition by
    the CLAP and by a feature tagger. The xdist workers of a run share one (under a lock in the run's temporary
    folder): the first to ask fits, the others read what it wrote."""
    from train import main

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's
    with open(shared / "fitted.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        record = shared / "fitted.json"
        if not record.exists():
            tmp_path = tmp_path_factory.mktemp("fit")
            config = write_config(tmp_path, tiny_corpus, tiny_model_dir, tiny_clap_dir,
                                  evaluation={"oracle": str(tiny_model_dir), "oracle_unchecked": True,
                                              "every_n_train_steps": 2, "log_audio": 1,
                                              "judge": {"class_path": "lightning_modules.metrics.FeatureTagger",
                                                        "init_args": {"pretrained": str(tiny_judge_dir)}}})
            cli = main(["fit", "--config", str(config)])
            paths = {"config": config, "run": cli.trainer.log_dir, "cache": tmp_path / "cache",
                     "checkpoint": cli.trainer.checkpoint_callback.best_model_path}
            record.write_text(json.dumps({key: str(value) for key, value in paths.items()}))
        paths = json.loads(record.read_text())
    run = Path(paths["run"])
    return SimpleNamespace(config=Path(paths["config"]), run=run,
                           results=json.loads((run / "results.json").read_text()), cache=Path(paths["cache"]),
                           checkpoint=paths["checkpoint"], forget_group=tiny_corpus.artists[0])


def tiny_lds_world(tmp_path: Path, corpus: ToyCorpus, model_dir: Path, max_steps: int) -> tuple[Path, Path]:
    """The tiny world's LDS queries (per artist one name-prompted generation and one held-out track) and a training
    recipe that fine-tunes the tiny model `max_steps` SGD steps (a subset model in about a second): their manifest
    and the recipe's config."""
    import yaml

    from datamodules.toy_queries import ToyLdsQueries
    from lightning_modules.models import ToyTextToMusic

    queries = ToyLdsQueries(ToyTextToMusic, root=str(tmp_path / "queries"), model=str(model_dir),
                            corpus=str(corpus.root), num_artists=2, prompted=1, described=0, heldout=1,
                            num_inference_steps=2)
    queries.prepare()
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"max_steps": max_steps, "accelerator": "cpu", "enable_checkpointing": False},
        "model": {"class_path": "lightning_modules.training.TextToMusicTraining",
                  "init_args": {"model": {"class_path": "lightning_modules.models.ToyTextToMusic",
                                          "init_args": {"pretrained": str(model_dir)}},
                                "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}}},
        "data": {"class_path": "datamodules.AudioTextDataModule",
                 "init_args": {"manifest": str(corpus.train_manifest), "batch_size": 2}}}))
    return queries.manifest, config
