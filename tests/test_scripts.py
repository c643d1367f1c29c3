"""The report scripts' own logic: which configs `compare_methods.py` runs, the trainer config it writes for another
oracle, and the disagreement list of `toy_recognition.py`'s table; the TF32 rounding `benchmarks/sweep_precision.py`
emulates."""

from __future__ import annotations

import os

import pytest
import soundfile as sf
import torch
import yaml

from lightning_modules.io import write_json_verified
from scripts import compare_methods, toy_recognition
from tests.conftest import REPO


def test_compare_methods_runs_the_toy_configs_only():
    methods = compare_methods.toy_methods()
    assert "gradient_ascent" in methods and "esd" in methods
    assert not any(name.startswith(("musicgen", "musicldm", "stable_audio")) for name in methods)


def test_with_evaluation_changes_the_oracle_and_the_generations_only(tmp_path):
    path = compare_methods.with_evaluation("configs/trainer/toy.yaml", tmp_path, "checkpoints/toy/oracle_aurora_vale",
                                           64)
    written, shipped = (yaml.safe_load(p.read_text()) for p in (tmp_path / "runs" / "trainer.yaml",
                                                                REPO / "configs" / "trainer" / "toy.yaml"))
    assert path == str(tmp_path / "runs" / "trainer.yaml")
    assert written["trainer"]["callbacks"][0]["init_args"]["oracle"] == "checkpoints/toy/oracle_aurora_vale"
    shipped["trainer"]["callbacks"][0]["init_args"]["oracle"] = "checkpoints/toy/oracle_aurora_vale"
    shipped["trainer"]["callbacks"][0]["init_args"]["num_prompts"] = 64
    assert written == shipped


def test_with_evaluation_refuses_a_missing_model_and_too_few_generations(tmp_path):
    with pytest.raises(SystemExit, match="no_such_oracle"):
        compare_methods.with_evaluation("configs/trainer/toy.yaml", tmp_path, str(tmp_path / "no_such_oracle"))
    with pytest.raises(SystemExit, match="--generations must be at least 2"):
        compare_methods.with_evaluation("configs/trainer/toy.yaml", tmp_path, generations=1)


def test_recognition_table_names_what_each_judge_heard_where_they_disagree():
    real = {"clap": [1.0, 1.0], "features": [1.0, 1.0], "agreement": [1.0, 1.0],
            "bands": [[0.0, 0.03], [0.005, 0.0]],
            "confusions": {"clap": [{"A": 8}, {"B": 8}], "features": [{"A": 8}, {"B": 8}]}}
    generated = {"clap": [1.0, 0.5], "features": [1.0, 1.0], "agreement": [1.0, 0.5],
                 "bands": [[0.0, 0.02], [0.001, 0.2]],
                 "confusions": {"clap": [{"A": 4}, {"B": 2, "A": 2}], "features": [{"A": 4}, {"B": 4}]}}
    report = {"artists": ["A", "B"], "columns": {"held-out tracks": real, "base (name only)": generated},
              "fad": {"base": [0.1, 0.2]}, "generations": 4, "steps": 25, "seed": 0, "heldout_per_artist": 8,
              "real_per_artist": 48}
    table = toy_recognition.markdown(report)
    assert "| B | 1.00 / 1.00 | 0.50 / 1.00 | 0.200 |" in table and "seeds 0..7" in table
    assert ("- base (name only), B: clap B 2, A 2; features B 4. Kick / hats band: these clips 0.0010 / 0.200; real "
            "B 0.0050 / 0.000, A 0.0000 / 0.030") in table
    assert "base (name only), A" not in table  # the judges agree on A


