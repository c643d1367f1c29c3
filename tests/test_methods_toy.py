"""Each unlearning method's config (configs/unlearn) on the shipped toy base model does what the method is published
to do: the forget-set loss at fixed noise rises and, for methods that protect the retain set, the retain-set loss
stays within a stated tolerance. ESD and Concept Ablation steer the forget captions rather than the forget audio,
so they are judged on recognition of the forgotten artist in generations from the forget prompts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.compare_methods import toy_methods
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# method: (least factor by which the forget loss rises, most factor by which the retain loss may rise); None where
# that is not the method's intent (plain ascent does not protect the retain set; retain fine-tuning only protects it).
# The retain set is the far artists' (configs/data/toy_forget.yaml keeps Neon Harbor apart as the near set).
# Measured with these configs on the toy world of issue 14 (reports/methods, one run each, 1 CPU thread):
# GA x1.53 / x1.044, GD x3.25 / x1.29, NegGrad+ x1.0125 / x1.0013, NPO x4.98 / x1.43, RandomLabel x1.010 / x1.098,
# RetainFinetune x1.0006 / x0.9998, SalUn x1.0062 / x1.046, EWC x1.12 / x1.027. Each bound keeps about a third of the
# measured rise of the forget loss as margin, and the retain bound sits above the measured rise by about a third of it
# (at least 0.01): the random-labeling methods barely move the forget loss in the toy world. SimNPO at
# open-unlearning's defaults (added later, reports/methods/runs/simnpo/seed0, 1 thread): x1.0048 / x1.0010.
# Three training seeds (reports/methods/runs/*/seed{0,1,2}; the test runs seed 0) moved three bounds, each to the rule
# above applied to its least forget rise and largest retain rise over the seeds: Gradient Ascent forget x1.53 / x1.33 /
# x2.01, Gradient Difference retain x1.29 / x1.49 / x1.57 (1.4 held in seed 0 only), NPO forget x4.98 / x3.21 / x3.21.
# The other bounds hold in all three seeds (min / max over seeds within the margins).
LOSS_JUDGED = {
    "gradient_ascent": (1.2, None),
    "gradient_difference": (2.0, 1.76),
    "neg_grad_plus": (1.005, 1.02),
    "npo": (2.4, 1.6),
    "random_label": (1.0, 1.15),
    "retain_finetune": (None, 1.01),
    "salun": (1.0, 1.08),
    "ewc": (1.05, 1.05),
    "simnpo": (1.003, 1.011),
}
# the most recognition of the artist after (16 forget prompts, the toy CLAP; before: 0.94 to 1.0; measured after:
# ESD 0.0, Concept Ablation 0.0; the bound allows 4 of the 16 clips)
RECOGNITION_JUDGED = {"esd": 0.25, "concept_ablation": 0.25}


def _run(tmp_path: Path, method: str, generation: bool) -> dict:
    evaluation: dict = {"cache_dir": str(tmp_path / "cache"), "num_inference_steps": 25}
    if generation:
        evaluation["clap"] = {"class_path": "lightning_modules.metrics.ClapEmbedder",
                              "init_args": {"pretrained": "checkpoints/toy/clap"}}
    trainer = {"seed_everything": 0, "trainer": {
        "default_root_dir": str(tmp_path / "logs"), "enable_progress_bar": False, "enable_checkpointing": False,
        "max_steps": 100, "callbacks": [{"class_path": "callbacks.UnlearningEvaluation", "init_args": evaluation}]}}
    config = tmp_path / "trainer.yaml"
    config.write_text(yaml.safe_dump(trainer))
    subprocess.run([sys.executable, "train.py", "fit", "--config", str(config), "--config",
                    f"configs/unlearn/{method}.yaml", "--data", "configs/data/toy_forget.yaml"],
                   cwd=REPO, check=True, capture_output=True, text=True, timeout=900)
    (run,) = (tmp_path / "logs" / "lightning_logs").iterdir()
    return json.loads((run / "results.json").read_text())["columns"]


def test_every_method_config_is_judged():
    assert set(toy_methods()) == set(LOSS_JUDGED) | set(RECOGNITION_JUDGED)  # the others unlearn hub checkpoints


@pytest.mark.parametrize("method", sorted(LOSS_JUDGED))
def test_forget_loss_rises_and_retain_loss_holds(method, tmp_path):
    least_forget, most_retain = LOSS_JUDGED[method]
    columns = _run(tmp_path, method, generation=False)
    before, after = columns["before"], columns["after"]
    if least_forget is not None:
        assert after["forget"]["loss"] > least_forget * before["forget"]["loss"]
    if most_retain is not None:
        assert after["retain"]["loss"] < most_retain * before["retain"]["loss"]


@pytest.mark.parametrize("method", sorted(RECOGNITION_JUDGED))
def test_forget_prompts_stop_giving_the_artist(method, tmp_path):
    columns = _run(tmp_path, method, generation=True)
    assert columns["before"]["forget"]["recognition"] >= 0.9
    assert columns["after"]["forget"]["recognition"] <= RECOGNITION_JUDGED[method]
