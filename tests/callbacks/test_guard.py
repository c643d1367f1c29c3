"""`UnlearningGuard` on the tiny toy world: a runaway gradient ascent is stopped with its last good weights in the
checkpoint and the saved model, a NaN loss ends the run with the last good weights restored, a calm run is left
alone, and bad arguments are refused."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import UnlearningEvaluation, UnlearningGuard
from datamodules import ToyCorpus
from lightning_modules.models import ToyTextToMusic
from lightning_modules.passes import NonFiniteLossError
from lightning_modules.unlearning import GradientAscent
from tests.conftest import write_config


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[str, torch.Tensor]]:
    """The trainable weights after every optimizer step, keyed by step, seen before the guard acts on them."""
    weights: dict[int, dict[str, torch.Tensor]] = {}

    def record(trainer: Any, pl_module: Any) -> None:
        weights[trainer.global_step] = {name: param.detach().clone() for name, param in pl_module.named_parameters()
                                        if param.requires_grad}

    start, batch_end = UnlearningGuard.on_train_start, UnlearningGuard.on_train_batch_end
    monkeypatch.setattr(UnlearningGuard, "on_train_start",
                        lambda self, trainer, pl_module: (record(trainer, pl_module), start(self, trainer, pl_module)))
    monkeypatch.setattr(UnlearningGuard, "on_train_batch_end",
                        lambda self, trainer, pl_module, *args: (record(trainer, pl_module),
                                                                 batch_end(self, trainer, pl_module, *args)))
    return weights


def fit(tmp_path: Path, corpus: ToyCorpus, model_dir: Path, lr: float, max_steps: int, guard: dict | None,
        checkpoint_every_step: bool = False, args: tuple[str, ...] = ()) -> SimpleNamespace:
    """Gradient ascent with SGD at `lr` for at most `max_steps`, guarded by `UnlearningGuard(**guard)` (unguarded
    when `guard` is None); `args` are further command-line arguments."""
    from train import main

    config_path = write_config(tmp_path, corpus, model_dir, max_steps=max_steps)
    config = yaml.safe_load(config_path.read_text())
    config["model"]["init_args"]["optimizer"]["init_args"]["lr"] = lr
    # the guard and SavePretrained; no evaluation report or validation loop, which would only cost time here
    config["trainer"]["callbacks"] = [{"class_path": "callbacks.SavePretrained"}]
    if guard is not None:
        config["trainer"]["callbacks"].insert(0, {"class_path": "callbacks.UnlearningGuard", "init_args": guard})
    config["trainer"].update(limit_val_batches=0, num_sanity_val_steps=0)
    if checkpoint_every_step:  # listed first: Lightning moves checkpoint callbacks after all others
        config["trainer"]["callbacks"].insert(0, {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                  "init_args": {"every_n_train_steps": 1, "save_top_k": -1}})
    config_path.write_text(yaml.safe_dump(config))
    cli = main(["fit", "--config", str(config_path), *args])
    guard_callback = next((cb for cb in cli.trainer.callbacks if isinstance(cb, UnlearningGuard)), None)
    return SimpleNamespace(cli=cli, trainer=cli.trainer, module=cli.model, guard=guard_callback,
                           run=Path(cli.trainer.log_dir))


def trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach() for name, param in module.named_parameters() if param.requires_grad}


def assert_same(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert weights.keys() == expected.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


def differs(weights: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(value, other[name]) for name, value in weights.items())


def retain_loss(model: ToyTextToMusic, datamodule: Any, num_items: int, seed: int = 0) -> float:
    """The guard's measurement, computed independently: mean fixed-noise loss of the first retain items."""
    dataset = datamodule.eval_datasets()["retain"]
    batch = torch.utils.data.default_collate([dataset[i] for i in range(num_items)])
    model.eval()
    with torch.no_grad():
        return model.loss(batch, **model.fixed_loss_inputs(batch["id"], seed)).double().mean().item()


