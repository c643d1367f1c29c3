"""`UnlearningEvaluation` end to end on the tiny toy world: the report of a fit, its TensorBoard logs, the cached
oracle, `validate` from a checkpoint, and the errors a user can run into."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import UnlearningEvaluation
from callbacks.evaluation import read_cached_measurement
from callbacks.report import describe_weights, gap_to_oracle, markdown_table
from datamodules.manifest import ManifestItem, read_manifest
from datamodules.provenance import RECORD_FILE, TrainingRecord
from lightning_modules.io import read_checked_bytes
from lightning_modules.passes import NonFiniteLossError
from tests.conftest import poison_loss, write_config

GENERATION_METRICS = {"fad", "clap_score", "recognition", "recognition_judge", "kl"}


def test_fit_reports_before_after_and_oracle_for_every_set_and_metric(fitted):
    columns = fitted.results["columns"]
    assert list(columns) == ["before", "after", "oracle"]
    forget = columns["after"]["forget"]
    assert GENERATION_METRICS | {"loss", "mia_auc", "memorization_max_similarity", "copies"} <= set(forget)
    assert GENERATION_METRICS | {"loss", "mia_auc"} <= set(columns["after"]["retain"])
    assert "mia_auc" not in columns["after"]["heldout"]  # the non-members themselves
    # the "oracle" is the unchanged starting model: it measures what "before" measured
    assert columns["oracle"]["forget"] == pytest.approx(columns["before"]["forget"], rel=1e-9)
    assert forget["loss"] > columns["before"]["forget"]["loss"]  # 3 steps of gradient ascent
    gap = fitted.results["gap_to_oracle"]["forget"]["loss"]
    assert gap == pytest.approx(forget["loss"] - columns["oracle"]["forget"]["loss"])
    assert [(entry["step"], entry["column"]) for entry in fitted.results["history"]] == [
        (0, "before"), (2, "step"), (3, "after"), (3, "oracle")]
    table = (fitted.run / "results.md").read_text()
    assert "| set | metric | before | after | oracle | after − before | after − oracle |" in table
    assert "| forget | fad |" in table and "| forget | kad |" in table
    assert "95% percentile bootstrap interval" in table
    timing = fitted.results["timing"]  # batch_size 2 of each set on one process
    assert timing["steps"] == 3 and timing["processes"] == 1 and timing["items_per_step"] == {"forget": 2, "retain": 2}
    assert "Trained 3 steps on 1 process(es), 2 forget + 2 retain items per optimizer step" in table


def test_every_number_has_its_interval_and_the_differences_are_paired(fitted):
    intervals, differences = fitted.results["intervals"], fitted.results["differences"]
    assert fitted.results["bootstrap"]["resamples"] == 1000 and fitted.results["bootstrap"]["confidence"] == 0.95
    for column, results in fitted.results["columns"].items():
        for split, metrics in results.items():
            assert set(intervals[column][split]) == set(metrics)
            for name, value in metrics.items():
                cell = intervals[column][split][name]
                assert cell["value"] == pytest.approx(value) and cell["low"] <= value <= cell["high"], (column, name)
                assert cell["n"] == (3 if name not in ("loss", "mia_auc") else cell["n"])  # 3 prompts per set
    # the "oracle" is the starting model: its draws pair with "before"'s, so both differences are one and the same
    assert differences["after − oracle"] == differences["after − before"]
    forget_loss = differences["after − before"]["forget"]["loss"]
    assert forget_loss["value"] == pytest.approx(fitted.results["columns"]["after"]["forget"]["loss"]
                                                 - fitted.results["columns"]["before"]["forget"]["loss"])
    # paired: the per-item shifts of 3 ascent steps are consistent, so the difference's interval is far narrower
    # than either column's own
    loss = intervals["after"]["forget"]["loss"]
    assert forget_loss["high"] - forget_loss["low"] < 0.5 * (loss["high"] - loss["low"])
    scores = fitted.results["against_oracle"]
    assert set(scores["forget_quality"]) == {"loss", "clap_similarity"}
    assert 0 <= scores["forget_quality"]["loss"] <= 1 and scores["privacy_leakage"]["n"] > 0
    assert scores["model_utility"]["oracle"]["value"] == pytest.approx(1.0)  # the oracle is the base model here
    assert scores["verdict"].startswith("Furthest from the oracle: ")
    table = (fitted.run / "results.md").read_text()
    assert "**Against the oracle.**" in table and scores["verdict"] in table


def test_fit_logs_metrics_audio_mel_images_and_hparams_to_tensorboard(fitted):
    events = EventAccumulator(str(fitted.run), size_guidance={"audio": 0, "images": 0, "scalars": 0}).Reload()
    scalars = events.Tags()["scalars"]
    assert {"eval/forget/fad", "eval/retain/clap_score", "eval/forget/loss", "eval_oracle/forget/fad"} <= set(scalars)
    assert {"eval/forget/fad_low", "eval/forget/fad_high", "eval_oracle/retain/kad_high"} <= set(scalars)
    # each interval at the step of its value: before's at 0, after's at the end; the oracle's across the run
    assert [event.step for event in events.Scalars("eval/forget/loss_low")] == [0, 3]
    assert [event.step for event in events.Scalars("eval_oracle/forget/loss_high")] == [0, 3]
    assert [event.step for event in events.Scalars("eval/forget/loss")] == [0, 2, 3]  # each evaluation once
    assert [event.step for event in events.Scalars("eval_oracle/forget/loss")] == [0, 3]  # a line across the run
    assert [event.step for event in events.Scalars("final/forget/loss")] == [3]  # the hparams' metric
    audio = set(events.Tags()["audio"])
    assert {"clips/forget/0/before", "clips/forget/0/step", "clips/forget/0/after", "clips/forget/0/oracle"} <= audio
    assert "clips/forget/1/after" not in audio  # log_audio: 1
    assert [event.step for event in events.Audio("clips/forget/0/after")] == [3]
    assert {"clips/retain/0/before/mel", "clips/retain/0/oracle/mel"} <= set(events.Tags()["images"])
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins
    hparams = yaml.safe_load((fitted.run / "hparams.yaml").read_text())
    assert hparams["method"] == "GradientAscent" and hparams["optimizer.lr"] == 0.05
    assert hparams["data.forget_groups"] == str([fitted.forget_group])
    assert events.PluginTagToContent("custom_scalars")  # the layout that puts model and oracle on one chart


def test_oracle_before_and_reference_statistics_are_cached(fitted):
    assert len(list((fitted.cache / "evaluation").glob("*.pt"))) == 2  # the oracle, "before"; with per-item values
    assert len(list((fitted.cache / "reference_embeddings").glob("*.pt"))) == 3  # forget, retain, heldout


def test_a_second_run_reads_the_cache_and_trains_exactly_as_the_first(fitted, caplog):
    """The evaluation leaves the global random state alone: reading references and "before" from the cache instead of
    measuring them must not change which batches and noise training draws."""
    from train import main

    with caplog.at_level(logging.INFO, logger="callbacks"):
        cli = main(["fit", "--config", str(fitted.config)])
    assert "Results of the model at fit start (weights " in caplog.text and "read from the cache" in caplog.text
    again = json.loads((Path(cli.trainer.log_dir) / "results.json").read_text())["columns"]
    assert again == fitted.results["columns"]


def test_corrupt_cached_results_and_references_are_measured_again(fitted, caplog):
    """A damaged cache file is named in a warning and measured again (to the same numbers), never trusted."""
    from train import main

    results = sorted((fitted.cache / "evaluation").glob("*.pt"))  # the oracle's and "before"'s
    reference = sorted((fitted.cache / "reference_embeddings").glob("*.pt"))[0]
    for path in results:
        path.write_bytes(b"\xff\xfe not a tensor file")
    reference.write_bytes(reference.read_bytes()[: reference.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="lightning_modules.io"):
        cli = main(["fit", "--config", str(fitted.config)])
    assert all(str(path) in caplog.text for path in [*results, reference])
    again = json.loads((Path(cli.trainer.log_dir) / "results.json").read_text())["columns"]
    assert again == fitted.results["columns"]
    assert sorted(str(read_cached_measurement(path).results) for path in results) == sorted(
        str(fitted.results["columns"][column]) for column in ("oracle", "before"))
    assert read_checked_bytes(reference, "reference", "")  # rewritten with its digest


def test_validate_from_a_checkpoint_gives_the_same_report(fitted, caplog):
    from train import main

    assert fitted.checkpoint
    with caplog.at_level(logging.INFO, logger="callbacks"):
        cli = main(["validate", "--config", str(fitted.config), f"--ckpt_path={fitted.checkpoint}"])
    results = json.loads((Path(cli.trainer.log_dir) / "results.json").read_text())
    columns = results["columns"]
    assert list(columns) == ["before", "model", "oracle"]
    assert columns["before"] == fitted.results["columns"]["before"]  # restored from the checkpoint
    assert columns["oracle"] == fitted.results["columns"]["oracle"]
    assert "read from the cache" in caplog.text
    assert columns["model"]["forget"]["loss"] == pytest.approx(fitted.results["columns"]["after"]["forget"]["loss"],
                                                               rel=1e-5)


def test_bad_arguments_are_refused_with_the_value_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="oracle folder .*nowhere"):
        UnlearningEvaluation(oracle=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="num_prompts must be at least 1"):
        UnlearningEvaluation(num_prompts=0)
    with pytest.raises(ValueError, match="every_n_train_steps"):
        UnlearningEvaluation(every_n_train_steps=-1)
    with pytest.raises(ValueError, match="resamples must be at least 1"):
        UnlearningEvaluation(resamples=0)
    with pytest.raises(ValueError, match="confidence must lie in"):
        UnlearningEvaluation(confidence=95)


def test_a_model_is_described_by_what_it_saves(tiny_model_dir):
    """The cache key of "before": equal for two loads of one folder, different after one weight moves."""
    from lightning_modules.models import ToyTextToMusic

    first, second = ToyTextToMusic.from_pretrained(tiny_model_dir), ToyTextToMusic.from_pretrained(tiny_model_dir)
    assert describe_weights(first) == describe_weights(second)
    with torch.no_grad():
        next(second.unet.parameters()).view(-1)[0] += 1e-3
    assert describe_weights(first) != describe_weights(second)


def test_the_report_says_the_oracle_is_unchecked(fitted):
    assert fitted.results["oracle_provenance"] == "unchecked: the oracle has no record of its training data"
    assert "unchecked: the oracle has no record" in (fitted.run / "results.md").read_text()


def test_a_run_stops_before_training_on_an_oracle_of_another_forget_set(tmp_path, tiny_corpus, tiny_model_dir):
    """The new user's mistake: the shipped oracle (trained without one artist) kept while forgetting another."""
    from train import main

    oracle = Path(shutil.copytree(tiny_model_dir, tmp_path / "oracle"))
    members = read_manifest(tiny_corpus.train_manifest)
    other = [item for item in members if item.group == tiny_corpus.artists[1]]
    TrainingRecord.of(str(tiny_corpus.train_manifest), [item for item in members if item not in other], other,
                      [tiny_corpus.artists[1]]).write(oracle)
    config = write_config(tmp_path, tiny_corpus, tiny_model_dir, evaluation={"oracle": str(oracle)})
    other_artist = tiny_corpus.artists[1]
    with pytest.raises(ValueError, match=rf"The oracle {oracle} is not the oracle of this run's forget set: it was "
                                         rf"trained on .*without \['{other_artist}'\], while this run forgets"):
        main(["fit", "--config", str(config), "--trainer.max_steps=1"])
    assert not list((tmp_path / "logs").rglob("*.ckpt"))  # refused before any training step

    (oracle / RECORD_FILE).unlink()
    with pytest.raises(ValueError, match=f"The oracle {oracle} has no training_data.json.*oracle_unchecked: true"):
        main(["fit", "--config", str(config), "--trainer.max_steps=1"])


