"""`scripts/oracle_spread.py` on a real tiny fit: its KS p against the oracle its evaluation used is the one its record
reports, against itself 1; the losses are kept and reused; a seed that is not the evaluation's is refused."""

import shutil

import pytest
import yaml

from lightning_modules.io import write_json_verified
from scripts import oracle_spread


def _comparison(tmp_path, fitted):
    """A compare_methods.py runs folder holding the fixture's fit as gradient_ascent seed 0, and its data config."""
    runs = tmp_path / "runs"
    shutil.copytree(fitted.run, runs / "gradient_ascent" / "seed0" / "lightning_logs" / "gradient_ascent")
    write_json_verified(runs / "gradient_ascent" / "seed0" / "results.json", fitted.results)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(yaml.safe_load(fitted.config.read_text())["data"]))
    return runs, data


def test_oracle_spread_reproduces_the_record_and_reuses_its_losses(tmp_path, fitted, tiny_model_dir, monkeypatch):
    runs, data = _comparison(tmp_path, fitted)
    fit = runs / "gradient_ascent" / "seed0" / "lightning_logs" / "gradient_ascent" / "pretrained"
    argv = ["--runs", str(runs), "--data", str(data), "--out", str(tmp_path / "out"),
            "--oracles", f"start={tiny_model_dir}", f"itself={fit}"]
    result = oracle_spread.main(argv)
    row = result["fits"]["gradient_ascent/seed0"]
    # the fixture's oracle is the starting model: the same test as the evaluation's forget quality
    assert row["p"]["start"] == pytest.approx(fitted.results["against_oracle"]["forget_quality"]["loss"], rel=1e-9)
    assert row["p"]["itself"] == 1.0 and row["mean_loss"] == pytest.approx(
        fitted.results["columns"]["after"]["forget"]["loss"], rel=1e-6)
    assert list(result["between_oracles"]) == ["start vs itself"]
    assert "| gradient_ascent/seed0 |" in (tmp_path / "out" / "oracle_spread.md").read_text()

    def no_model(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(oracle_spread, "item_losses", no_model)
    assert oracle_spread.main(argv) == result  # from losses.json alone


def test_oracle_spread_refuses_losses_that_do_not_reproduce_the_record(tmp_path, fitted, tiny_model_dir):
    runs, data = _comparison(tmp_path, fitted)
    with pytest.raises(ValueError, match="not the record's"):
        oracle_spread.main(["--runs", str(runs), "--data", str(data), "--out", str(tmp_path / "out"), "--seed", "7",
                            "--oracles", f"start={tiny_model_dir}"])
    with pytest.raises(SystemExit):
        oracle_spread.main(["--runs", str(runs), "--data", str(data), "--out", str(tmp_path / "out"),
                            "--oracles", f"start={tmp_path / 'missing'}"])