def test_a_runaway_ascent_is_stopped_and_its_last_good_weights_are_kept(tmp_path, tiny_corpus, tiny_model_dir,
                                                                        recorded):
    # at this lr the retain loss of the tiny model is ~1.4 times its start after 2 steps and ~3 times after 3
    guard = {"max_retain_ratio": 2.0, "check_every_n_steps": 1, "num_items": 4, "batch_size": 4}
    result = fit(tmp_path, tiny_corpus, tiny_model_dir, lr=0.3, max_steps=30, guard=guard, checkpoint_every_step=True)

    stopped = json.loads((result.run / "guard.json").read_text())
    assert stopped == result.guard.stopped
    step, restored_step = stopped["step"], stopped["restored_step"]
    assert "retain loss rose" in stopped["reason"]
    assert 1 <= restored_step == step - 1 and step < 30  # the last good step is kept, not merely the start
    assert result.trainer.global_step == step  # no optimizer step after the trip
    assert stopped["retain_loss"] > 2.0 * stopped["start_retain_loss"]
    assert stopped["restored_retain_loss"] <= 2.0 * stopped["start_retain_loss"]

    # the module holds the weights of the restored step, not the runaway ones it had at the trip
    assert differs(recorded[step], recorded[restored_step])
    assert_same(trainable(result.module), recorded[restored_step])
    # the checkpoint written at the trip step (checkpoint callbacks run after the guard) holds them too
    (checkpoint,) = result.run.glob(f"checkpoints/*-step={step}.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert_same(saved["state_dict"], recorded[restored_step])
    assert saved["callbacks"]["UnlearningGuard"]["stopped"] == stopped
    # and so does the model SavePretrained wrote at fit end, whose retain loss is back within the ratio
    pretrained = ToyTextToMusic.from_pretrained(result.run / "pretrained")
    assert_same({f"model.{name}": param for name, param in pretrained.named_parameters()
                 if f"model.{name}" in recorded[restored_step]}, recorded[restored_step])
    loss = retain_loss(pretrained, result.cli.datamodule, num_items=4)
    assert loss == pytest.approx(stopped["restored_retain_loss"], rel=1e-5)
    assert loss <= 2.0 * stopped["start_retain_loss"]


def test_a_non_finite_loss_ends_the_run_with_the_weights_of_the_last_check_restored(tmp_path, tiny_corpus,
                                                                                     tiny_model_dir, recorded,
                                                                                     monkeypatch):
    objective = GradientAscent.objective
    seen: dict[str, Any] = {}

    def nan_at_step_two(self: GradientAscent, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        terms = objective(self, forget, retain)
        if self.trainer.global_step == 2:  # the third optimizer step, between the checks of steps 0 and 3
            terms["loss"] = terms["loss"] * float("nan")
            seen.update(module=self, ids=[*forget["id"], *retain["id"]])
        return terms

    monkeypatch.setattr(GradientAscent, "objective", nan_at_step_two)
    guard = {"check_every_n_steps": 3, "num_items": 2, "batch_size": 2}
    with pytest.raises(NonFiniteLossError, match="GradientAscent training loss at step 2 is not finite") as error:
        fit(tmp_path, tiny_corpus, tiny_model_dir, lr=0.01, max_steps=10, guard=guard, checkpoint_every_step=True)

    assert error.value.ids == seen["ids"] and all(item_id in str(error.value) for item_id in seen["ids"])
    (run,) = (tmp_path / "logs" / "lightning_logs").iterdir()
    stopped = json.loads((run / "guard.json").read_text())
    assert stopped["step"] == 2 and stopped["restored_step"] == 0 and stopped["retain_loss"] is None
    assert str(error.value) in stopped["reason"]
    # the NaN never reached the weights (the step raised before its update), and the guard put back those of step 0
    assert differs(recorded[2], recorded[0])
    assert_same(trainable(seen["module"]), recorded[0])
    # the checkpoints of the two good steps were written; none after the error, and no saved model
    steps = sorted(int(path.stem.rsplit("step=", 1)[1]) for path in run.glob("checkpoints/*.ckpt"))
    assert steps == [1, 2]
    assert not (run / "pretrained").exists()


def test_a_calm_run_is_left_alone(tmp_path, tiny_corpus, tiny_model_dir, recorded):
    guard = {"check_every_n_steps": 1, "num_items": 2, "batch_size": 2}
    result = fit(tmp_path / "guarded", tiny_corpus, tiny_model_dir, lr=1e-3, max_steps=3, guard=guard)

    assert result.guard.stopped is None and not (result.run / "guard.json").exists()
    assert result.trainer.global_step == 3
    assert differs(recorded[3], recorded[0])  # it trained
    assert_same(trainable(result.module), recorded[3])  # and kept what it trained
    # exactly as without the guard: its measurements leave the random stream and each module's train/eval mode alone
    unguarded = fit(tmp_path / "unguarded", tiny_corpus, tiny_model_dir, lr=1e-3, max_steps=3, guard=None)
    assert_same(trainable(result.module), trainable(unguarded.module))
    assert ({name: module.training for name, module in result.module.named_modules()}
            == {name: module.training for name, module in unguarded.module.named_modules()})
    events = EventAccumulator(str(result.run), size_guidance={"scalars": 0}).Reload()
    ratios = events.Scalars("guard/retain_ratio")
    assert [event.step for event in ratios] == [0, 1, 2, 3]
    assert ratios[0].value == pytest.approx(1.0) and all(event.value <= 1.5 for event in ratios)


def test_a_resumed_run_keeps_the_reference_of_its_start(tmp_path, tiny_corpus, tiny_model_dir):
    guard = {"check_every_n_steps": 1, "num_items": 2, "batch_size": 2}
    first = fit(tmp_path / "first", tiny_corpus, tiny_model_dir, lr=0.05, max_steps=2, guard=guard)
    checkpoint = first.trainer.checkpoint_callback.best_model_path
    resumed = fit(tmp_path / "resumed", tiny_corpus, tiny_model_dir, lr=0.05, max_steps=4, guard=guard,
                  args=(f"--ckpt_path={checkpoint}",))
    assert resumed.trainer.global_step == 4
    assert resumed.guard.start_retain_loss == first.guard.start_retain_loss  # not the loss of the resumed weights
    events = EventAccumulator(str(resumed.run), size_guidance={"scalars": 0}).Reload()
    (at_resume,) = [event.value for event in events.Scalars("guard/retain_loss") if event.step == 2]
    assert at_resume != pytest.approx(first.guard.start_retain_loss, rel=1e-6)


def test_state_dict_keeps_the_reference_of_the_start():
    guard = UnlearningGuard()
    guard.start_retain_loss, guard.stopped = 0.25, {"step": 4, "reason": "x"}
    resumed = UnlearningGuard()
    resumed.load_state_dict(guard.state_dict())
    assert resumed.start_retain_loss == 0.25 and resumed.stopped == {"step": 4, "reason": "x"}


def test_bad_arguments_are_refused_with_the_value_named():
    with pytest.raises(ValueError, match="max_retain_ratio .* got 1.0"):
        UnlearningGuard(max_retain_ratio=1.0)
    with pytest.raises(ValueError, match="max_retain_ratio .* got nan"):
        UnlearningGuard(max_retain_ratio=float("nan"))
    for name in ("check_every_n_steps", "num_items", "batch_size"):
        with pytest.raises(ValueError, match=f"{name} must be at least 1, got 0"):
            UnlearningGuard(**{name: 0})


def test_a_trainer_setup_that_would_defeat_the_guard_is_refused():
    guard = UnlearningGuard()
    evaluation = UnlearningEvaluation(every_n_train_steps=5)
    module = SimpleNamespace(model=None, trainable=[])

    def trainer(**kwargs: Any) -> SimpleNamespace:
        return SimpleNamespace(**{"min_steps": None, "min_epochs": 0, "callbacks": [guard],
                                  "datamodule": SimpleNamespace(eval_datasets=lambda: {"retain": []}), **kwargs})

    with pytest.raises(ValueError, match="min_steps=5"):
        guard.setup(trainer(min_steps=5, min_epochs=1), module, "fit")
    with pytest.raises(ValueError, match="before UnlearningEvaluation"):
        guard.setup(trainer(callbacks=[evaluation, guard]), module, "fit")
    with pytest.raises(TypeError, match="eval_datasets"):
        guard.setup(trainer(datamodule=object()), module, "fit")
    with pytest.raises(ValueError, match="only \\['forget'\\]"):
        guard.setup(trainer(datamodule=SimpleNamespace(eval_datasets=lambda: {"forget": []})), module, "fit")
    guard.setup(trainer(callbacks=[guard, evaluation]), module, "fit")  # listed first: fine
