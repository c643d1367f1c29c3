"""Loss pieces more than one method uses: forget captions over another batch's audio, and the negative-preference
loss of NPO and SimNPO."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from lightning_modules.models.base import Batch

Noised = Literal["retain", "forget"]


def cycled(captions: Sequence[str], count: int) -> list[str]:
    """`count` captions taken from `captions` in turn (forget captions for a retain batch of another size)."""
    return [captions[i % len(captions)] for i in range(count)]


def noised_inputs(forget: Batch, retain: Batch, noised: Noised) -> tuple[Batch, list[str]]:
    """The batch whose audio is noised into ``x_t`` (ESD, Concept Ablation) and the forget captions, one per item."""
    source = retain if noised == "retain" else forget
    return source, cycled(forget["caption"], len(source["caption"]))


def negative_preference(margin: Tensor, beta: float) -> Tensor:
    """``mean(-(2 / beta) log sigmoid(beta * margin))`` over items: ascent on `margin` (per item) whose gradient
    fades, by ``sigmoid(-beta * margin)``, as the margin grows (NPO: the loss above the reference's; SimNPO: the loss
    above a constant)."""
    return -(2 / beta) * F.logsigmoid(beta * margin).mean()
