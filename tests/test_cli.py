"""End-to-end runs of the CLI on the tiny toy world: single process, DDP on two CPU processes, bf16-mixed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, run_train, write_config

# parts of train.py configs (model/, data/, trainer/) and the attribution study's own configs (study/, parsed by
# scripts/attribution_study.py: tests/test_scripts.py) are not whole train.py configs
OVERLAYS = ["configs/toy/another_seed.yaml"]  # read after another config, not alone
CONFIGS = sorted(str(path.relative_to(REPO)) for path in (REPO / "configs").rglob("*.yaml")
                 if path.parent.name not in ("model", "data", "trainer", "study")
                 and str(path.relative_to(REPO)) not in OVERLAYS)


BF16_LOSS_REL = 1e-3  # "after" losses of 2 bf16-mixed training steps against fp32: measured 7.5e-5 at most; 13x margin


def _run(config: Path, *overrides: str) -> dict:
    run_train("fit", "--config", str(config), *overrides, timeout=600)
    logs = config.parent / "logs" / "lightning_logs"
    run = sorted(logs.iterdir())[-1]
    results = json.loads((run / "results.json").read_text())
    return {"report": results["columns"], "intervals": results["intervals"], "dir": run}


def test_fit_in_process_writes_report_model_config_and_logs(tmp_path, tiny_corpus, tiny_model_dir):
    from train import main

    config = write_config(tmp_path, tiny_corpus, tiny_model_dir)
    cli = main(["fit", "--config", str(config)])
    run = Path(cli.trainer.log_dir)
    report = json.loads((run / "results.json").read_text())["columns"]
    assert set(report) == {"before", "after"} and set(report["before"]) == {"forget", "retain", "heldout"}
    assert set(report["before"]["forget"]) == {"loss", "mia_auc"}  # no CLAP given: losses and membership only
    assert report["after"]["forget"]["loss"] > report["before"]["forget"]["loss"]  # gradient ascent forgets
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    assert (run / "pretrained" / "unet" / "config.json").is_file()
    assert "| forget | loss |" in (run / "results.md").read_text()
    assert cli.trainer.global_step == 3


def _ddp_tolerance(name: str) -> dict:
    """How far a 2-process report may be from one process's. Losses and membership AUC come from fixed inputs: equal up
    to float rounding. Generation: a DDP process runs on 1 CPU thread, a single process on 2, and the order of float
    sums in the sampler and Griffin-Lim changes the audio by ~1e-4 (the metrics themselves are exact over processes:
    tests/lightning_modules/test_metrics_ddp.py). A metric near 0 then moves by more than 5e-3 of itself: measured
    1.0e-4 on a KL of 0.0057, hence the absolute 1e-3. KAD is x100 on 3 clips and its bounds cross 0: measured 0.20
    absolute at most (on a value of 20.6, in a clean-clone CI run), bound 0.5."""
    if name in ("loss", "mia_auc"):
        return {"rel": 1e-6, "abs": 0}
    return {"rel": 0, "abs": 0.5} if name == "kad" else {"rel": 5e-3, "abs": 1e-3}


@pytest.mark.ddp
def test_ddp_on_two_cpu_processes_measures_what_one_process_does(tmp_path, tiny_corpus, tiny_model_dir, tiny_clap_dir):
    single = _run(write_config(tmp_path / "single", tiny_corpus, tiny_model_dir, tiny_clap_dir, max_steps=1))
    ddp = _run(write_config(tmp_path / "ddp", tiny_corpus, tiny_model_dir, tiny_clap_dir, max_steps=1),
               "--trainer.strategy=ddp", "--trainer.devices=2")
    before = single["report"]["before"]
    assert {"loss", "mia_auc", "fad", "kad", "clap_score", "recognition", "kl", "copies"} <= set(before["forget"])
    for split, values in before.items():
        measured = ddp["report"]["before"][split]
        intervals, measured_intervals = single["intervals"]["before"][split], ddp["intervals"]["before"][split]
        assert measured.keys() == values.keys() and measured_intervals.keys() == intervals.keys()
        for name, value in values.items():
            # the intervals too: the per-item values come back in item order, so the bootstrap draws the same items
            assert measured[name] == pytest.approx(value, **_ddp_tolerance(name)), (split, name)
            assert measured_intervals[name] == pytest.approx(intervals[name], **_ddp_tolerance(name)), (split, name)
    assert (ddp["dir"] / "pretrained" / "toy_ttm.json").is_file()


@pytest.mark.ddp
def test_ewc_fisher_sharded_over_two_processes_is_the_single_process_fisher(tmp_path, tiny_corpus, tiny_model_dir):
    import torch
    import yaml

    fishers = []
    for name, flags in (("single", ()), ("ddp", ("--trainer.strategy=ddp", "--trainer.devices=2"))):
        config = write_config(tmp_path / name, tiny_corpus, tiny_model_dir, max_steps=1)
        settings = yaml.safe_load(config.read_text())
        settings["model"]["class_path"] = "lightning_modules.unlearning.EWC"
        settings["model"]["init_args"].update(parameter_groups=["cross_attention"],
                                              fisher_path=str(tmp_path / name / "fisher.pt"))
        config.write_text(yaml.safe_dump(settings))
        _run(config, *flags)
        fishers.append(torch.load(tmp_path / name / "fisher.pt", weights_only=True)["fisher"])
    single, ddp = fishers
    assert set(single) == set(ddp) and all("attn2" in name for name in single)
    for name, value in single.items():
        assert torch.allclose(ddp[name], value, rtol=1e-4, atol=1e-12), name


def test_bf16_mixed_on_cpu_trains_in_bf16_and_measures_in_float32(tmp_path, tiny_corpus, tiny_model_dir,
                                                                     tiny_clap_dir):
    """On CPU, autocast is emulated and far slower than float32, so the evaluation measures in float32
    (`measuring_precision`): the "before" report of a bf16-mixed run is the fp32 run's, number for number; "after"
    differs only by what two steps of bf16 training changed."""
    fp32 = _run(write_config(tmp_path / "fp32", tiny_corpus, tiny_model_dir, tiny_clap_dir, max_steps=2))
    bf16 = _run(write_config(tmp_path / "bf16", tiny_corpus, tiny_model_dir, tiny_clap_dir, max_steps=2),
                "--trainer.precision=bf16-mixed")
    report = bf16["report"]
    assert all(math.isfinite(v) for column in report.values() for split in column.values() for v in split.values())
    assert {"fad", "kad", "clap_score", "recognition"} <= set(report["after"]["forget"])
    assert report["before"] == fp32["report"]["before"]
    assert bf16["intervals"]["before"] == fp32["intervals"]["before"]
    for split, values in report["after"].items():
        assert values["loss"] == pytest.approx(fp32["report"]["after"][split]["loss"], rel=BF16_LOSS_REL), split


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses(config, capsys, monkeypatch):
    # in-process (a subprocess per config spent ~15 s importing the libraries): --print_config prints and exits 0
    from train import main

    monkeypatch.chdir(REPO)
    subcommand = "predict" if "return_predictions" in yaml.safe_load((REPO / config).read_text()) else "fit"
    with pytest.raises(SystemExit) as exited:
        main([subcommand, "--config", config, "--print_config"])
    assert exited.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def test_the_cascade_scores_config_predicts_the_shipped_attribution_from_the_first_order_store(capsys, monkeypatch):
    """cascade_scores.yaml's step is attribute.yaml's ascent (else its scores predict another unlearning than the
    sweep measures), and its training side is first_order.yaml's (so one gradient store serves both)."""
    from train import main

    monkeypatch.chdir(REPO)

    def model(config: str) -> dict:
        with pytest.raises(SystemExit):
            main(["predict", "--config", f"configs/attribution/{config}.yaml", "--print_config"])
        return yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]

    cascade, first_order, attribute = model("cascade_scores"), model("first_order"), model("attribute")
    step = cascade["baseline"]["init_args"].pop("step")
    assert step == attribute["ascent"]
    assert first_order["baseline"]["init_args"].pop("step") is None
    assert cascade["baseline"] == first_order["baseline"]
    assert cascade["model"] == first_order["model"] == attribute["model"]