def test_a_datamodule_without_evaluation_sets_is_refused():
    trainer = SimpleNamespace(datamodule=object())
    with pytest.raises(TypeError, match="eval_datasets"):
        UnlearningEvaluation().setup(trainer, None, "fit")


def test_recognition_refuses_a_mix_of_grouped_and_ungrouped_items(tiny_clap_dir):
    from lightning_modules.metrics import ClapEmbedder

    grouped = ManifestItem(id="a", path=Path("a.wav"), caption="x", group="Artist")
    ungrouped = ManifestItem(id="b", path=Path("b.wav"), caption="y")
    datamodule = SimpleNamespace(eval_datasets=dict, sets={"forget": [grouped], "retain": [ungrouped]})
    with pytest.raises(ValueError, match="group for every item.*'b'"):
        UnlearningEvaluation(clap=ClapEmbedder(tiny_clap_dir)).setup(SimpleNamespace(datamodule=datamodule), None, "")


def test_markdown_table_and_gap_to_oracle():
    columns = {"before": {"forget": {"loss": 1.0, "fad": 2.0}}, "after": {"forget": {"loss": 3.0, "fad": 5.0}},
               "oracle": {"forget": {"loss": 2.5, "fad": float("nan")}}}
    assert gap_to_oracle(columns, "after")["forget"]["loss"] == pytest.approx(0.5)
    table = markdown_table(columns, "after").splitlines()
    assert table[0] == "| set | metric | before | after | oracle | after − oracle |"
    assert table[2] == "| forget | loss | 1.0000 | 3.0000 | 2.5000 | +0.5000 |"
    assert table[3] == "| forget | fad | 2.0000 | 5.0000 | – | – |"
    assert gap_to_oracle({"after": columns["after"]}, "after") == {}
    cell = {"value": 3.0, "low": 2.5, "high": 3.5, "n": 16}
    difference = {"value": 2.0, "low": 1.0, "high": 3.0, "n": 16, "excludes_zero": True}
    table = markdown_table({"after": columns["after"]}, "after", {"after": {"forget": {"loss": cell}}},
                           {"after − before": {"forget": {"loss": difference}}}).splitlines()
    assert table[0] == "| set | metric | after | after − before |"
    assert table[2] == "| forget | loss | 3.0000 [2.5000, 3.5000] | +2.0000 [+1.0000, +3.0000] * |"
    assert "(n = 16)" in table[-1]


