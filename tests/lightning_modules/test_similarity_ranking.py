"""The similarity baselines as a ``train.py predict`` pass: the ranking files of every query, scores equal to the cosine
of directly computed features, a query that is a training track ranks itself first, two DDP processes rank as one,
and clear errors on bad inputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from datamodules import ManifestItem, read_manifest, write_manifest
from datamodules.attribution_store import GROUP_COLUMNS, RANKING_COLUMNS, AttributionStore
from datamodules.audio import AudioTextDataset
from datamodules.items import ItemsDataModule
from lightning_modules.attribution import similarity
from lightning_modules.attribution.ranking import SimilarityRanking
from lightning_modules.attribution.similarity import (
    ActivationSimilarity,
    ClapSimilarity,
    GradientSimilarity,
    cosine_scores,
)
from lightning_modules.metrics.clap import ClapEmbedder
from lightning_modules.models import ToyTextToMusic
from tests.conftest import REPO, TINY_SAMPLES

GRADIENT = {"parameter_groups": ["cross_attention"], "timestep": 100, "projection_dim": 64}
# 8 training tracks in 16 dimensions: the kernel's Gram matrix has rank 8 and needs the damping
BASELINES = {"activation": ("ActivationSimilarity", {"module": "unet.mid_block", "timestep": 50}),
             "gradient": ("GradientSimilarity", GRADIENT),
             "trak": ("TrakScores", {**GRADIENT, "projection_dim": 16, "draws": 2})}


@pytest.fixture(scope="module")
def queries(tmp_path_factory, tiny_corpus):
    """A queries manifest: two training tracks (each must rank itself first) and two held-out tracks."""
    train, heldout = read_manifest(tiny_corpus.train_manifest), read_manifest(tiny_corpus.heldout_manifest)
    path = tmp_path_factory.mktemp("queries") / "queries.jsonl"
    write_manifest([train[1], train[6], heldout[0], heldout[3]], path)
    return path


def _rank(model, baseline, corpus, queries, out_dir, name, logger=False) -> SimilarityRanking:
    module = SimilarityRanking(model, baseline, out_dir=str(out_dir), name=name, top_k=3)
    data = ItemsDataModule(str(corpus.train_manifest), batch_size=3, sample_rate=16000, num_samples=TINY_SAMPLES,
                           queries=str(queries))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                        enable_model_summary=False)  # default inference_mode=True: the gradient baseline re-enables
    trainer.predict(module, datamodule=data, return_predictions=False)
    return module


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_corpus, tiny_model_dir, queries):
    """`single_run(kind)`: the single-process pass of a baseline of `BASELINES` (run once per module):
    the finished module, its model and its out_dir."""
    runs: dict[str, tuple] = {}

    def run(kind: str) -> tuple[SimilarityRanking, ToyTextToMusic, object]:
        if kind not in runs:
            model = ToyTextToMusic.from_pretrained(tiny_model_dir)
            name, options = BASELINES[kind]
            baseline = getattr(similarity, name)(**options)
            out_dir = tmp_path_factory.mktemp(kind)
            runs[kind] = (_rank(model, baseline, tiny_corpus, queries, out_dir, kind), model, out_dir)
        return runs[kind]

    return run


def _direct(baseline, model, manifest) -> tuple[list[str], torch.Tensor]:
    """Features of every item of `manifest` computed in one go, outside Lightning."""
    loader = DataLoader(AudioTextDataset(read_manifest(manifest), 16000, TINY_SAMPLES), batch_size=4)
    features = baseline.features(list(loader), model)
    return features.ids, features.vectors


def test_the_pass_writes_each_querys_ranking_of_cosine_scores(tmp_path, tiny_corpus, tiny_model, tiny_clap_dir,
                                                              queries):
    baseline = ClapSimilarity(ClapEmbedder(tiny_clap_dir))
    _rank(tiny_model, baseline, tiny_corpus, queries, tmp_path / "out", "clap",
          logger=TensorBoardLogger(tmp_path / "logs"))
    train_ids, train = _direct(baseline, tiny_model, tiny_corpus.train_manifest)
    query_ids, query = _direct(baseline, tiny_model, queries)
    expected = cosine_scores(query, train)

    ids, written_query_ids, scores = AttributionStore(tmp_path / "out").read_scores("clap")
    assert ids == train_ids and written_query_ids == query_ids and scores.shape == (4, 8)
    assert torch.allclose(scores, expected, atol=1e-5)
    for row, query_id in enumerate(query_ids):
        folder = tmp_path / "out" / query_id / "clap"
        assert {path.name for path in folder.iterdir()} == {"ranking.csv", "ranking.json", "groups.csv",
                                                            "groups.json", "top_tracks.md", "top_tracks.png"}
        with (folder / "ranking.csv").open() as f:
            assert tuple(csv.DictReader(f).fieldnames) == RANKING_COLUMNS
        with (folder / "groups.csv").open() as f:
            assert tuple(csv.DictReader(f).fieldnames) == GROUP_COLUMNS
        ranking = json.loads((folder / "ranking.json").read_text())
        assert [entry["id"] for entry in ranking] == [train_ids[i] for i in expected[row].argsort(descending=True)]
        assert torch.allclose(torch.tensor([entry["score"] for entry in ranking]),
                              expected[row].sort(descending=True).values, atol=1e-5)
        assert len((folder / "top_tracks.md").read_text().splitlines()) == 2 + 3  # header and top_k rows
    assert [json.loads((tmp_path / "out" / q / "clap" / "ranking.json").read_text())[0]["id"]
            for q in query_ids[:2]] == query_ids[:2]  # a training track as a query ranks itself first
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))  # rankings logged to TensorBoard


@pytest.mark.parametrize("kind", list(BASELINES))
def test_model_baselines_under_inference_mode(tiny_corpus, tiny_model, queries, single_run, kind):
    module, model, _ = single_run(kind)
    assert not any(param.requires_grad for param in model.parameters())  # frozen by the pass, groups restored after
    _, train = _direct(module.baseline, tiny_model, tiny_corpus.train_manifest)
    _, query = _direct(module.baseline, tiny_model, queries)
    assert module.scores is not None and torch.allclose(module.scores, module.baseline.match(query, train), atol=1e-5)
    assert module.scores[:2].argmax(dim=1).tolist() == [1, 6]  # the training tracks among the queries


@pytest.mark.ddp
def test_two_ddp_processes_rank_as_one(tmp_path, tiny_corpus, tiny_model_dir, queries, single_run, kind="trak"):
    # TRAK: the tracks' features and scores gathered as every baseline's are, and the Gram matrix summed over ranks
    _, _, single_dir = single_run(kind)
    config = yaml.safe_load((REPO / "configs" / "attribution" / "similarity_gradient.yaml").read_text())
    config["trainer"].update(accelerator="cpu", enable_progress_bar=False, logger=False,
                             default_root_dir=str(tmp_path / "logs"))
    config["model"]["init_args"].update(
        model={"class_path": "lightning_modules.models.ToyTextToMusic",
               "init_args": {"pretrained": str(tiny_model_dir)}},
        out_dir=str(tmp_path / "ddp"), top_k=3)
    name, options = BASELINES[kind]
    config["model"]["init_args"]["baseline"] = {"class_path": f"lightning_modules.attribution.similarity.{name}",
                                                "init_args": options}
    config["model"]["init_args"]["name"] = kind
    # 8 items in batches of 3: 4 per rank (2 batches each); 4 queries: 2 per rank
    config["data"]["init_args"] = {"manifest": str(tiny_corpus.train_manifest), "queries": str(queries),
                                   "batch_size": 3}
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "train.py", "predict", "--config", str(tmp_path / "ddp.yaml"),
                             "--trainer.strategy=ddp", "--trainer.devices=2"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single_ids, single_queries, single = AttributionStore(single_dir).read_scores(kind)
    ddp_ids, ddp_queries, ddp = AttributionStore(tmp_path / "ddp").read_scores(kind)
    assert ddp_ids == single_ids and ddp_queries == single_queries
    assert torch.allclose(ddp, single, atol=1e-5)
    for query_id in single_queries:
        rankings = [json.loads((run / query_id / kind / "ranking.json").read_text())
                    for run in (single_dir, tmp_path / "ddp")]
        assert [entry["id"] for entry in rankings[0]] == [entry["id"] for entry in rankings[1]]


def test_bad_inputs_fail_with_clear_errors(tmp_path, tiny_corpus, tiny_model, tiny_clap_dir):
    baseline = ClapSimilarity(ClapEmbedder(tiny_clap_dir))
    train = read_manifest(tiny_corpus.train_manifest)
    bad = ManifestItem(id="piece 1/take", path=train[0].path, caption="a piece")
    write_manifest([bad], tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match=r"Query id \(in .*bad.jsonl\) 'piece 1/take' cannot be used as a folder"):
        _rank(tiny_model, baseline, tiny_corpus, tmp_path / "bad.jsonl", tmp_path / "out", "clap")
    clash = ManifestItem(id="scores_clap.pt", path=train[0].path, caption="a piece")
    write_manifest([clash], tmp_path / "clash.jsonl")
    with pytest.raises(ValueError, match="'scores_clap.pt' is the name of the score file"):
        _rank(tiny_model, baseline, tiny_corpus, tmp_path / "clash.jsonl", tmp_path / "out", "clap")

    module = SimilarityRanking(tiny_model, baseline, out_dir=str(tmp_path / "out"), name="clap")
    no_queries = ItemsDataModule(str(tiny_corpus.train_manifest), sample_rate=16000, num_samples=TINY_SAMPLES)
    with pytest.raises(ValueError, match="No queries.*data.init_args.queries"):
        L.Trainer(accelerator="cpu", logger=False).predict(module, datamodule=no_queries)
    assert not (tmp_path / "out").exists()

    with pytest.raises(ValueError, match="name '../clap' cannot be used as a folder name"):
        SimilarityRanking(tiny_model, baseline, out_dir=str(tmp_path), name="../clap")
    with pytest.raises(ValueError, match="top_k"):
        SimilarityRanking(tiny_model, baseline, out_dir=str(tmp_path), name="clap", top_k=0)
    with pytest.raises(ValueError, match="No module named 'unet.mid_blok'"):
        SimilarityRanking(tiny_model, ActivationSimilarity("unet.mid_blok"), out_dir=str(tmp_path), name="a")
    with pytest.raises(ValueError, match="Unknown parameter group"):
        SimilarityRanking(tiny_model, GradientSimilarity(["attention"]), out_dir=str(tmp_path), name="g")


def test_every_item_is_scored_exactly_once(tmp_path, tiny_corpus, tiny_model, tiny_clap_dir, queries):
    rows, index = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1, 0, 1])  # item 1 served by two ranks
    assert SimilarityRanking._assemble(rows, index, 2, "items").flatten().tolist() == [2.0, 1.0]  # first one kept
    with pytest.raises(RuntimeError, match=r"1 of 3 items were never measured \(positions \[2\]\)"):
        SimilarityRanking._assemble(rows, index, 3, "items")
    module = SimilarityRanking(tiny_model, ClapSimilarity(ClapEmbedder(tiny_clap_dir)), str(tmp_path), "clap")
    data = ItemsDataModule(str(tiny_corpus.train_manifest), batch_size=3, sample_rate=16000, num_samples=TINY_SAMPLES,
                           queries=str(queries))
    trainer = L.Trainer(accelerator="cpu", logger=False, limit_predict_batches=1, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="5 of 8 training items were never measured.*limit_predict_batches"):
        trainer.predict(module, datamodule=data, return_predictions=False)
