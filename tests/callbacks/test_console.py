"""What a run prints: the parameter summary without module modes and FLOPs, the epoch without "/-2", no install tips,
no warning about the frozen modules, no weight-loading bars; and a config's own choices kept."""

from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import pytest
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

from callbacks.progress import StepProgressBar
from callbacks.summary import ParameterSummary, summary_table
from tests.conftest import write_config


def test_summary_table_keeps_names_types_and_parameter_totals():
    columns = [(" ", ["0", "1"]), ("Name", ["model", "reference"]), ("Type", ["ToyTextToMusic", "ToyTextToMusic"]),
               ("Params", ["2.2 M", "2.2 M"]), ("Mode", ["train", "eval"]), ("FLOPs", ["0", "0"])]
    table = summary_table(columns, total=4_400_000, trainable=2_200_000, size_mb=17.6)

    assert "FLOPs" not in table and "Mode" not in table and "eval" not in table
    assert "1 | reference | ToyTextToMusic | 2.2 M" in table
    assert "2.2 M      Trainable params" in table and "4.4 M      Total params" in table


@pytest.mark.parametrize(("max_epochs", "expected"), [(-1, "Epoch 3"), (10, "Epoch 3/9")])
def test_the_epoch_is_shown_with_its_bound_only_where_there_is_one(max_epochs, expected):
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=max_epochs)

    assert bar._get_train_description(3) == f"{expected:10}"  # padded to "Validation", as Lightning pads it


def test_the_known_harmless_warnings_are_dropped_and_no_other_of_their_kind():
    from train import quiet

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet()
        warnings.warn("Found 255 module(s) in eval mode at the start of training. This may lead to unexpected "
                      "behavior during training.", PossibleUserWarning, stacklevel=1)
        warnings.warn("The number of training batches (3) is smaller than the logging interval", PossibleUserWarning,
                      stacklevel=1)
        leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
        warnings.warn_explicit(leaf, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(leaf, FutureWarning, "mine.py", 1, module="my_code")  # from elsewhere: kept
    assert [str(warning.message)[:30] for warning in caught] == ["The number of training batches", leaf[:30]]


def test_a_fit_prints_no_tips_summary_noise_or_loading_bars(tmp_path, tiny_corpus, tiny_model_dir, caplog, capsys,
                                                           recwarn):
    from train import main

    config = write_config(tmp_path, tiny_corpus, tiny_model_dir, enable_model_summary=True, max_steps=1)
    with caplog.at_level(logging.INFO):
        cli = main(["fit", "--config", str(config)])
    printed = caplog.text + capsys.readouterr().err

    summaries = [callback for callback in cli.trainer.callbacks if isinstance(callback, ModelSummary)]
    assert [type(callback) for callback in summaries] == [ParameterSummary]
    assert "Trainable params" in printed and "Total Flops" not in printed and "Modules in eval mode" not in printed
    assert "Tip:" not in printed and "Loading weights" not in printed
    assert "Evaluating before took" in printed and "Evaluating after took" in printed  # each long pass says its time
    assert not [warning for warning in recwarn if "module(s) in eval mode" in str(warning.message)]


def test_a_summary_the_config_names_is_kept(tmp_path, tiny_corpus, tiny_model_dir):
    from train import main

    config = write_config(tmp_path, tiny_corpus, tiny_model_dir, max_steps=1)
    cli = main(["fit", "--config", str(config), "--trainer.callbacks+=RichModelSummary",
                "--trainer.enable_model_summary=true"])
    assert [type(c) for c in cli.trainer.callbacks if isinstance(c, ModelSummary)] == [RichModelSummary]


def test_fit_help_lists_the_unlearning_methods_and_data_modules(capsys):
    from train import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # the help wraps lines
    for name in ("lightning_modules.unlearning.GradientDifference", "lightning_modules.unlearning.SalUn",
                 "lightning_modules.training.TextToMusicTraining", "datamodules.ForgetRetainDataModule"):
        assert name in text