def test_a_non_finite_loss_raises_naming_the_item_and_writes_no_results(tmp_path, tiny_corpus, tiny_model_dir,
                                                                        monkeypatch):
    from train import main

    forget = sorted(item.id for item in read_manifest(tiny_corpus.train_manifest)
                    if item.group == tiny_corpus.artists[0])
    poison_loss(monkeypatch, {forget[1]})
    config = write_config(tmp_path, tiny_corpus, tiny_model_dir)
    with pytest.raises(NonFiniteLossError, match=f"fixed-noise loss of the forget set is not finite .* for 1 of "
                                                 f"{len(forget)} item\\(s\\): \\['{forget[1]}'\\]") as error:
        main(["fit", "--config", str(config)])  # the "before" evaluation, at fit start
    assert error.value.ids == [forget[1]]
    assert not list(tmp_path.rglob("results.*")) and not list(tmp_path.rglob("*.ckpt"))


def test_more_generations_than_items_cycle_through_the_items_each_with_its_own_seed():
    items = [{"caption": f"caption {i}"} for i in range(3)]
    one_process = SimpleNamespace(global_rank=0, world_size=1)
    cycled = UnlearningEvaluation(num_prompts=7)
    assert cycled.prompt_indices(items) == [0, 1, 2, 0, 1, 2, 0]
    generations = list(cycled._prompt_loader(one_process, items).dataset)
    assert [g["index"] for g in generations] == list(range(7))  # seed offsets: item + 3 x round, all distinct
    assert [g["caption"] for g in generations][3:] == ["caption 0", "caption 1", "caption 2", "caption 0"]
    spaced = UnlearningEvaluation(num_prompts=2)
    assert [g["index"] for g in spaced._prompt_loader(one_process, items).dataset] == [0, 2]  # the item indices
    second_rank = SimpleNamespace(global_rank=1, world_size=2)
    assert [g["index"] for g in cycled._prompt_loader(second_rank, items).dataset] == [1, 3, 5]