@pytest.mark.parametrize("config", ["configs/toy/base.yaml", "configs/toy/oracle.yaml",
                                    "configs/toy/oracle_aurora_vale.yaml"])
def test_another_seed_saves_in_the_run_folder_and_changes_nothing_else(config, capsys, monkeypatch):
    """A shipped toy model's config with configs/toy/another_seed.yaml: the same training, saved in its run folder
    (never over the shipped model)."""
    from train import main

    monkeypatch.chdir(REPO)

    def resolved(*extra: str) -> dict:
        with pytest.raises(SystemExit):
            main(["fit", "--config", config, *extra, "--print_config"])
        return yaml.safe_load(capsys.readouterr().out)

    shipped, again = resolved(), resolved("--config", OVERLAYS[0], "--seed_everything", "1")
    saving = [c for c in again["trainer"]["callbacks"] if c["class_path"] == "callbacks.SavePretrained"]
    assert [c["init_args"]["dirpath"] for c in saving] == [None]
    for resolved_config in (shipped, again):
        resolved_config.pop("seed_everything")
        for callback in resolved_config["trainer"]["callbacks"]:
            if callback["class_path"] == "callbacks.SavePretrained":
                callback["init_args"].pop("dirpath")
    assert again == shipped


@pytest.mark.ddp
def test_bad_forget_group_fails_before_training_with_a_clear_message(tmp_path, tiny_corpus, tiny_model_dir):
    config = write_config(tmp_path, tiny_corpus, tiny_model_dir)
    result = subprocess.run([sys.executable, "train.py", "fit", "--config", str(config),
                             "--data.forget_groups=[Nobody]"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "forget_groups ['Nobody'] are not groups" in result.stderr


def test_float32_matmul_precision_is_set_for_the_run_and_refused_when_unknown(tiny_corpus, tiny_model_dir, tmp_path,
                                                                              monkeypatch, capsys):
    """--float32_matmul_precision high lets a GPU's matrix products use TF32 (Lightning's tensor-core hint, which a
    train.py user could not act on); without it PyTorch's own setting stays."""
    from train import main

    monkeypatch.chdir(REPO)
    args = ["--config", str(write_config(tmp_path, tiny_corpus, tiny_model_dir))]
    before = torch.get_float32_matmul_precision()
    try:
        main(args, run=False)
        assert torch.get_float32_matmul_precision() == before == "highest"
        main([*args, "--float32_matmul_precision", "high"], run=False)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    with pytest.raises(SystemExit):
        main([*args, "--float32_matmul_precision", "tf32"], run=False)
    assert "float32_matmul_precision" in capsys.readouterr().err
