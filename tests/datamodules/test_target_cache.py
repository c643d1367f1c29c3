"""The target cache: the encoding pass (``train.py predict`` with `TargetCacheWriter`), resumed (encoding again a
missing item and a corrupt one) and sharded over two DDP processes, and DataModules whose losses read the cache
instead of encoding audio; a corrupt item file is refused by name when read."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules import ForgetRetainDataModule
from datamodules.target_cache import TargetCache
from lightning_modules.encoding import TargetEncoding
from lightning_modules.io import CorruptFileError, digest_path
from tests.conftest import TINY_SAMPLES, run_train


def _encode(tiny_corpus, tiny_model_dir, cache_dir, *flags: str) -> None:
    run_train("predict", "--config", "configs/encode.yaml", "--model.init_args.model.init_args.pretrained",
              str(tiny_model_dir), "--data", "datamodules.ForgetRetainDataModule",
              "--data.manifest", str(tiny_corpus.train_manifest), "--data.heldout_manifest",
              str(tiny_corpus.heldout_manifest), f"--data.forget_groups=[{tiny_corpus.artists[0]}]",
              "--data.cache_dir", str(cache_dir), "--data.encode_batch_size", "3", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(cache_dir.parent / "logs"),
              *flags)


def _data(tiny_corpus, cache_dir=None) -> ForgetRetainDataModule:
    return ForgetRetainDataModule(manifest=str(tiny_corpus.train_manifest),
                                  heldout_manifest=str(tiny_corpus.heldout_manifest),
                                  forget_groups=[tiny_corpus.artists[0]], batch_size=4, eval_batch_size=4,
                                  num_samples=TINY_SAMPLES, cache_dir=None if cache_dir is None else str(cache_dir))


def _attach(data: ForgetRetainDataModule, model, stage: str = "fit") -> ForgetRetainDataModule:
    trainer = L.Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(TargetEncoding(model))  # what fit / predict do before the DataModule's setup
    data.trainer = trainer
    data.setup(stage)
    return data


def test_encoding_pass_resumes_and_losses_read_the_cache(tiny_corpus, tiny_model_dir, tiny_model, tmp_path):
    cache_dir = tmp_path / "cache"
    _encode(tiny_corpus, tiny_model_dir, cache_dir)
    cache = TargetCache(cache_dir, tiny_model.targets_key())
    ids = [item.id for item in _attach(_data(tiny_corpus), tiny_model).all_items()]
    assert len(ids) == 12 and not cache.missing(ids)  # train (8) and held-out (4) items

    victim, corrupt = cache.path(ids[5]), cache.path(ids[2])
    victim.unlink()
    before, _ = cache.load(ids[2])
    corrupt.write_bytes(b"\x00" * 200)  # a damaged file: refused by name when read, encoded again by the pass
    with pytest.raises(CorruptFileError, match=f"{corrupt}.*encoding pass") as error:
        cache.load(ids[2])
    assert "weights_only" not in str(error.value)
    again = {victim, digest_path(victim), corrupt, digest_path(corrupt)}
    others = {path: path.stat().st_mtime_ns for path in cache.folder.iterdir() if path not in again}
    _encode(tiny_corpus, tiny_model_dir, cache_dir)  # resumes: only the missing and the corrupt item are encoded again
    assert victim.is_file()
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in others.items())
    assert torch.equal(cache.load(ids[2])[0], before)

    plain = _attach(_data(tiny_corpus), tiny_model)
    cached = _attach(_data(tiny_corpus, cache_dir), tiny_model)
    batch_plain = torch.utils.data.default_collate([plain.split_dataset("forget")[i] for i in range(4)])
    batch_cached = torch.utils.data.default_collate([cached.split_dataset("forget")[i] for i in range(4)])
    assert "audio" not in batch_cached and "targets" in batch_cached  # training sets skip decoding
    assert torch.equal(batch_cached["mask"], batch_plain["mask"])
    inputs = tiny_model.fixed_loss_inputs(batch_plain["id"])
    with torch.no_grad():
        assert torch.equal(tiny_model.loss(batch_cached, **inputs), tiny_model.loss(batch_plain, **inputs))
    assert "audio" in cached.eval_datasets()["forget"][0]  # evaluation compares generations with the audio


def test_a_missing_item_fails_with_the_command_to_run(tiny_corpus, tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="train.py predict --config configs/encode.yaml"):
        _attach(_data(tiny_corpus, tmp_path / "empty"), tiny_model)


def test_the_key_follows_the_encoder_and_the_clip_length(tiny_model, tiny_model_dir):
    from lightning_modules.models import ToyTextToMusic

    other = ToyTextToMusic.from_pretrained(tiny_model_dir)
    assert other.targets_key() == tiny_model.targets_key()
    other.num_samples = TINY_SAMPLES * 2
    assert other.targets_key() != tiny_model.targets_key()


@pytest.mark.ddp
def test_encoding_sharded_over_two_processes_writes_every_item_once(tiny_corpus, tiny_model_dir, tiny_model,
                                                                    tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _encode(tiny_corpus, tiny_model_dir, single)
    _encode(tiny_corpus, tiny_model_dir, ddp, "--trainer.strategy=ddp", "--trainer.devices=2")
    key = tiny_model.targets_key()
    names = sorted(path.name for path in (ddp / key).glob("*.pt"))
    assert names == sorted(path.name for path in (single / key).glob("*.pt")) and len(names) == 12
    assert all(digest_path(ddp / key / name).is_file() for name in names)
    for name in names:
        a, b = (torch.load(root / key / name, weights_only=True) for root in (single, ddp))
        assert a["id"] == b["id"] and a["num_valid"] == b["num_valid"]
        assert torch.allclose(a["targets"], b["targets"], atol=1e-6)
