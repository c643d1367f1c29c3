"""`scripts/lds_study.py` on the tiny world: each setting's pass runs once, its LDS is measured on both halves, the
setting with the best validation LDS is reported, and a second run reuses every pass."""

import json

import yaml

from scripts import lds, lds_study
from tests.conftest import tiny_lds_world


def test_the_study_runs_each_setting_once_and_reports_the_best_on_validation(tmp_path, tiny_corpus, tiny_model_dir):
    queries, recipe = tiny_lds_world(tmp_path, tiny_corpus, tiny_model_dir, max_steps=1)
    lds.main(["build", "--benchmark", str(tmp_path / "lds"), "--config", str(recipe), "--queries",
              str(queries), "--num-models", "3", "--draws", "2", "--work-dir", str(tmp_path / "work")])
    study = {
        "benchmark": str(tmp_path / "lds"), "model": str(tiny_model_dir), "queries": str(queries),
        "manifest": str(tiny_corpus.train_manifest), "out": str(tmp_path / "out"), "report": str(tmp_path / "report"),
        "common": {"trainer.logger": False, "trainer.enable_progress_bar": False, "trainer.accelerator": "cpu",
                   "model.init_args.model.init_args.pretrained": "{model}", "data.init_args.manifest": "{manifest}",
                   "data.init_args.source": None},
        "prepare": {},
        "methods": {"activation": {
            "config": "configs/attribution/similarity_activation.yaml", "passes": "d forwards per item",
            "overrides": {"data.init_args.queries": "{queries}", "data.init_args.query_source": None,
                          "model.init_args.out_dir": "{run}", "data.init_args.batch_size": 4},
            "settings": {"t50": {}, "t900": {"model.init_args.baseline.init_args.timestep": 900}}}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    results = lds_study.main(["--study", str(tmp_path / "study.yaml")])
    entry = results["methods"]["activation"]
    assert set(entry["settings"]) == {"t50", "t900"}
    assert entry["best"] == max(entry["settings"], key=lambda name: entry["settings"][name]["validation"]["value"])
    for row in entry["settings"].values():
        assert row["models"] == 3 and row["seconds"] > 0 and -1 <= row["test"]["value"] <= 1
        assert len(row["per_query"]["test"]) == 2 and len(row["per_query"]["validation"]) == 2
    report = (tmp_path / "report" / "README.md").read_text()
    assert f"| activation | {entry['best']} | {entry['settings'][entry['best']]['test']['value']:.3f}" in report
    record = tmp_path / "out" / "activation" / "t50" / "run.json"
    stamp = record.stat().st_mtime_ns
    again = lds_study.main(["--study", str(tmp_path / "study.yaml")])
    assert record.stat().st_mtime_ns == stamp  # the pass was not run again
    assert json.loads(json.dumps(again["methods"])) == json.loads(json.dumps(results["methods"]))
