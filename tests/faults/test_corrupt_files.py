"""Corrupt files: every kind of file the package writes and reads back (target cache items, sweep shards and recipes,
query deltas and their settings, Fisher files, similarity score matrices, FAD references, cached evaluation results)
carries a digest and a structure check. Each of four damages (200 random bytes, the file cut in half, a well-formed
file of the wrong structure or holding NaN with a valid digest, a file without a digest as written before) is refused
with an error naming the file and what to do, never suggesting unsafe loading; the passes that write a file compute a
bad one again, to the values it held. (The FAD reference and cached results are rebuilt in
tests/callbacks/test_evaluation.py, a query delta in tests/lightning_modules/test_attribution_flow.py.)"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from callbacks import TargetCacheWriter
from callbacks.evaluation import read_cached_measurement, read_reference_embeddings
from callbacks.sweep_writer import SweepWriter
from datamodules import ForgetRetainDataModule, read_manifest
from datamodules.attribution_store import AttributionStore, Delta, FisherFile, Sweep, ids_digest
from datamodules.items import ItemsDataModule
from datamodules.sweep import SweepDataModule
from datamodules.target_cache import TargetCache
from lightning_modules.attribution.fisher import FisherEstimation
from lightning_modules.attribution.sweep import LossSweep
from lightning_modules.encoding import TargetEncoding
from lightning_modules.io import CorruptFileError, digest_path, load_verified, save_verified, write_json_verified
from lightning_modules.metrics import FrechetAudioDistance
from lightning_modules.models import ToyTextToMusic
from tests.conftest import TINY_SAMPLES
from tests.lightning_modules.embedders import ProjectionEmbedder

pytestmark = pytest.mark.faults

NAN = float("nan")


@dataclass(frozen=True)
class Kind:
    """A file kind: `make` writes a good file under a folder and returns its path and a reader; `wrong` overwrites
    it with a well-formed file, its digest valid, of the wrong structure or with non-finite values."""

    make: Callable[[Path], tuple[Path, Callable[[], Any]]]
    wrong: Callable[[Path], None]


def _target(tmp: Path) -> tuple[Path, Callable[[], Any]]:
    cache = TargetCache(tmp, "key")
    cache.save("item-1", torch.randn(2, 4, 8), 100)
    return cache.path("item-1"), lambda: cache.load("item-1")


def _sweep_folder(tmp: Path) -> Path:
    folder, ids = tmp / "sweep", ["a", "b", "c"]
    Sweep(folder).open({"shard_size": 3, "num_items": 3, "ids": ids_digest(ids)}, write=True)
    Sweep(folder).write_shard(0, ids, torch.rand(3, 2))
    return folder


def _shard(tmp: Path) -> tuple[Path, Callable[[], Any]]:
    folder = _sweep_folder(tmp)
    return Sweep(folder).shard_path(0), lambda: Sweep(folder).read()


def _recipe(tmp: Path) -> tuple[Path, Callable[[], Any]]:
    folder = _sweep_folder(tmp)
    return folder / "sweep.json", lambda: Sweep(folder).read()


def _delta(tmp: Path) -> tuple[Path, Callable[[], Any]]:
    Delta(tmp / "delta.pt").write({"w": torch.randn(3)}, {"lr": 1.0})
    return tmp / "delta.pt", lambda: Delta(tmp / "delta.pt").read()


def _delta_settings(tmp: Path) -> tuple[Path, Callable[[], Any]]:
    Delta(tmp / "delta.pt").write({"w": torch.randn(3)}, {"lr": 1.0})
    return tmp / "delta.json", lambda: Delta(tmp / "delta.pt").settings()


def _fisher(tmp: Path) -> tuple[Path, Callable[[], Any]]:
    FisherFile(tmp / "fisher.pt").save({"w": torch.rand(3)}, weights="w0", count=3)
    return tmp / "fisher.pt", lambda: FisherFile(tmp / "fisher.pt").load(weights="w0")


def _scores(tmp: Path) -> tuple[Path, Callable[[], Any]]:
    AttributionStore(tmp).write_scores("clap", ["a", "b"], ["q"], torch.rand(1, 2), "ClapSimilarity")
    return AttributionStore(tmp).scores_path("clap"), lambda: AttributionStore(tmp).read_scores("clap")


def _stats(value: float = 1.0) -> dict[str, Any]:
    dim = ProjectionEmbedder().dim
    return {"sum": torch.full((dim,), value, dtype=torch.float64), "outer_sum": torch.eye(dim, dtype=torch.float64),
            "count": torch.tensor(4.0, dtype=torch.float64)}


def _fad(tmp: Path) -> tuple[Path, Callable[[], Any]]:
    metric = FrechetAudioDistance(ProjectionEmbedder())
    metric.set_reference(_stats())
    metric.save_reference(tmp / "reference.pt")
    return tmp / "reference.pt", lambda: FrechetAudioDistance(ProjectionEmbedder()).load_reference(tmp / "reference.pt")


def _results(tmp: Path) -> tuple[Path, Callable[[], Any]]:
    save_verified({"model": "oracle", "results": {"forget": {"loss": 0.5}},
                   "samples": {"forget": {"loss": [{"loss": torch.tensor([0.4, 0.6])}]}},
                   "clips": {"forget": [("a prompt", torch.zeros(1, 8))]}}, tmp / "results.pt")
    return tmp / "results.pt", lambda: read_cached_measurement(tmp / "results.pt")


def _embeddings(tmp: Path) -> tuple[Path, Callable[[], Any]]:
    save_verified({"embeddings": torch.ones(3, 8, dtype=torch.float64), "embedder": "projection-8"},
                  tmp / "embeddings.pt")
    return tmp / "embeddings.pt", lambda: read_reference_embeddings(tmp / "embeddings.pt", "projection-8")


KINDS = {
    "target cache item": Kind(_target, lambda path: save_verified(
        {"id": "item-1", "targets": torch.full((2, 4, 8), NAN), "num_valid": 100}, path)),
    "sweep shard": Kind(_shard, lambda path: save_verified({"id": ["a", "b", "c"], "loss": torch.full((3, 2), NAN)},
                                                           path)),
    "sweep recipe": Kind(_recipe, lambda path: write_json_verified(path, ["not", "a", "recipe"])),
    "query delta": Kind(_delta, lambda path: save_verified({"w": "not a tensor"}, path)),
    "query delta settings": Kind(_delta_settings, lambda path: write_json_verified(path, [1, 2])),
    "fisher": Kind(_fisher, lambda path: FisherFile(path).save({"w": torch.tensor([NAN, 1.0, 1.0])}, weights="w0",
                                                               count=3)),  # NaN under the right recipe
    "similarity scores": Kind(_scores, lambda path: AttributionStore(path.parent).write_scores(
        "clap", ["a", "b"], ["q"], torch.rand(3, 2), "ClapSimilarity")),
    "fad reference": Kind(_fad, lambda path: save_verified({**_stats(NAN), "embedder": "projection-8"}, path)),
    "cached results": Kind(_results, lambda path: save_verified(
        {"model": "oracle", "results": {}, "samples": {"forget": {"loss": [{"loss": [0.5]}]}}, "clips": {}}, path)),
    "reference embeddings": Kind(_embeddings, lambda path: save_verified(
        {"embeddings": torch.full((3, 8), NAN, dtype=torch.float64), "embedder": "projection-8"}, path)),
}


def _random_bytes(path: Path, kind: Kind) -> None:
    path.write_bytes(torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())


def _cut_in_half(path: Path, kind: Kind) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_structure(path: Path, kind: Kind) -> None:
    kind.wrong(path)


def _no_digest(path: Path, kind: Kind) -> None:
    digest_path(path).unlink()  # as a file written before files carried a digest


CORRUPTIONS = {"200 random bytes": _random_bytes, "cut in half": _cut_in_half,
               "wrong structure or NaN": _wrong_structure, "no digest": _no_digest}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_corrupt_file_is_refused_naming_it_and_what_to_do(kind: str, corruption: str, tmp_path: Path) -> None:
    path, read = KINDS[kind].make(tmp_path)
    read()  # the good file reads
    CORRUPTIONS[corruption](path, KINDS[kind])
    with pytest.raises(CorruptFileError) as error:
        read()
    message = str(error.value)
    assert error.value.path == path and str(path) in message
    assert "again" in message  # what to do: the command that writes it, run again
    assert "weights_only" not in message and "weights_only" not in repr(error.value.__cause__)


def test_a_file_that_needs_unsafe_unpickling_is_refused_without_suggesting_it(tmp_path: Path) -> None:
    path = tmp_path / "object.pt"
    torch.save({"value": Fraction(1, 3)}, path)  # a Python object beyond tensors and containers, its digest valid
    digest_path(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    with pytest.raises(CorruptFileError, match="object.pt \\(thing\\) cannot be loaded as plain tensors") as error:
        load_verified(path, "thing", "write it again")
    assert "weights_only" not in str(error.value) and error.value.__cause__ is None


def _trainer(*callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=list(callbacks))


def _corrupt_three(paths: list[Path], kind: Kind) -> None:
    for path, corruption in zip(paths, (_random_bytes, _cut_in_half, _wrong_structure), strict=True):
        corruption(path, kind)


def test_a_sweep_rerun_recomputes_corrupt_shards_to_the_same_losses(tiny_corpus, tiny_model, tmp_path, caplog):
    folder = tmp_path / "sweep"

    def sweep() -> None:
        data = SweepDataModule(manifest=str(tiny_corpus.train_manifest), sweep_dir=str(folder), shard_size=3,
                               num_samples=TINY_SAMPLES)
        _trainer(SweepWriter()).predict(LossSweep(tiny_model, draws=2, micro_batch_size=4), datamodule=data,
                                        return_predictions=False)

    sweep()
    ids, losses = Sweep(folder).read()
    paths = [Sweep(folder).shard_path(index) for index in range(3)]
    _corrupt_three(paths, Kind(_shard, lambda path: save_verified(
        {"id": ids[6:], "loss": torch.full((2, 2), NAN)}, path)))
    with caplog.at_level(logging.WARNING, logger="datamodules.sweep"):
        sweep()
    assert all(str(path) in caplog.text for path in paths)
    again_ids, again = Sweep(folder).read()
    assert again_ids == ids and torch.equal(again, losses)


def test_the_encoding_pass_encodes_corrupt_items_again_to_the_same_targets(tiny_corpus, tiny_model, tmp_path):
    def encode() -> None:
        data = ForgetRetainDataModule(manifest=str(tiny_corpus.train_manifest),
                                      heldout_manifest=str(tiny_corpus.heldout_manifest),
                                      forget_groups=[tiny_corpus.artists[0]], num_samples=TINY_SAMPLES,
                                      cache_dir=str(tmp_path / "cache"), encode_batch_size=4)
        _trainer(TargetCacheWriter()).predict(TargetEncoding(tiny_model), datamodule=data, return_predictions=False)

    encode()
    cache = TargetCache(tmp_path / "cache", tiny_model.targets_key())
    assert len(list(cache.folder.glob("*.pt"))) == 12  # train (8) and held-out (4) items
    ids = [item.id for item in read_manifest(tiny_corpus.train_manifest)][:3]
    before = [cache.load(item_id) for item_id in ids]
    paths = [cache.path(item_id) for item_id in ids]
    _corrupt_three(paths, Kind(_target, lambda path: save_verified(
        {"id": ids[2], "targets": torch.full_like(before[2][0], NAN), "num_valid": before[2][1]}, path)))
    assert cache.to_encode(ids) == ids
    encode()
    for item_id, (targets, num_valid) in zip(ids, before, strict=True):
        again, again_valid = cache.load(item_id)
        assert torch.equal(again, targets) and again_valid == num_valid


def test_the_fisher_pass_computes_a_corrupt_file_again_to_the_same_values(tiny_corpus, tiny_model_dir, tmp_path,
                                                                          caplog):
    path = tmp_path / "fisher.pt"

    def estimate() -> FisherEstimation:
        module = FisherEstimation(ToyTextToMusic.from_pretrained(tiny_model_dir), str(path),
                                  parameter_groups=["cross_attention"])
        data = ItemsDataModule(str(tiny_corpus.train_manifest), batch_size=4, sample_rate=16000,
                               num_samples=TINY_SAMPLES)
        _trainer().predict(module, datamodule=data, return_predictions=False)
        return module

    first = estimate()
    fisher, _ = FisherFile(path).load(**first.recipe)
    _cut_in_half(path, KINDS["fisher"])
    with caplog.at_level(logging.WARNING, logger="lightning_modules.attribution.fisher"):
        again = estimate()
    assert not again.reused and str(path) in caplog.text
    rebuilt, _ = FisherFile(path).load(**first.recipe)
    assert all(torch.allclose(rebuilt[name], fisher[name], rtol=1e-6, atol=0) for name in fisher)