def test_recognition_table_has_a_cell_per_judge_the_report_names():
    column = {"clap": [1.0, 0.5], "probe": [1.0, 0.75], "features": [1.0, 1.0], "agreement": [1.0, 0.5]}
    report = {"artists": ["A", "B"], "judges": ["clap", "probe", "features"],
              "columns": {"held-out tracks": column, "base (name only)": column}, "fad": {}, "generations": 4,
              "steps": 25, "seed": 0, "heldout_per_artist": 8, "real_per_artist": 48}
    table = toy_recognition.markdown(report)
    assert "| B | 0.50 / 0.75 / 1.00 | 0.50 / 0.75 / 1.00 |" in table
    assert "| largest judge gap (one artist) | 0.50 | 0.50 |" in table
    assert "toy CLAP zero-shot / probe on toy-CLAP audio embeddings / feature tagger" in table


def test_percussion_bands_find_a_kick_and_hats():
    t = torch.arange(16000) / 16000
    kick, hats = torch.sin(2 * torch.pi * 50 * t), torch.sin(2 * torch.pi * 6000 * t)
    bands = toy_recognition.percussion_bands(torch.stack([kick, hats, kick + hats]), 16000)
    assert bands[0, 0] > 0.95 and bands[1, 1] > 0.95 and bands[2].sub(0.5).abs().max() < 0.05


def test_codec_hybrids_take_each_part_from_the_clip_they_name():
    t = torch.arange(32768) / 16000
    loud, faint = torch.sin(2 * torch.pi * 440 * t), 1e-3 * torch.sin(2 * torch.pi * 3000 * t)  # faint: 60 dB below
    track, rebuilt = (loud + faint)[None], (0.5 * loud - faint)[None]  # the codec halves the loud tone, flips the faint
    hybrids = toy_recognition.codec_hybrids(track, rebuilt)

    def amplitudes(clip: torch.Tensor) -> tuple[float, float]:
        """The complex amplitudes of the clip's 440 Hz and 3 kHz tones (its DFT over the middle second)."""
        spectrum = torch.fft.rfft(clip[0, 8000:24000]) / 8000
        return spectrum[440].item(), spectrum[3000].item()

    (a_track, b_track), (a_codec, b_codec) = amplitudes(track), amplitudes(rebuilt)
    expected = {"track's magnitudes, codec's phases": (a_track, -b_track),
                "codec's magnitudes, track's phases": (a_codec, -b_codec),
                "track in the bins 40 dB below its peak, codec elsewhere": (a_codec, b_track),
                "codec in the bins 40 dB below the track's peak, track elsewhere": (a_track, b_codec)}
    assert list(hybrids) == list(expected)
    for name, (a, b) in expected.items():
        got = amplitudes(hybrids[name])
        assert abs(got[0] - a) < 1e-3 * abs(a) and abs(got[1] - b) < 1e-2 * abs(b), name
    # a clip's hybrids with itself are the clip
    assert all(torch.allclose(h, track, atol=1e-5) for h in toy_recognition.codec_hybrids(track, track).values())


def _report(forget_loss: float, before: float = 1.0, low: float | None = None) -> dict:
    after = {"forget": {"loss": forget_loss}, "retain": {"loss": 0.5}}
    report = {"columns": {"before": {"forget": {"loss": before}, "retain": {"loss": 0.5}}, "after": after},
              "timing": {"train_seconds": 10.0}}
    if low is not None:
        report["intervals"] = {"after": {"forget": {"loss": {"value": forget_loss, "low": low, "high": low + 1,
                                                              "n": 16}}}}
    return report


