"""`QueryUnlearning`: unlearning a generated query by Fisher-preconditioned gradient ascent, the first half of
attribution by unlearning (Wang et al., "Data Attribution for Text-to-Image Models by Unlearning Synthesized
Images", NeurIPS 2024; Choi et al., "Large-Scale Training Data Attribution for Music Generative Models via
Unlearning", 2025): ``theta <- theta + lr * grad L(q) / (N * F + eps)`` for one or a few steps on the selected
parameter groups, ``F`` the diagonal Fisher of the training set and ``N`` its size (both from the Fisher file), the
gradient of the queries' mean loss averaged over `draws` (timestep, noise) pairs fixed by the query ids.

Silence masking of zero-padded queries (Choi et al.): ``none`` treats padding as real audio in unlearning and in
the loss sweeps, ``dual`` masks it in both, ``mixed`` masks it in unlearning only; this module decides the
unlearning side and exposes `measure_masked` for the sweeps' ``masked`` flag. Run as ``train.py fit``
(``configs/attribution/unlearn.yaml``, one epoch over a DataModule serving the queries as one batch) or call
`unlearn` directly; the fit writes the changed parameters (name -> tensor) atomically to `delta_path`, the file the
"after" sweep loads as ``pretrained_delta``, with a JSON record of the settings beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from lightning_modules.attribution.fisher import read_fisher
from lightning_modules.gradients import weights_digest
from lightning_modules.io import atomic_file, write_json_atomic
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.module import ModelAudioFormat
from lightning_modules.passes import measuring

log = logging.getLogger(__name__)

Masking = Literal["none", "dual", "mixed"]


class QueryUnlearning(ModelAudioFormat, L.LightningModule):
    """Fisher-preconditioned gradient ascent on the query audio.

    Args:
        model: the model to unlearn from (the weights the Fisher was computed at).
        fisher_path: the training set's Fisher (``configs/attribution/fisher.yaml``); it must cover the groups.
        delta_path: where the fit writes the changed parameters (``torch.save`` of name -> tensor).
        parameter_groups: names of the model's parameter groups to change.
        lr: the ascent step size (Choi et al.'s best: 1e-6 with all transformer layers, one step).
        steps: ascent steps; step s uses draws ``seed + s * draws .. seed + (s + 1) * draws - 1``.
        draws: (timestep, noise) draws the query gradient is averaged over.
        seed: seed of the query's draws; keep it apart from the sweeps' seed, so that a training track unlearned as
            its own query (self-influence) is not measured at the very noise it was unlearned at.
        eps: added to ``N * F`` so weights the Fisher never saw do not divide by zero.
        masking: silence masking variant: "none", "dual" or "mixed" (see the module docstring).
    """

    def __init__(self, model: TextToMusicModel, fisher_path: str, delta_path: str,
                 parameter_groups: Sequence[str] = ("all",), lr: float = 1e-6, steps: int = 1, draws: int = 1,
                 seed: int = 1_000_003, eps: float = 1e-12, masking: Masking = "mixed") -> None:
        super().__init__()
        if masking not in ("none", "dual", "mixed"):
            raise ValueError(f"masking must be 'none', 'dual' or 'mixed', got {masking!r}.")
        for key, value in (("steps", steps), ("draws", draws)):
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}.")
        if lr <= 0 or eps < 0:
            raise ValueError(f"lr must be positive and eps non-negative, got lr={lr}, eps={eps}.")
        self.model = model
        self.fisher_path = Path(fisher_path)
        self.delta_path = Path(delta_path)
        self.parameter_groups = list(parameter_groups)
        self.lr, self.steps, self.draws, self.seed, self.eps = lr, steps, draws, seed, eps
        self.masking = masking
        selected = model.select_parameters(self.parameter_groups)
        names = {id(param): name for name, param in model.named_parameters()}
        self.names = [names[id(param)] for param in selected]
        self.automatic_optimization = False
        self._fisher: tuple[str, list[Tensor], int] | None = None  # (weights digest, F per name, N)
        self.delta: dict[str, Tensor] = {}
        self.query_ids: list[str] = []
        self.query_loss: dict[str, float] = {}

    @property
    def measure_masked(self) -> bool:
        """Whether the loss sweeps should mask padding (the sweep's ``masked``): only with "dual" masking."""
        return self.masking == "dual"

    def fisher(self, model: TextToMusicModel) -> tuple[list[Tensor], int]:
        """``F`` of the selected parameters (in `names` order) and ``N``, read once, after checking the file was
        computed at `model`'s current weights and covers every selected parameter."""
        digest = weights_digest(sorted(model.state_dict().items()))
        if self._fisher is None or self._fisher[0] != digest:
            values, info = read_fisher(self.fisher_path, weights=digest)
            missing = [name for name in self.names if name not in values]
            if missing:
                raise ValueError(f"The Fisher information in {self.fisher_path} has no entry for {missing[:5]}; "
                                 f"compute it for parameter groups covering {self.parameter_groups}.")
            if int(info.get("count", 0)) < 1:
                raise ValueError(f"The Fisher information in {self.fisher_path} records no training-set size "
                                 "(info 'count'); recompute it with FisherEstimation.")
            self._fisher = (digest, [values[name] for name in self.names], int(info["count"]))
        return self._fisher[1], self._fisher[2]

    def unlearning_batch(self, batch: Batch) -> Batch:
        """The query as unlearning sees it: with "none" masking the padding counts as audio."""
        if self.masking == "none":
            return {**batch, "mask": torch.ones_like(batch["mask"])}
        return batch

    def query_gradient(self, model: TextToMusicModel, params: Sequence[nn.Parameter], batch: Batch, step: int
                       ) -> tuple[list[Tensor], float]:
        """``mean_d grad mean_q L(q; draw d)`` of step `step` over `params`, and the mean loss at those draws."""
        total = [torch.zeros_like(param, dtype=torch.float32) for param in params]
        loss_sum = 0.0
        for draw in range(self.draws):
            fixed = model.fixed_loss_inputs(list(batch["id"]), self.seed + step * self.draws + draw)
            loss = model.loss(batch, **fixed, reduction="mean")
            for acc, grad in zip(total, torch.autograd.grad(loss, params), strict=True):
                acc += grad.float() / self.draws
            loss_sum += float(loss.detach()) / self.draws
        return total, loss_sum

    def unlearn(self, model: TextToMusicModel, batch: Batch,
                reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """Apply `steps` preconditioned ascent steps on the query `batch` to `model`'s selected parameters, in place,
        and return their new values (name -> detached copy). Only the selected parameters change; the model is
        left in its train / eval mode and the global random state as they were.

        Args:
            model: the model to change (this module's own in a fit, or another with the same parameter names).
            batch: the queries: ``id``, ``caption``, ``mask`` and ``audio`` (or ``targets``).
            reduce: averages a gradient across processes (the fit passes the strategy's mean); None for one process.
        """
        fisher, count = self.fisher(model)
        named = dict(model.named_parameters())
        params = [named[name] for name in self.names]
        batch = self.unlearning_batch(batch)
        device = params[0].device
        denominators = [count * value.to(device=device, dtype=torch.float32) + self.eps for value in fisher]
        flags = [param.requires_grad for param in params]
        losses = []
        try:
            with measuring(model, device, grad=True):
                for param in params:
                    param.requires_grad_(True)
                for step in range(self.steps):
                    gradient, loss = self.query_gradient(model, params, batch, step)
                    losses.append(loss)
                    with torch.no_grad():
                        for param, grad, denominator in zip(params, gradient, denominators, strict=True):
                            grad = reduce(grad) if reduce is not None else grad
                            param.add_((self.lr * grad / denominator).to(param.dtype))
                with torch.no_grad():  # at the first step's draws, as the loss before
                    after = sum(float(model.loss(batch, **model.fixed_loss_inputs(list(batch["id"]), self.seed + d),
                                                 reduction="mean")) for d in range(self.draws)) / self.draws
        finally:
            for param, flag in zip(params, flags, strict=True):
                param.requires_grad_(flag)
        self.query_loss = {"before": losses[0], "after": after}
        self.query_ids = list(batch["id"])
        self.delta = {name: param.detach().cpu().clone() for name, param in zip(self.names, params, strict=True)}
        return dict(self.delta)

    def configure_optimizers(self) -> None:
        return None  # the ascent step is applied by hand: it is preconditioned and runs once

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        if self.delta:
            raise RuntimeError("QueryUnlearning unlearns its queries once, as one batch: run one epoch "
                               "(trainer.max_epochs: 1) over a DataModule serving them together (ItemsDataModule); "
                               "set the number of ascent steps with model.init_args.steps.")
        strategy = self.trainer.strategy
        self.unlearn(self.model, batch, reduce=lambda value: strategy.reduce(value, reduce_op="mean"))
        for key, value in self.query_loss.items():
            self.log(f"unlearn/query_loss_{key}", value, batch_size=len(batch["id"]))

    def on_train_end(self) -> None:
        if not self.delta:
            raise RuntimeError("QueryUnlearning saw no query batch; check the DataModule's manifest.")
        if self.trainer.is_global_zero:
            self.write(self.delta_path)
        self.trainer.strategy.barrier("query_delta_written")

    def settings(self) -> dict[str, Any]:
        """What produced the delta, and how the sweeps should measure (``measure_masked``)."""
        return {"queries": self.query_ids, "fisher_path": str(self.fisher_path),
                "parameter_groups": self.parameter_groups, "lr": self.lr, "steps": self.steps, "draws": self.draws,
                "seed": self.seed, "eps": self.eps, "masking": self.masking, "measure_masked": self.measure_masked,
                "query_loss": self.query_loss, "parameters": self.names}

    def write(self, path: str | Path) -> None:
        """Write the changed parameters to `path` and the settings to `path` with suffix ``.json``, atomically."""
        path = Path(path)
        with atomic_file(path) as tmp:
            torch.save(self.delta, tmp)
        write_json_atomic(path.with_suffix(".json"), self.settings())
        log.info("Unlearned %d parameter tensor(s) on %d query(ies): query loss %.6g -> %.6g; delta written to %s.",
                 len(self.delta), len(self.query_ids), self.query_loss["before"], self.query_loss["after"], path)
