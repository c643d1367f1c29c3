"""`TextToMusicTraining`: trains or fine-tunes any `TextToMusicModel` on audio-caption pairs.

It builds the toy world's base model and the oracle retrained without the forget set, and fine-tunes real models.
Captions are dropped (replaced by the empty caption) with probability `caption_dropout`, so the model also learns the
unconditional prediction that classifier-free guidance needs (Ho & Salimans, 2022).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_modules.models.base import TextToMusicModel
from lightning_modules.module import TextToMusicModule
from lightning_modules.passes import check_finite


class TextToMusicTraining(TextToMusicModule):
    """Trains a text-to-music model with its own objective.

    Args:
        model: the model to train.
        optimizer: builds the optimizer from the selected parameters.
        lr_scheduler: builds a learning-rate scheduler (stepped every optimizer step); none when not given.
        parameter_groups: names of the model's parameter groups to train.
        caption_dropout: probability of training an item with the empty caption.
        eval_seed: seed of the per-item timesteps and noise of validation losses.
    """

    def __init__(
        self,
        model: TextToMusicModel,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        parameter_groups: Sequence[str] = ("all",),
        caption_dropout: float = 0.1,
        eval_seed: int = 0,
    ) -> None:
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout={caption_dropout} must be in [0, 1).")
        super().__init__(model, optimizer, lr_scheduler, parameter_groups, eval_seed)
        self.caption_dropout = caption_dropout

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        dropped = torch.rand(len(batch["caption"])) < self.caption_dropout
        captions = ["" if drop else caption for drop, caption in zip(dropped.tolist(), batch["caption"], strict=True)]
        losses = self.model.loss({**batch, "caption": captions})
        # before the optimizer step: a NaN loss would fill the weights with NaN
        check_finite(losses, batch["id"], f"{type(self).__name__} training loss at step {self.global_step}")
        loss = losses.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(captions))
        return loss
