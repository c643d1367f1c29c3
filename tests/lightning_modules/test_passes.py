"""The non-finite-loss checks every pass shares: which items they name, how many they list, and what they accept."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.passes import NonFiniteLossError, check_finite, check_finite_terms


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
