"""Negative Preference Optimization (Zhang et al., "Negative Preference Optimization: From Catastrophic Collapse to
Effective Unlearning", COLM 2024), adapted to per-sample training losses.

NPO minimises ``-(2/beta) log sigmoid(-beta log(p_model / p_reference))`` on the forget set. With the per-sample loss
``L`` as the negative log-likelihood surrogate (token cross-entropy; the diffusion ELBO's weighted MSE), ``log(p_model
/ p_reference) = -(L_model - L_reference)``, so the objective is ``-(2/beta) log sigmoid(beta (L_model -
L_reference))``: ascent on the forget loss whose gradient fades, by ``sigmoid(-beta (L_model - L_reference))``, once
the model has moved away from the reference, which is what keeps NPO from the collapse of plain gradient ascent. Both
losses are computed at the same timesteps and noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.models.base import Batch
from lightning_modules.unlearning.base import UnlearningModule
from lightning_modules.unlearning.losses import negative_preference


class NPO(UnlearningModule):
    """NPO on the forget set, plus ``retain_weight * loss(retain)``.

    Args:
        beta: inverse temperature; as beta -> 0 the gradient approaches that of gradient ascent.
        retain_weight: weight of the ordinary loss on the retain set.
        **kwargs: `UnlearningModule`'s arguments (the model, optimizer, parameter groups, ...).
    """

    needs_reference = True

    def __init__(self, *args, beta: float = 0.1, retain_weight: float = 0.0, **kwargs) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}.")
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.retain_weight = retain_weight

    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        model_draws, reference_draws = self.same_draws(2)
        forget_losses = self.model.loss(forget, generator=model_draws)
        with torch.no_grad():
            reference_losses = self.reference.loss(forget, generator=reference_draws)
        npo = negative_preference(forget_losses - reference_losses, self.beta)
        loss, retain_loss = self.plus_retain(npo, retain, self.retain_weight)
        return {"loss": loss, "npo_loss": npo.detach(), "forget_loss": forget_losses.mean().detach(),
                "retain_loss": retain_loss}
