"""EWC-regularised forgetting in the style of Selective Amnesia (Heng & Soh, "Selective Amnesia: A Continual
Learning Approach to Forgetting in Deep Generative Models", NeurIPS 2023), for text-to-music.

The forget objective is Selective Amnesia's surrogate (the forget captions paired with other audio, here the retain
batch's, so the captions stop producing the artist) or plain ascent on the forget loss; the retain loss stands in
for the paper's generative replay; elastic weight consolidation (Kirkpatrick et al., 2017) holds the weights that
matter for the retain set: ``ewc_weight / 2 * sum_i F_i (theta_i - theta0_i)^2``, with ``F`` the diagonal empirical
Fisher of the retain set at the starting weights ``theta0``.

The Fisher is computed once, at the first fit, from every retain item (per-item squared gradients at timesteps and
noise fixed per item, sharded across processes and summed) and written to `fisher_path` (default: the cache, keyed
by the weights, the items and the seed); later runs and resumed runs read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from datamodules.attribution_store import FisherFile
from lightning_modules.attribution.settings import FISHER_DRAWS
from lightning_modules.gradients import squared_gradients, weights_digest
from lightning_modules.io import cache_key, default_cache_dir
from lightning_modules.models.base import Batch
from lightning_modules.unlearning.base import UnlearningModule
from lightning_modules.unlearning.losses import cycled


class EWC(UnlearningModule):
    """Minimises ``forget objective + retain_weight * loss(retain) + ewc_weight / 2 * sum F (theta - theta0)^2``.

    Args:
        forget_objective: "surrogate": the loss of retain audio under forget captions (Selective Amnesia);
            "ascent": minus the forget loss.
        ewc_weight: ``lambda``, the strength of the consolidation.
        retain_weight: weight of the ordinary loss on the retain set.
        fisher_path: the Fisher's file: read when it exists (and matches this run's weights and retain set),
            written otherwise; default a file in ``$TTM_UNLEARNING_CACHE/fisher``.
        fisher_draws: (timestep, noise) draws per retain item in the Fisher.
        **kwargs: `UnlearningModule`'s arguments (the model, optimizer, parameter groups, ...); its `eval_seed` also
            fixes the Fisher's timesteps and noise.
    """

    def __init__(self, *args, forget_objective: Literal["surrogate", "ascent"] = "surrogate",
                 ewc_weight: float = 1000.0, retain_weight: float = 1.0, fisher_path: str | None = None,
                 fisher_draws: int = FISHER_DRAWS, **kwargs) -> None:
        if forget_objective not in ("surrogate", "ascent"):
            raise ValueError(f"forget_objective must be 'surrogate' or 'ascent', got {forget_objective!r}.")
        if ewc_weight < 0:
            raise ValueError(f"ewc_weight must be non-negative, got {ewc_weight}.")
        super().__init__(*args, **kwargs)
        self.forget_objective = forget_objective
        self.ewc_weight = ewc_weight
        self.retain_weight = retain_weight
        self.fisher_path = fisher_path
        self.fisher_draws = fisher_draws
        self.names = self.model.parameter_names(self.trainable)
        # theta0: the weights unlearning starts from, rebuilt from `model` on resume, so never checkpointed
        self.start = [param.detach().clone() for param in self.trainable]
        self.fisher: list[Tensor] | None = None

    def fisher_file(self) -> tuple[FisherFile, dict]:
        """The Fisher's file, and what it must have been computed from."""
        retain_ids = [item.id for item in self.split_dataset("retain").items]
        info = {"weights": weights_digest(zip(self.names, self.start, strict=True)),
                "items": cache_key(retain_ids), "seed": self.eval_seed, "draws": self.fisher_draws}
        path = Path(self.fisher_path) if self.fisher_path else default_cache_dir() / "fisher" / f"{cache_key(info)}.pt"
        return FisherFile(path), info

    def on_fit_start(self) -> None:
        self.start = [start.to(self.device) for start in self.start]  # once, not in every step's penalty
        file, info = self.fisher_file()
        if file.readable():
            fisher, _ = file.load(**info)
            missing = [name for name in self.names if name not in fisher]
            if missing:
                raise ValueError(f"The Fisher information in {file.path} has no entry for {missing[:5]}; delete it to "
                                 "recompute it for this run's parameter groups.")
            self.fisher = [fisher[name].to(self.device) for name in self.names]
            self.print(f"EWC: Fisher information read from {file.path}.")
            return
        self.fisher = self.gradient_statistic("retain", squared_gradients, seed=self.eval_seed,
                                              draws=self.fisher_draws)
        if self.trainer.is_global_zero:
            file.save(dict(zip(self.names, self.fisher, strict=True)), **info)
        self.trainer.strategy.barrier("ewc_fisher")
        self.print(f"EWC: Fisher information of the retain set written to {file.path}.")

    def penalty(self) -> Tensor:
        """``1/2 sum F (theta - theta0)^2`` over the trainable weights."""
        if self.fisher is None:
            raise RuntimeError("EWC's Fisher information is missing: it is computed or read at fit start.")
        total = sum((f * (param - start).pow(2)).sum()
                    for param, start, f in zip(self.trainable, self.start, self.fisher, strict=True))
        return 0.5 * total

    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        if self.forget_objective == "surrogate":
            surrogate = {**retain, "caption": cycled(forget["caption"], len(retain["caption"]))}
            forget_term = self.model.loss(surrogate, reduction="mean")
            with torch.no_grad():
                forget_loss = self.model.loss(forget, reduction="mean")
        else:
            forget_loss = self.model.loss(forget, reduction="mean")
            forget_term = -forget_loss
        penalty = self.penalty()
        loss, retain_loss = self.plus_retain(forget_term + self.ewc_weight * penalty, retain, self.retain_weight)
        return {"loss": loss, "forget_term": forget_term.detach(), "ewc_penalty": penalty.detach(),
                "forget_loss": forget_loss.detach(), "retain_loss": retain_loss}
