"""Random Labeling: train the ordinary loss on forget audio paired with wrong captions, so the model unlinks the
forget set's audio from its descriptions (Golatkar et al., 2020; one of the two methods of the opt-out study on
MusicGen, Kim et al., 2025). The wrong captions are drawn from the retain batch, or from a given list."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_modules.models.base import Batch
from lightning_modules.unlearning.base import UnlearningModule


class RandomLabel(UnlearningModule):
    """Minimises ``loss(forget audio, random captions) + retain_weight * loss(retain)``.

    Args:
        captions: the captions to draw from; default the captions of the retain batch.
        retain_weight: weight of the ordinary loss on the retain set (0: not computed with gradient).
        **kwargs: `UnlearningModule`'s arguments (the model, optimizer, parameter groups, ...).
    """

    def __init__(self, *args, captions: Sequence[str] | None = None, retain_weight: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if captions is not None and not captions:
            raise ValueError("captions is empty; give some captions or leave it out to draw from the retain batch.")
        self.captions = list(captions) if captions is not None else None
        self.retain_weight = retain_weight

    def relabel(self, forget: Batch, retain: Batch) -> Batch:
        """`forget` with each caption replaced by one drawn at random (with replacement) from the pool."""
        pool = self.captions if self.captions is not None else list(retain["caption"])
        picks = torch.randint(len(pool), (len(forget["caption"]),)).tolist()
        return {**forget, "caption": [pool[i] for i in picks]}

    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        relabeled_loss = self.model.loss(self.relabel(forget, retain), reduction="mean")
        with torch.no_grad():
            forget_loss = self.model.loss(forget, reduction="mean")
        loss, retain_loss = self.plus_retain(relabeled_loss, retain, self.retain_weight)
        return {"loss": loss, "relabeled_loss": relabeled_loss.detach(), "forget_loss": forget_loss,
                "retain_loss": retain_loss}
