"""The LDS benchmark's files (`LdsBenchmark`: recipe, resumable subset models) and `scripts/lds.py evaluate` on an
additive world, where the true effects must score exactly 1."""

import json

import pytest
import torch

from datamodules.attribution_store import AttributionStore, LdsBenchmark
from datamodules.manifest import read_queries
from scripts import lds
from tests.conftest import tiny_lds_world


def _recipe(num_models: int = 6) -> dict:
    queries = [f"q{i}" for i in range(4)]
    return {"train_ids": [f"t{i:02d}" for i in range(12)], "query_ids": queries,
            "split": {query: "validation" if i < 2 else "test" for i, query in enumerate(queries)},
            "fraction": 0.5, "seed": 3, "num_models": num_models, "draws": 8}


def test_subsets_are_fixed_by_seed_and_index_and_a_build_resumes(tmp_path):
    benchmark = LdsBenchmark(tmp_path / "lds")
    benchmark.create(_recipe())
    masks = [benchmark.subset(index) for index in range(6)]
    assert all(int(mask.sum()) == 6 for mask in masks) and not torch.equal(masks[0], masks[1])
    assert torch.equal(LdsBenchmark(tmp_path / "lds").subset(4), masks[4])  # another process, the same subset
    assert benchmark.missing() == list(range(6))
    benchmark.write_model(2, torch.ones(4))
    assert benchmark.finished() == [2] and benchmark.missing() == [0, 1, 3, 4, 5]
    benchmark.model_path(2).write_bytes(b"torn")  # a half-written file is trained again, never read
    assert benchmark.missing() == list(range(6))
    benchmark.create(_recipe())  # the same recipe: accepted
    with pytest.raises(ValueError, match=r"another recipe \(keys \['num_models'\]"):
        benchmark.create(_recipe(num_models=8))
    with pytest.raises(ValueError, match="one loss per query"):
        benchmark.write_model(0, torch.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        benchmark.write_model(0, torch.tensor([1.0, float("nan"), 1.0, 1.0]))
    with pytest.raises(ValueError, match="at least 3"):
        benchmark.read()
    with pytest.raises(FileNotFoundError, match="holds no LDS benchmark"):
        LdsBenchmark(tmp_path / "elsewhere").missing()


def test_evaluate_aligns_the_scores_and_gives_the_true_effects_an_lds_of_one(tmp_path):
    from datamodules.manifest import ManifestItem, write_manifest

    benchmark = LdsBenchmark(tmp_path / "lds")
    recipe = _recipe()
    groups = ["A", "B", "C"] * 4  # three artists' tracks, for the group-level truth
    write_manifest([ManifestItem(track, tmp_path / f"{track}.wav", "a caption", group)
                    for track, group in zip(recipe["train_ids"], groups, strict=True)], tmp_path / "train.jsonl")
    recipe["training_config"] = {"data": {"init_args": {"manifest": str(tmp_path / "train.jsonl")}}}
    benchmark.create(recipe)
    effect = torch.randn(4, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for index in range(6):
        benchmark.write_model(index, 5 - benchmark.subset(index).double() @ effect.T)  # loss falls by what helps
    benchmark.write_group("", 5 - effect.sum(1))
    for group in ("A", "C"):  # without a group, each query loses what the group's tracks gave it
        benchmark.write_group(group, 5 - effect[:, [g != group for g in groups]].sum(1))
    store = AttributionStore(tmp_path / "out")
    tracks, queries = [3, 0, 7, 1, 11, 2, 5, 4, 9, 6, 10, 8], [2, 0, 3, 1]  # another order than the benchmark's
    store.write_scores("true", [recipe["train_ids"][j] for j in tracks], [recipe["query_ids"][i] for i in queries],
                       effect[queries][:, tracks].float(), "test")
    result = lds.main(["evaluate", "--benchmark", str(tmp_path / "lds"), "--scores", str(store.scores_path("true"))])
    assert list(result["per_query"]) == ["q2", "q3"] and result["models"] == 6
    assert result["per_query"]["q2"] == pytest.approx(1.0) and result["lds"]["value"] == pytest.approx(1.0)
    assert list(result["groups"]) == ["A", "C"]
    assert all(truth["spearman"] == pytest.approx(1.0) == truth["interval"]["value"]
               for truth in result["groups"].values())
    assert result["groups"]["A"]["effect"]["q3"] == pytest.approx(float(effect[3, 0::3].sum()))
    written = json.loads((tmp_path / "out" / "lds_scores_true.json").read_text())
    assert written["lds"] == result["lds"]
    half = lds.main(["evaluate", "--benchmark", str(tmp_path / "lds"), "--scores", str(store.scores_path("true")),
                     "--models", "3:", "--out", str(tmp_path / "half.json")])
    assert half["models"] == 3 and half["lds"]["value"] == pytest.approx(1.0)
    with pytest.raises(SystemExit):
        lds.main(["evaluate", "--benchmark", str(tmp_path / "lds"), "--scores", str(store.scores_path("true")),
                  "--models", "half"])
    store.write_scores("short", recipe["train_ids"][:-1], recipe["query_ids"], effect[:, :-1].float(), "test")
    with pytest.raises(ValueError, match="training tracks"):
        lds.main(["evaluate", "--benchmark", str(tmp_path / "lds"), "--scores", str(store.scores_path("short"))])


def test_the_cascade_study_keeps_a_perfect_cheap_scores_ranking_and_measures_its_cost(tmp_path):
    """`scripts/cascade_study.py` on the additive world: a cheap score proportional to the true effect (the full
    sweep's scores here) leaves nothing for the cascade to lose (recall 1, LDS 1, the rest calibrated back exactly); a
    random cheap score keeps only the exactly measured tracks, and measuring every track is the full sweep."""
    from scripts import cascade_study

    benchmark = LdsBenchmark(tmp_path / "lds")
    recipe = _recipe()
    benchmark.create(recipe)
    effect = torch.randn(4, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for index in range(6):
        benchmark.write_model(index, 5 - benchmark.subset(index).double() @ effect.T)
    store = AttributionStore(tmp_path / "scores")
    store.write_scores("exact", recipe["train_ids"], recipe["query_ids"], effect.float(), "test")
    store.write_scores("proportional", recipe["train_ids"], recipe["query_ids"], 3 * effect.float(), "test")
    noise = torch.randn(4, 12, generator=torch.Generator().manual_seed(1))
    store.write_scores("random", recipe["train_ids"], recipe["query_ids"], noise, "test")
    run = ["--benchmark", str(tmp_path / "lds"), "--exact", str(store.scores_path("exact")), "--k", "2", "6"]
    perfect = cascade_study.main([*run, "--cheap", str(store.scores_path("proportional")), "--fractions", "0.1",
                                  "--out", str(tmp_path / "perfect")])
    row = perfect["cascades"]["0.1"]
    assert row["measured_tracks"] == 2 and row["fewer_evaluations"] == 6
    assert row["recall@2"]["value"] == row["recall@6"]["value"] == 1.0
    assert row["lds"]["value"] == pytest.approx(1.0) and row["lds_minus_full"]["value"] == pytest.approx(0.0)
    _, _, written = AttributionStore(tmp_path / "perfect").read_scores("cascade_0.1")
    assert torch.allclose(written.double(), effect[2:], atol=1e-6)  # the test split's queries, calibrated exactly
    assert "| cascade, S = 10 % | 2 | 6 |" in (tmp_path / "perfect" / "cascade.md").read_text()
    blind = cascade_study.main([*run, "--cheap", str(store.scores_path("random")), "--fractions", "1", "--split",
                                "all", "--out", str(tmp_path / "blind")])
    assert blind["cascades"]["1"]["recall@6"]["value"] == 1.0 == blind["full_sweep"]["lds"]["value"]
    assert blind["cheap_alone"]["recall@6"]["value"] < 1.0


def test_build_trains_each_shards_subset_models_once_and_measures_every_query(tmp_path, tiny_corpus, tiny_model_dir):
    queries, config = tiny_lds_world(tmp_path, tiny_corpus, tiny_model_dir, max_steps=2)
    args = ["build", "--benchmark", str(tmp_path / "lds"), "--config", str(config), "--queries",
            str(queries), "--num-models", "4", "--draws", "2", "--work-dir", str(tmp_path / "work")]
    assert lds.main([*args, "--shard", "1/2"]) == [1, 3]
    assert lds.main([*args, "--shard", "0/2"]) == [0, 2]
    assert lds.main(args) == []  # all finished: nothing trained again
    benchmark = LdsBenchmark(tmp_path / "lds")
    train_ids, query_ids, masks, losses = benchmark.read()
    assert query_ids == [item.id for item in read_queries(queries)] and len(train_ids) == 8
    assert masks.sum(1).tolist() == [4, 4, 4, 4] and losses.shape == (4, 4)
    assert len(set(losses[:, 0].tolist())) == 4  # each subset trained its own model
    assert benchmark.recipe()["training_config"]["trainer"]["max_steps"] == 2
    assert not list((tmp_path / "work").iterdir())  # no model kept
    artist = tiny_corpus.artists[0]  # group-level truth: a model without the artist, and one without none
    assert lds.main([*args, "--groups", artist]) == ["", artist]
    assert lds.main([*args, "--groups", artist]) == []
    groups = benchmark.groups()
    assert set(groups) == {"", artist} and not torch.equal(groups[""], groups[artist])
    with pytest.raises(ValueError, match="name no group of the training set"):
        lds.main([*args, "--groups", "Nobody"])
    with pytest.raises(ValueError, match=r"another recipe \(keys \['draws'\]"):
        lds.main([*args[:-4], "--draws", "3", "--work-dir", str(tmp_path / "work")])