def test_compare_methods_table_over_seeds_and_the_wins_that_hold_in_every_seed():
    reports = {"a": [_report(2.0, low=1.0), _report(4.0, low=3.0)],  # better than b in both seeds
               "b": [_report(1.5, low=1.0), _report(3.0, low=2.0)],
               "c": [_report(3.0, low=2.0), _report(1.0, low=0.0)]}  # beats b in one seed only
    markdown, rows, wins = compare_methods.table(reports)
    a = next(row for row in rows if row["method"] == "a")["forget loss ↑"]
    assert a["mean"] == 3.0 and a["std"] == pytest.approx(2 ** 0.5) and (a["low"], a["high"]) == (2.0, 3.0)
    assert "| a | 3.000 ± 1.414 [2.000, 3.000] |" in markdown
    assert wins == ["forget loss ↑: a > b"]  # c vs a or b flips with the seed; retain losses tie
    assert compare_methods.unbeaten(reports) == {"forget loss ↑": ["a", "c"]}  # the seeds cannot order a and c
    assert "- forget loss ↑: a, c\n" in markdown
    assert "mean ± standard deviation over 2 training seeds" in markdown
    with pytest.raises(SystemExit, match="'before' column differs"):
        compare_methods.table({"a": [_report(2.0)], "b": [_report(2.0, before=0.9)]})
    # the same measurement with another thread count: its last digits differ (measured: 0.16721006259 vs 0.16721006334)
    compare_methods.table({"a": [_report(2.0)], "b": [_report(2.0, before=1.0 + 5e-9)]})


def test_a_finished_run_is_reused_only_with_the_inputs_it_was_run_with(tmp_path, monkeypatch):
    trainer = compare_methods.with_evaluation("configs/trainer/toy.yaml", tmp_path, generations=64)
    inputs = compare_methods.run_inputs("esd", trainer, "configs/data/toy_forget.yaml", ["--x=1"], 0)
    record = {"columns": {"after": {}}, "inputs": inputs}
    write_json_verified(tmp_path / "runs" / "esd" / "seed0" / "results.json", record)
    monkeypatch.setattr(compare_methods.subprocess, "run", lambda *a, **k: pytest.fail("a finished run ran again"))
    run = lambda trainer, extra: compare_methods.run_method(  # noqa: E731
        "esd", tmp_path, trainer, "configs/data/toy_forget.yaml", extra, force=False, seed=0)
    assert run(trainer, ["--x=1"]) == record
    with pytest.raises(SystemExit, match=r"other inputs .*: extra\)"):
        run(trainer, ["--x=2"])
    other = compare_methods.with_evaluation("configs/trainer/toy.yaml", tmp_path / "other", generations=16)
    with pytest.raises(SystemExit, match=r"other inputs .*: trainer\).*--force"):
        run(other, ["--x=1"])
    with pytest.raises(SystemExit, match=r"other inputs .*: models, model\)"):  # another model config, so other folders
        compare_methods.run_method("esd", tmp_path, trainer, "configs/data/toy_forget.yaml", ["--x=1"], force=False,
                                   seed=0, model="configs/model/toy_musicgen.yaml")


def test_a_finished_run_is_not_reused_when_a_model_it_loaded_changed(tmp_path, monkeypatch):
    """The oracle retrained into the same folder is another oracle: the configs' text is the same, the record is not
    reused."""
    oracle = tmp_path / "oracle"
    oracle.mkdir()
    (oracle / "weights").write_bytes(b"one")
    trainer = compare_methods.with_evaluation("configs/trainer/toy.yaml", tmp_path, oracle=str(oracle))
    inputs = compare_methods.run_inputs("esd", trainer, "configs/data/toy_forget.yaml", [], 0)
    assert set(inputs["models"]) == {"checkpoints/toy/base", "checkpoints/toy/clap", "checkpoints/toy/judge",
                                     os.path.relpath(oracle, compare_methods.REPO)}  # base: via the model config
    write_json_verified(tmp_path / "runs" / "esd" / "seed0" / "results.json", {"columns": {}, "inputs": inputs})
    monkeypatch.setattr(compare_methods.subprocess, "run", lambda *a, **k: pytest.fail("a finished run ran again"))
    run = lambda: compare_methods.run_method(  # noqa: E731
        "esd", tmp_path, trainer, "configs/data/toy_forget.yaml", [], force=False, seed=0)
    run()
    (oracle / "weights").write_bytes(b"two")
    with pytest.raises(SystemExit, match=r"other inputs .*: models\)"):
        run()


