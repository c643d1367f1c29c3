"""`scripts/lds_study.py` on the tiny world: each setting's pass runs once, its LDS is measured on both halves, the
setting with the best validation LDS is reported with its paired difference from the reference method, a one-off pass
runs once for the settings that need it and is timed apart, a second run reuses every pass, and a run of one method
reports every method whose passes are done."""

import json

import torch
import yaml

from lightning_modules.attribution.lds import paired_lds_difference
from scripts import lds, lds_study
from tests.conftest import tiny_lds_world


def test_the_study_runs_each_setting_once_and_reports_the_best_on_validation(tmp_path, tiny_corpus, tiny_model_dir):
    queries, recipe = tiny_lds_world(tmp_path, tiny_corpus, tiny_model_dir, max_steps=1)
    lds.main(["build", "--benchmark", str(tmp_path / "lds"), "--config", str(recipe), "--queries",
              str(queries), "--num-models", "3", "--draws", "2", "--work-dir", str(tmp_path / "work")])
    study = {
        "benchmark": str(tmp_path / "lds"), "model": str(tiny_model_dir), "queries": str(queries),
        "manifest": str(tiny_corpus.train_manifest), "out": str(tmp_path / "out"), "report": str(tmp_path / "report"),
        "reference": "activation",
        "common": {"trainer.logger": False, "trainer.enable_progress_bar": False, "trainer.accelerator": "cpu",
                   "model.init_args.model.init_args.pretrained": "{model}", "data.init_args.manifest": "{manifest}",
                   "data.init_args.source": None},
        "prepare": {"fisher": {"config": "configs/attribution/fisher.yaml",
                               "overrides": {"model.init_args.fisher_path": "{out}/fisher.pt",
                                             "data.init_args.batch_size": 4}}},
        "methods": {"activation": {
            "config": "configs/attribution/similarity_activation.yaml", "passes": "d forwards per item",
            "overrides": {"data.init_args.queries": "{queries}", "data.init_args.query_source": None,
                          "model.init_args.out_dir": "{run}", "data.init_args.batch_size": 4},
            "settings": {"t50": {}, "t900": {"model.init_args.baseline.init_args.timestep": 900},
                         "t500": {"model.init_args.baseline.init_args.timestep": 500, "needs": ["fisher"]}}},
            "gradient": {
                "config": "configs/attribution/similarity_gradient.yaml", "passes": "d backwards per item",
                "overrides": {"data.init_args.queries": "{queries}", "data.init_args.query_source": None,
                              "model.init_args.out_dir": "{run}", "data.init_args.batch_size": 4},
                "settings": {"d4": {}}}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    results = lds_study.main(["--study", str(tmp_path / "study.yaml")])
    entry = results["methods"]["activation"]
    assert set(entry["settings"]) == {"t50", "t900", "t500"}
    assert entry["best"] == max(entry["settings"], key=lambda name: entry["settings"][name]["validation"]["value"])
    for row in entry["settings"].values():
        assert row["models"] == 3 and row["seconds"] > 0 and -1 <= row["test"]["value"] <= 1
        assert len(row["per_query"]["test"]) == 2 and len(row["per_query"]["validation"]) == 2
    fisher = json.loads((tmp_path / "out" / "prepare" / "fisher" / "run.json").read_text())
    assert (tmp_path / "out" / "fisher.pt").is_file() and "--config" in fisher["args"]
    assert entry["settings"]["t500"]["one_off_seconds"] == fisher["seconds"] > 0
    assert entry["settings"]["t50"]["one_off_seconds"] == 0
    gradient = results["methods"]["gradient"]
    per_query = {name: torch.tensor([method["settings"][method["best"]]["per_query"]["test"][query] for query in
                                     sorted(entry["settings"]["t50"]["per_query"]["test"])])
                 for name, method in (("activation", entry), ("gradient", gradient))}
    expected = paired_lds_difference(per_query["gradient"], per_query["activation"])
    assert gradient["versus_reference"] == expected.as_dict()
    assert entry["versus_reference"]["value"] == 0
    report = (tmp_path / "report" / "README.md").read_text()
    assert f"| activation | {entry['best']} | {entry['settings'][entry['best']]['test']['value']:.3f}" in report
    assert f"| {gradient['versus_reference']['value']:.3f} [{gradient['versus_reference']['low']:.3f}" in report
    records = [tmp_path / "out" / "activation" / "t50" / "run.json", tmp_path / "out" / "fisher.pt"]
    stamps = [record.stat().st_mtime_ns for record in records]
    again = lds_study.main(["--study", str(tmp_path / "study.yaml")])
    assert [record.stat().st_mtime_ns for record in records] == stamps  # no pass was run again
    assert json.loads(json.dumps(again["methods"])) == json.loads(json.dumps(results["methods"]))
    # running one method reports every method whose passes are done, and none whose passes are not
    study["methods"]["late"] = {**study["methods"]["gradient"], "settings": {"d2": {}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    one = lds_study.main(["--study", str(tmp_path / "study.yaml"), "--methods", "gradient"])
    assert list(one["methods"]) == ["activation", "gradient"]
    assert not (tmp_path / "out" / "late").exists()
