"""The evaluation report on every real backend: a whole `train.py fit` (one step, generation metrics with the tiny
CLAP, SavePretrained) on tiny random components saved in each family's native format. In its own file, so that
pytest-xdist's per-file distribution can give it and the per-method steps (`test_backends.py`) to different workers."""

from __future__ import annotations

import json

import torch
import yaml

from tests.conftest import write_config
from tests.lightning_modules.backends import backend_class


def test_the_evaluation_report_runs_on_every_backend(tiny_backend, tiny_corpus, tiny_clap_dir, tmp_path, monkeypatch):
    from train import main

    class_path, folder, kwargs = tiny_backend
    # the base itself as an unchecked oracle: loaded from its folder with the backend's defaults (MusicGen's 30 s),
    # it must still generate the run's clips
    config = write_config(tmp_path, tiny_corpus, folder, tiny_clap_dir,
                          evaluation={"num_prompts": 2, "num_inference_steps": 2, "log_audio": 1,
                                      "oracle": str(folder), "oracle_unchecked": True})
    durations = []
    backend = backend_class(class_path)
    generate = backend.generate
    monkeypatch.setattr(backend, "generate", lambda self, prompts, **options: durations.append(
        (options.get("duration"), self.sample_rate)) or generate(self, prompts, **options))
    content = yaml.safe_load(config.read_text())
    content["model"]["init_args"]["model"] = {"class_path": class_path,
                                              "init_args": {"pretrained": str(folder), **kwargs}}
    content["model"]["init_args"]["parameter_groups"] = ["cross_attention"]
    content["trainer"]["max_steps"] = 1
    del content["data"]["init_args"]["heldout_manifest"]  # forget and retain: the sets are not what is tested
    config.write_text(yaml.safe_dump(content))
    main(["fit", "--config", str(config)])
    run = sorted((tmp_path / "logs" / "lightning_logs").iterdir())[-1]
    report = json.loads((run / "results.json").read_text())["columns"]
    for column in ("before", "after", "oracle"):
        assert all(torch.isfinite(torch.tensor(report[column][split]["loss"])) for split in report[column])
        assert {"fad", "clap_score", "recognition"} <= set(report[column]["forget"])
    # every generation, the oracle's too, at one length: the run's (MusicGen's tiny run: 0.25 s at 32 kHz)
    assert durations and all(duration is not None for duration, _ in durations)
    lengths = {round(duration * rate) for duration, rate in durations}
    assert len(lengths) == 1 and (lengths == {8000} or not class_path.endswith("MusicGen"))
    backend_class(class_path).from_pretrained(run / "pretrained")  # SavePretrained wrote a loadable native folder