def test_the_tradeoff_points_are_each_methods_mean_over_seeds():
    def run(forget: float, retain: float) -> dict:
        cell = lambda v: {"value": v, "low": v - 0.1, "high": v + 0.1, "n": 8}  # noqa: E731
        after = {"forget": {"loss": cell(forget)}, "retain": {"loss": cell(retain)}}
        return {"intervals": {"before": {"forget": {"loss": cell(0.1)}, "retain": {"loss": cell(0.1)}},
                              "oracle": {"forget": {"loss": cell(0.3)}, "retain": {"loss": cell(0.1)}},
                              "after": after}}

    points = compare_methods.tradeoff_points({"esd": [run(0.2, 0.2), run(0.4, 0.3)], "npo": [run(0.5, 0.1)]})
    assert list(points) == ["base (before)", "oracle", "esd", "npo"]
    assert points["esd"]["forget"]["loss"] == pytest.approx({"value": 0.3, "low": 0.2, "high": 0.4})
    assert points["oracle"]["forget"]["loss"]["value"] == 0.3
    assert "recognition" not in points["esd"]["forget"]  # not measured: left out, not drawn as 0


def test_the_stand_in_collection_is_what_make_manifest_reads(tmp_path):
    """The own-data walk-through's step 0 feeds step 1: album folders of 44.1 kHz stereo WAVs and two captions CSVs."""
    from datamodules import read_manifest
    from datamodules.captions import manifest_from_captions
    from scripts.toy_collection import write_collection

    write_collection(tmp_path / "my_music", tracks=5, heldout=2, duration=0.5)
    with pytest.raises(FileExistsError, match="my_music exists"):
        write_collection(tmp_path / "my_music", tracks=5, heldout=2)
    train = manifest_from_captions(tmp_path / "my_music" / "tracks.csv", tmp_path / "my_music", tmp_path / "t.jsonl",
                                   id_column="track_id", group_column="artist")
    heldout = manifest_from_captions(tmp_path / "my_music" / "heldout.csv", tmp_path / "my_music",
                                     tmp_path / "h.jsonl", id_column="track_id", group_column="artist")
    assert [item.id for item in train] == ["sr0000", "sr0001", "sr0002"]
    assert [item.id for item in heldout] == ["sr0003", "sr0004"]
    assert {item.group for item in train + heldout} == {"Saffron Reef"}
    assert all("Saffron Reef" in item.caption for item in read_manifest(tmp_path / "t.jsonl"))
    info = sf.info(str(train[0].path))
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 22050)


def test_the_oracle_table_keeps_each_seeds_p_value_and_averages_the_intervals():
    def run(p: float, leak: float, utility: float) -> dict:
        cell = lambda v: {"value": v, "low": v - 1, "high": v + 1, "n": 40}  # noqa: E731
        return {"against_oracle": {"forget_quality": {"loss": p}, "privacy_leakage": cell(leak),
                                   "model_utility": {"after": cell(utility), "oracle": cell(1.0)}}}

    markdown, rows = compare_methods.oracle_table({"npo": [run(1e-5, 20.0, 0.5), run(3e-2, 40.0, 0.7)],
                                                   "esd": [run(0.5, 10.0, 0.9), {}]})
    assert rows[0]["forget quality (KS p, loss) ↑"] == [1e-5, 3e-2]  # p-values are not averaged
    leak = rows[0]["privacy leakage (%) → 0"]
    assert (leak["mean"], leak["low"], leak["high"]) == (30.0, 29.0, 31.0) and leak["std"] == pytest.approx(200 ** 0.5)
    assert "| npo | 1.0e-05, 3.0e-02 | 30 ± 14 [29, 31] | 0.600 ± 0.141 [-0.400, 1.600] |" in markdown
    assert "| esd | – | – | – |" in markdown  # a seed without the oracle's scores: no number, not a partial mean


STUDY_COMMON = {"out": "reports/attribution", "cache": "lightning_logs/attribution_study",
                "model": "checkpoints/toy/base", "clap": "checkpoints/toy/clap", "draws": 2,
                "queries_dir": "data/toy_queries", "per_artist": 2, "cell": None,
                "activation_module": "unet.mid_block", "activation_timestep": 50.0}
