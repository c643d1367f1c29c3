"""Passes over data inside a training run: `measuring`, the context that leaves the run as it found it, and
`sharded_batches`, a whole dataset split over processes: each takes every `world_size`-th item (no padding, no
duplicates), so per-item results can be gathered and sums reduced without double counting. A named pass shows a bar
on rank zero where the trainer shows progress (`progress`); `timed` logs how long a pass took. `check_finite` and
`check_finite_terms` are every pass's guard against a loss that is NaN or infinite: they raise `NonFiniteLossError`
naming the items, before the pass writes anything."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
T = TypeVar("T")

SHOWN_IDS = 10  # item ids a non-finite-loss error lists before it counts the rest
NON_FINITE_ADVICE = ("check those items' input audio and cached targets (a NaN or infinite sample, a stale or corrupt "
                     "target cache), the learning rate (a diverging model) and the precision (a bf16 / fp16 overflow)")


class NonFiniteLossError(FloatingPointError):
    """A pass met a loss that is NaN or infinite; `ids` are the items it names. A `FloatingPointError` (a numeric
    failure, not a bad argument: the cause may be the data, the learning rate or the precision) of its own class, so
    that `UnlearningGuard` and callers can tell it from any other error."""

    def __init__(self, message: str, ids: Sequence[str]) -> None:
        super().__init__(message)
        self.ids = list(ids)


def listed_ids(ids: Sequence[str]) -> str:
    """`ids` for a message: the first `SHOWN_IDS`, then how many more."""
    shown = [str(item_id) for item_id in ids[:SHOWN_IDS]]
    return f"{shown}" + (f" and {len(ids) - len(shown)} more" if len(ids) > len(shown) else "")


def check_finite(losses: Tensor, ids: Sequence[str], what: str) -> None:
    """Raise `NonFiniteLossError` naming the items whose loss is not finite.

    Args:
        losses: `(items, ...)` per-item losses (e.g. `(items,)` or `(items, draws)`); row i is item ``ids[i]``.
        ids: the items' ids.
        what: the pass and its loss, for the message (e.g. "LossSweep per-item loss").

    Costs one device sync (the all-finite test) where `losses` live on an accelerator; the rest runs on failure only.
    """
    if losses.dim() == 0 or losses.shape[0] != len(ids):
        raise ValueError(f"check_finite needs one row of losses per id, got losses of shape {tuple(losses.shape)} "
                         f"for {len(ids)} id(s) ({what}).")
    if not ids:
        return
    finite = torch.isfinite(losses.detach()).reshape(len(ids), -1).all(dim=1)
    if bool(finite.all()):
        return
    rows = (~finite).nonzero().flatten().tolist()
    bad = [ids[row] for row in rows]
    values = losses.detach().reshape(len(ids), -1)[rows[:3]].float().cpu().tolist()
    raise NonFiniteLossError(f"The {what} is not finite (NaN or infinite) for {len(bad)} of {len(ids)} item(s): "
                             f"{listed_ids(bad)} (e.g. {values}); {NON_FINITE_ADVICE}.", bad)


def check_finite_terms(terms: Mapping[str, Tensor], ids: Mapping[str, Sequence[str]], what: str) -> None:
    """Raise `NonFiniteLossError` when a loss term of a whole batch is not finite, naming the terms and the batch's
    items, by role (e.g. ``{"forget": [...], "retain": [...]}``): a term averaged over a batch does not tell which
    item made it non-finite. One device sync for all the terms together."""
    finite = torch.stack([torch.isfinite(value.detach()).all() for value in terms.values()])
    if bool(finite.all()):
        return
    bad = {name: value.detach().float().cpu().tolist() for (name, value), ok in zip(terms.items(), finite.tolist(),
                                                                                    strict=True) if not ok}
    roles = "; ".join(f"{role}: {listed_ids(list(role_ids))}" for role, role_ids in ids.items())
    raise NonFiniteLossError(f"The {what} is not finite (NaN or infinite): {bad} on the batch of items ({roles}); "
                             f"{NON_FINITE_ADVICE}.", [item_id for role_ids in ids.values() for item_id in role_ids])


@contextmanager
def measuring(model: nn.Module, device: torch.device, grad: bool = False) -> Iterator[None]:
    """No gradients (unless `grad`), `model` in eval mode, and afterwards the global random state (CPU and `device`)
    and every submodule's own train / eval mode restored: training draws the same batches and noise, in the same
    modes, whether a measurement ran or not."""
    modes = {module: module.training for module in model.modules()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.set_grad_enabled(grad):
        model.eval()
        try:
            yield
        finally:
            for module, training in modes.items():
                module.training = training


def progress(trainer: L.Trainer | None, iterable: Iterable[T], what: str, total: int | None = None) -> Iterator[T]:
    """`iterable`, with a bar named `what` on rank zero (cleared when done) where the trainer shows progress (not
    under ``enable_progress_bar: false``, nor without a trainer)."""
    if trainer is None or not trainer.is_global_zero or trainer.progress_bar_callback is None:
        yield from iterable
        return
    yield from tqdm(iterable, desc=what, total=total, leave=False, dynamic_ncols=True)


@contextmanager
def timed(trainer: L.Trainer | None, what: str) -> Iterator[None]:
    """Log on rank zero how long the block took: "<what> took 12.3 s"."""
    started = time.perf_counter()
    yield
    if trainer is None or trainer.is_global_zero:
        log.info("%s took %.1f s", what, time.perf_counter() - started)


def sharded_batches(trainer: L.Trainer, dataset: Dataset, batch_size: int, indices: list[int] | None = None,
                    what: str | None = None) -> Iterator[dict]:
    """This process's share of `indices` (default all) of `dataset`, in batches on the training device; with a bar
    named `what` (`progress`) where given."""
    indices = list(range(len(dataset))) if indices is None else indices  # type: ignore[arg-type]
    device = trainer.strategy.root_device
    loader = DataLoader(Subset(dataset, indices[trainer.global_rank::trainer.world_size]), batch_size)
    batches = loader if what is None else progress(trainer, loader, what, len(loader))
    for batch in batches:
        yield move_data_to_device(batch, device)
