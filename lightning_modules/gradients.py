"""Gradient statistics of a model's training loss over a dataset: the summed gradient (SalUn's weight saliency) and
the diagonal empirical Fisher (EWC, Selective Amnesia, attribution by unlearning), with the saliency mask and the
Fisher's file format.

Each item's loss is taken at the timesteps and noise its id fixes (`TextToMusicModel.fixed_loss_inputs`), so a
statistic is the same whichever process, batch or order measured an item, and it can be summed across processes.
The functions return sums over items; divide by the item count for means.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.passes import NON_FINITE_ADVICE, NonFiniteLossError, check_finite, listed_ids


def item(batch: Batch, index: int) -> Batch:
    """The `index`-th item of a collated batch, as a batch of one."""
    return {key: value[index : index + 1] for key, value in batch.items()}  # type: ignore[return-value]


def check_finite_sums(sums: Sequence[Tensor], ids: Sequence[str], what: str) -> None:
    """Raise `NonFiniteLossError` when gradient `sums` turned NaN or infinite while adding the items `ids` (whose
    losses were finite: a gradient overflowed). One device sync."""
    if bool(torch.stack([torch.isfinite(value).all() for value in sums]).all()):
        return
    raise NonFiniteLossError(f"The {what} turned non-finite (NaN or infinite) while adding the gradients of the items "
                             f"{listed_ids(list(ids))}, whose losses are finite; {NON_FINITE_ADVICE}.", ids)


def loss_gradient(model: TextToMusicModel, parameters: Sequence[nn.Parameter], batches: Iterable[Batch], *,
                  seed: int = 0) -> tuple[list[Tensor], int]:
    """``sum_i grad loss_i`` over the items of `batches`, and the number of items."""
    total = [torch.zeros_like(param, dtype=torch.float32) for param in parameters]
    count = 0
    for batch in batches:
        losses = model.loss(batch, **model.fixed_loss_inputs(batch["id"], seed))
        check_finite(losses, batch["id"], "per-item loss of the gradient pass")
        for acc, grad in zip(total, torch.autograd.grad(losses.sum(), parameters), strict=True):
            acc += grad.float()
        check_finite_sums(total, batch["id"], "summed loss gradient")
        count += len(batch["id"])
    return total, count


def squared_gradients(model: TextToMusicModel, parameters: Sequence[nn.Parameter], batches: Iterable[Batch], *,
                      seed: int = 0, draws: int = 1) -> tuple[list[Tensor], int]:
    """``sum_i mean_d (grad loss_i,d)^2`` over the items of `batches`, each at `draws` (timestep, noise) pairs
    (seeds ``seed .. seed + draws - 1``), and the number of items: the diagonal empirical Fisher times the count.

    Per-item gradients need one backward pass per item and draw.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    total = [torch.zeros_like(param, dtype=torch.float32) for param in parameters]
    count = 0
    for batch in batches:
        batch = model.with_targets(batch)  # each item encoded once, not once per draw
        losses = []  # checked once per batch: no device sync per item
        for index in range(len(batch["id"])):
            one = item(batch, index)
            for draw in range(draws):
                loss = model.loss(one, **model.fixed_loss_inputs(one["id"], seed + draw)).sum()
                losses.append(loss.detach())
                for acc, grad in zip(total, torch.autograd.grad(loss, parameters), strict=True):
                    acc.addcmul_(grad.float(), grad.float(), value=1 / draws)
            count += 1
        if losses:
            check_finite(torch.stack(losses).view(-1, draws), batch["id"], f"per-item loss (at {draws} draw(s)) of "
                         "the squared-gradient (Fisher) pass")
            check_finite_sums(total, batch["id"], "sum of squared gradients (Fisher)")
    return total, count


def saliency_mask(gradient: Sequence[Tensor], fraction: float) -> list[Tensor]:
    """Boolean masks of the `fraction` of weights with the largest gradient magnitude, ranked across all tensors
    together (SalUn's hard threshold at the ``1 - fraction`` quantile)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}.")
    magnitudes = torch.cat([grad.abs().flatten() for grad in gradient])
    keep = max(1, round(fraction * magnitudes.numel()))
    threshold = torch.topk(magnitudes, keep, sorted=False).values.min()
    return [grad.abs() >= threshold for grad in gradient]


def weights_digest(named: Iterable[tuple[str, Tensor]]) -> str:
    """A hash of named tensors' names, shapes, dtypes and values: which weights a cached statistic belongs to."""
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in named:
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