STUDY_SETTINGS = {  # what the reports in reports/attribution/ were made with
    "consistency": {**STUDY_COMMON, "queries": 8, "crop": 1.2, "lrs": [1e-7, 1e-6, 1e-5], "steps": [1, 3],
                    "crop_lrs": [1e-6, 1e-5], "crop_groups": ["cross_attention", "all"]},
    "ground-truth": {**STUDY_COMMON, "ks": [10, 20, 40]},
    "counterfactual": {**STUDY_COMMON, "k": 20, "counterfactual_artist": "Kestrel Drive", "counterfactual_queries": 2,
                       "random_repeats": 4, "loss_draws": 64, "warm_start": "checkpoints/toy/oracle",
                       "fine_tune": {"steps": 300, "batch_size": 16, "caption_dropout": 0.1, "seed": 0,
                                     "accelerator": "cpu"}},
}


def _study_settings(study: str) -> tuple[dict, object]:
    """The settings `scripts/attribution_study.py <study>` runs with (no override), as plain values, and as the
    functions read them (optimizer and schedule built)."""
    from scripts import attribution_study

    cli = attribution_study.parser()
    config = cli.parse_args([study])
    settings = {key: str(value) if key in ("out", "cache") else value
                for key, value in config[study].as_dict().items() if key not in ("config", "__default_config__")}
    return settings, cli.instantiate(config)[study]


def test_attribution_study_configs_hold_the_settings_of_the_committed_reports():
    import json

    from scripts.attribution_study import grid_cells

    reports = {name: json.loads((REPO / "reports" / "attribution" / f"{name}.json").read_text())
               for name in ("consistency", "ground_truth", "counterfactual")}
    for study, expected in STUDY_SETTINGS.items():
        settings, args = _study_settings(study)
        if study == "counterfactual":
            recipe = settings.pop("fine_tune")
            optimizer, schedule = recipe.pop("optimizer"), recipe.pop("lr_scheduler")
            assert (optimizer["class_path"], schedule["class_path"]) == (
                "torch.optim.AdamW", "torch.optim.lr_scheduler.CosineAnnealingLR")
            built = args.fine_tune.optimizer([torch.nn.Parameter(torch.zeros(2))])
            reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, weight_decay=0.01)
            assert built.defaults == reference.defaults
            assert (args.fine_tune.lr_scheduler(built, 300).state_dict()
                    == torch.optim.lr_scheduler.CosineAnnealingLR(reference, 300).state_dict())
            settings["fine_tune"] = recipe
        assert settings == expected, study
    # the values the reports record
    consistency, truth, counterfactual = reports.values()
    _, args = _study_settings("consistency")
    assert [(c["query"], c["lr"], c["steps"], c["groups"], c["masking"]) for c in consistency["cells"]] == grid_cells(
        args)
    assert (consistency["crop_seconds"], consistency["sweep_draws"], len(consistency["queries"])) == (1.2, 2, 8)
    best = {key: consistency["best"][key] for key in ("lr", "steps", "groups", "masking")}
    assert (truth["ks"], truth["sweep_draws"], len(truth["queries"]), truth["setting"]) == ([10, 20, 40], 2, 20, best)
    assert {key: counterfactual[key] for key in ("k", "train_steps", "warm_start", "loss_draws")} == {
        "k": 20, "train_steps": 300, "warm_start": "checkpoints/toy/oracle", "loss_draws": 64}
    from lightning_modules.models import ToyTextToMusic
    from scripts.attribution_study import model_digest

    # measured from the oracle shipped now, not from an earlier one
    oracle = ToyTextToMusic.from_pretrained(REPO / "checkpoints" / "toy" / "oracle")
    assert counterfactual["warm_start_digest"] == model_digest(oracle)
    assert [row["query"] for row in counterfactual["queries"]] == ["kestrel_drive-prompted-00",
                                                                    "kestrel_drive-prompted-01"]
    for row in counterfactual["queries"]:
        chance = [rise for name, rise in row["rise"].items() if name.startswith("random")]
        assert len(chance) == 4 and row["random_range"] == [min(chance), max(chance)]
        assert row["above_random"] == {name: rise > max(chance) for name, rise in row["rise"].items()
                                       if not name.startswith("random")}


