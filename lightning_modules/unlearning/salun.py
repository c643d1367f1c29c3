"""SalUn (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Image
Classification and Generation", ICLR 2024), for text-to-music.

Before training, the gradient of the forget set's loss (at the current weights, timesteps and noise fixed per item)
ranks the trainable weights; the top `saliency_fraction` by magnitude are salient. Training is random labeling plus
the retain loss, with every gradient multiplied by the mask, so only salient weights move. The mask is computed once
per run, sharded across processes, and kept in checkpoints so that a resumed run trains the same weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_modules.gradients import loss_gradient, saliency_mask
from lightning_modules.unlearning.random_label import RandomLabel

CHECKPOINT_KEY = "salun_mask"


class SalUn(RandomLabel):
    """`RandomLabel` (with the retain loss) restricted to the weights salient for the forget set.

    Args:
        saliency_fraction: share of the selected weights that are trained, in (0, 1] (the paper: 0.5); saliency is
            ranked among the weights of `parameter_groups`.
        retain_weight: weight of the ordinary loss on the retain set.
        **kwargs: `RandomLabel`'s `captions` and `UnlearningModule`'s arguments (the model, the optimizer: keep its
            weight decay at 0, as decay would move the masked weights too; `eval_seed` also fixes the saliency pass).
    """

    def __init__(self, *args, saliency_fraction: float = 0.5, retain_weight: float = 1.0, **kwargs) -> None:
        if not 0.0 < saliency_fraction <= 1.0:
            raise ValueError(f"saliency_fraction must lie in (0, 1], got {saliency_fraction}.")
        super().__init__(*args, retain_weight=retain_weight, **kwargs)
        self.saliency_fraction = saliency_fraction
        self.mask: list[Tensor] | None = None  # one bool tensor per trainable parameter, once computed or restored

    def on_fit_start(self) -> None:
        if self.mask is None:
            gradient = self.gradient_statistic("forget", loss_gradient, seed=self.eval_seed)
            self.mask = saliency_mask(gradient, self.saliency_fraction)
        salient = sum(int(mask.sum()) for mask in self.mask)
        self.print(f"SalUn: training {salient:,} of {sum(m.numel() for m in self.mask):,} selected weights.")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.mask is None:
            raise RuntimeError("SalUn's saliency mask is missing: it is computed at fit start.")
        for param, mask in zip(self.trainable, self.mask, strict=True):
            if param.grad is not None:
                param.grad.mul_(mask.to(param.grad.device))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.mask is not None:
            checkpoint[CHECKPOINT_KEY] = [mask.cpu() for mask in self.mask]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if CHECKPOINT_KEY in checkpoint:
            self.mask = [mask.to(self.device) for mask in checkpoint[CHECKPOINT_KEY]]