def test_setup_warns_of_groups_the_clap_cannot_read_and_of_a_fad_on_too_few_clips(tiny_clap_dir, tiny_corpus,
                                                                                    caplog):
    """The toy CLAP's tokenizer knows only its corpus's words: a user's own artist reads as unknown tokens."""
    from lightning_modules.metrics import ClapEmbedder

    known = ManifestItem(id="a", path=Path("a.wav"), caption="x", group=tiny_corpus.artists[0])
    mine = ManifestItem(id="b", path=Path("b.wav"), caption="y", group="Zyxw Garage")
    datamodule = SimpleNamespace(eval_datasets=lambda: {"forget": [known], "retain": [mine, known, mine]},
                                 sets={"forget": [known], "retain": [mine]})
    with caplog.at_level(logging.WARNING, logger="callbacks"):
        UnlearningEvaluation(clap=ClapEmbedder(tiny_clap_dir), num_prompts=3).setup(
            SimpleNamespace(datamodule=datamodule), None, "")
    assert "cannot name ['Zyxw Garage']: its tokenizer does not know the words {'Zyxw Garage': ['Zyxw', 'Garage']}" \
        in caplog.text
    assert "FAD compares fewer clips than its embeddings have dimensions (16) in forget (1 clips), retain (3 clips)" \
        in caplog.text