def _error_line(capsys) -> str:
    return next(line for line in capsys.readouterr().err.splitlines() if line.startswith("error:"))


def test_attribution_study_refuses_an_unknown_or_missing_setting_by_name(tmp_path, capsys):
    import shutil

    from scripts.attribution_study import CONFIGS, parser

    (tmp_path / "typo.yaml").write_text("crop_lr: [1.0e-06]\n")
    for name, argv in {"'crop_lr'": ["consistency", "--config", str(tmp_path / "typo.yaml")],
                       "--crop_lr": ["consistency", "--crop_lr", "[1e-6]"],  # not taken for --crop_lrs
                       "--fine_tune.lr": ["counterfactual", "--fine_tune.lr", "0.1"]}.items():
        with pytest.raises(SystemExit):
            parser().parse_args(argv)
        assert name in _error_line(capsys), argv
    shutil.copytree(CONFIGS, tmp_path / "configs")
    shipped = (tmp_path / "configs" / "consistency.yaml").read_text()
    (tmp_path / "configs" / "consistency.yaml").write_text(shipped.replace("\ncrop: 1.2", "\n"))
    with pytest.raises(SystemExit):
        parser(tmp_path / "configs").parse_args(["consistency"])
    assert "consistency.crop" in _error_line(capsys)
    assert parser(tmp_path / "configs").parse_args(["consistency", "--crop", "0.5"]).consistency.crop == 0.5


def test_attribution_study_cache_is_verified_and_recomputed_when_damaged(tmp_path, caplog):
    from scripts.attribution_study import cached

    calls = []

    def compute():
        calls.append(1)
        return {"scores": torch.arange(4.0), "seconds": 1.5}

    path = tmp_path / "grid" / "cell.pt"
    first = cached(path, compute)
    assert torch.equal(cached(path, compute)["scores"], first["scores"]) and len(calls) == 1  # read back
    path.write_bytes(path.read_bytes()[:-8])  # truncated: fails its digest
    with caplog.at_level("WARNING"):
        assert cached(path, compute)["seconds"] == 1.5
    assert len(calls) == 2 and str(path) in caplog.text


def test_counterfactual_rises_are_judged_against_the_random_removals():
    from scripts.attribution_study import against_chance

    rise = {"unlearning (x)": 0.004, "CLAP similarity": 0.001, "random 0": -0.002, "random 1": 0.003}
    assert against_chance(rise) == ([-0.002, 0.003], {"unlearning (x)": True, "CLAP similarity": False})
    assert against_chance({"CLAP similarity": 0.5}) == (None, {"CLAP similarity": False})


def test_the_precision_benchmark_rounds_operands_to_tf32_and_restores_the_functions():
    from benchmarks import sweep_precision

    ulp = 2.0**-10  # TF32 keeps 10 mantissa bits: the step above 1.0
    values = torch.tensor([1.0, 1 + ulp, 1 + ulp / 2, 1 + 3 * ulp / 2, 1 + 0.3 * ulp, -(1 + 0.7 * ulp),
                           2.0**-20 * (1 + ulp)])
    expected = torch.tensor([1.0, 1 + ulp, 1.0, 1 + 2 * ulp, 1.0, -(1 + ulp), 2.0**-20 * (1 + ulp)])  # ties to even
    assert torch.equal(sweep_precision.tf32(values), expected)
    conv = torch.nn.functional.conv1d
    signal, kernel = torch.tensor([[[1 + 0.3 * ulp, 1.0]]]), torch.tensor([[[1.0]]])
    with sweep_precision.tf32_operands("conv1d"):
        assert torch.equal(torch.nn.functional.conv1d(signal, kernel), torch.tensor([[[1.0, 1.0]]]))
    assert torch.nn.functional.conv1d is conv
