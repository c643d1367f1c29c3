"""What every pass shares: the non-finite-loss checks (which items they name, how many they list, what they accept),
and the progress bar and timing line of a named pass."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from lightning_modules.passes import NonFiniteLossError, check_finite, check_finite_terms, progress, timed


def test_check_finite_names_the_rows_that_are_not_finite_and_counts_past_ten():
    ids = [f"item{i}" for i in range(14)]
    losses = torch.ones(14, 3)
    losses[1:, 2] = float("nan")
    losses[5, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"The sweep loss is not finite \(NaN or infinite\) for 13 of 14 "
                                                 r"item\(s\): \['item1', .*'item10'\] and 3 more") as error:
        check_finite(losses, ids, "sweep loss")
    assert error.value.ids == ids[1:] and isinstance(error.value, FloatingPointError)
    assert "'item11'" not in str(error.value) and "learning rate" in str(error.value)
    check_finite(torch.ones(2, 3), ["a", "b"], "sweep loss")  # finite: nothing happens
    check_finite(torch.empty(0), [], "sweep loss")
    with pytest.raises(ValueError, match=r"one row of losses per id, got losses of shape \(3,\) for 2 id\(s\)"):
        check_finite(torch.ones(3), ["a", "b"], "sweep loss")


def test_check_finite_terms_names_the_terms_and_every_item_of_the_batch():
    terms = {"loss": torch.tensor(float("-inf")), "forget_loss": torch.tensor(2.0)}
    with pytest.raises(NonFiniteLossError, match=r"\{'loss': -inf\} on the batch of items \(forget: \['a'\]; "
                                                 r"retain: \['b', 'c'\]\)") as error:
        check_finite_terms(terms, {"forget": ["a"], "retain": ["b", "c"]}, "training loss")
    assert error.value.ids == ["a", "b", "c"]
    check_finite_terms({"loss": torch.tensor(1.0)}, {"forget": ["a"]}, "training loss")


@pytest.mark.parametrize(("rank_zero", "bar", "shown"), [(True, object(), True), (True, None, False),
                                                         (False, object(), False)])
def test_a_named_pass_shows_a_bar_on_rank_zero_where_the_trainer_shows_progress(capsys, rank_zero, bar, shown):
    trainer = SimpleNamespace(is_global_zero=rank_zero, progress_bar_callback=bar)

    assert list(progress(trainer, range(3), "Embedding the forget set", total=3)) == [0, 1, 2]
    assert ("Embedding the forget set" in capsys.readouterr().err) == shown
    assert list(progress(None, range(2), "no trainer")) == [0, 1]


def test_timed_logs_on_rank_zero_only(caplog):
    with caplog.at_level(logging.INFO, logger="lightning_modules.passes"):
        with timed(SimpleNamespace(is_global_zero=True), "Evaluating after"):
            pass
        with timed(SimpleNamespace(is_global_zero=False), "Evaluating on rank 1"):
            pass
    assert "Evaluating after took 0.0 s" in caplog.text and "rank 1" not in caplog.text
