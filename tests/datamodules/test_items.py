"""`ItemsDataModule`: every item once in manifest order, cached targets read instead of encoded (complete caches only),
and a second manifest of queries served with audio, shard by shard."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from datamodules import read_manifest
from datamodules.audio import AudioTextDataset
from datamodules.items import ItemsDataModule
from datamodules.target_cache import TargetCache
from lightning_modules.encoding import TargetEncoding
from tests.conftest import TINY_SAMPLES


def _data(tiny_corpus, **kwargs) -> ItemsDataModule:
    return ItemsDataModule(str(tiny_corpus.train_manifest), batch_size=3, sample_rate=16000,
                           num_samples=TINY_SAMPLES, **kwargs)


def _attach(data: ItemsDataModule, model) -> ItemsDataModule:
    trainer = L.Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(TargetEncoding(model))  # what predict does before the DataModule's setup
    data.trainer = trainer
    data.setup("predict")
    return data


@pytest.fixture
def cache_dir(tmp_path, tiny_corpus, tiny_model):
    """A target cache of every training item, written item by item as the encoding pass does."""
    cache = TargetCache(tmp_path / "cache", tiny_model.targets_key())
    dataset = AudioTextDataset(read_manifest(tiny_corpus.train_manifest), 16000, TINY_SAMPLES)
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            targets = tiny_model.encode_audio(item["audio"][None], item["mask"][None])[0]
            cache.save(item["id"], targets, int(item["mask"].sum()))
    return tmp_path / "cache"


def test_batches_carry_the_cached_targets(tiny_corpus, tiny_model, cache_dir):
    ids = [item.id for item in read_manifest(tiny_corpus.train_manifest)]
    data = _attach(_data(tiny_corpus, cache_dir=str(cache_dir)), tiny_model)
    batches = list(data.predict_dataloader())
    assert [item_id for batch in batches for item_id in batch["id"]] == ids  # every item once, in manifest order
    for batch in batches:
        assert {"audio", "targets", "mask"} <= set(batch)
        assert torch.allclose(batch["targets"], tiny_model.encode_audio(batch["audio"], batch["mask"]), atol=1e-6)
    targets_only = _attach(_data(tiny_corpus, cache_dir=str(cache_dir), with_audio=False), tiny_model)
    first = next(iter(targets_only.predict_dataloader()))
    assert "audio" not in first and torch.equal(first["targets"], batches[0]["targets"])
    assert torch.equal(first["mask"], batches[0]["mask"])
    plain = next(iter(_attach(_data(tiny_corpus), tiny_model).predict_dataloader()))
    assert "targets" not in plain  # without cache_dir the model encodes the audio itself


def test_an_incomplete_cache_fails_with_the_command_to_run(tiny_corpus, tiny_model, cache_dir):
    cache = TargetCache(cache_dir, tiny_model.targets_key())
    missing = read_manifest(tiny_corpus.train_manifest)[3].id
    cache.path(missing).unlink()
    with pytest.raises(FileNotFoundError, match=rf"1 item\(s\) have no cached targets.*{missing}.*configs/encode.yaml"):
        _attach(_data(tiny_corpus, cache_dir=str(cache_dir)), tiny_model)


def test_queries_are_a_second_manifest_served_with_audio_in_shards(tmp_path, tiny_corpus, tiny_model, cache_dir):
    heldout = [item.id for item in read_manifest(tiny_corpus.heldout_manifest)]
    data = _attach(_data(tiny_corpus, cache_dir=str(cache_dir), with_audio=False,
                         queries=str(tiny_corpus.heldout_manifest)), tiny_model)
    assert [item.id for item in data.query_items()] == heldout
    batches = list(data.query_dataloader())
    assert [len(batch["id"]) for batch in batches] == [3, 1]
    assert all("audio" in batch and "targets" not in batch for batch in batches)  # queries never come from the cache
    shares = [[i for batch in data.query_dataloader(rank, 2) for i in batch["id"]] for rank in (0, 1)]
    assert shares == [heldout[0::2], heldout[1::2]]
    with pytest.raises(ValueError, match=r"rank must lie in \[0, 2\)"):
        data.query_dataloader(2, 2)

    without = _attach(_data(tiny_corpus), tiny_model)
    assert without.query_items() == []
    with pytest.raises(ValueError, match="data.init_args.queries"):
        without.query_dataloader()
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl.*lists no item"):
        _attach(_data(tiny_corpus, queries=str(tmp_path / "empty.jsonl")), tiny_model)
    (tmp_path / "missing.jsonl").write_text(json.dumps({"id": "q", "path": "nowhere.wav", "caption": "c"}) + "\n")
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        _attach(_data(tiny_corpus, queries=str(tmp_path / "missing.jsonl")), tiny_model)
