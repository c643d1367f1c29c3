"""SimNPO (Fan et al., "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning",
arXiv 2410.07163, 2024), adapted to per-sample training losses.

NPO without its reference model: the forget term is ``-(2/beta) log sigmoid(beta (L - delta))`` with ``L`` the
length-normalised negative log-likelihood surrogate, here the per-sample loss, already a mean over tokens or latent
elements (so long and short clips weigh alike, the paper's point against NPO's reference-relative reward). The
gradient is gradient ascent's, faded by ``sigmoid(-beta (L - delta))`` once an item's loss is above ``delta``; no
frozen copy of the model is kept. Defaults as open-unlearning's SimNPO config: beta 4.5, delta 0, forget weight
0.125 and retain weight 1.
"""

from __future__ import annotations

from torch import Tensor

from lightning_modules.models.base import Batch
from lightning_modules.unlearning.base import UnlearningModule
from lightning_modules.unlearning.losses import negative_preference


class SimNPO(UnlearningModule):
    """Minimises ``forget_weight * -(2/beta) mean log sigmoid(beta (loss(forget) - delta)) + retain_weight *
    loss(retain)``.

    Args:
        beta: inverse temperature; as beta -> 0 the gradient approaches that of gradient ascent.
        delta: the loss margin past which an item's ascent fades (the paper's gamma / beta).
        forget_weight: weight of the forget term.
        retain_weight: weight of the ordinary loss on the retain set (0: measured without gradient).
        **kwargs: `UnlearningModule`'s arguments (the model, optimizer, parameter groups, ...).
    """

    def __init__(self, *args, beta: float = 4.5, delta: float = 0.0, forget_weight: float = 0.125,
                 retain_weight: float = 1.0, **kwargs) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}.")
        super().__init__(*args, **kwargs)
        self.beta, self.delta = beta, delta
        self.forget_weight, self.retain_weight = forget_weight, retain_weight

    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        forget_losses = self.model.loss(forget)
        simnpo = negative_preference(forget_losses - self.delta, self.beta)
        loss, retain_loss = self.plus_retain(self.forget_weight * simnpo, retain, self.retain_weight)
        return {"loss": loss, "simnpo_loss": simnpo.detach(), "forget_loss": forget_losses.mean().detach(),
                "retain_loss": retain_loss}
