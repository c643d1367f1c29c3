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
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from datamodules.attribution_store import Delta, FisherFile
from lightning_modules.attribution.precision import require_float32
from lightning_modules.attribution.settings import AscentSettings
from lightning_modules.gradients import weights_digest
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.module import ModelAudioFormat
from lightning_modules.passes import check_finite, measuring

log = logging.getLogger(__name__)


class FisherAscent:
    """The preconditioned ascent itself, on any model with the selected parameter names: what `QueryUnlearning`
    runs once in a fit and `QueryAttribution` runs per query.

    Args:
        names: the parameters to change (names as in ``model.named_parameters()``).
        fisher_path: the training set's Fisher (``configs/attribution/fisher.yaml``); it must cover `names`.
        config: the ascent's lr, steps, draws, seed, eps and silence masking.
    """

    def __init__(self, names: Sequence[str], fisher_path: str | Path, config: AscentSettings = AscentSettings()
                 ) -> None:
        self.names = list(names)
        self.fisher_path = Path(fisher_path)
        self.config = config
        self._fisher: tuple[str, list[Tensor], int] | None = None  # (weights digest, F per name, N)

    @property
    def measure_masked(self) -> bool:
        """Whether the loss sweeps should mask padding (the sweep's ``masked``): only with "dual" masking."""
        return self.config.measure_masked

    def settings(self) -> dict[str, Any]:
        """The ascent's settings, as recorded beside a delta."""
        return {"fisher_path": str(self.fisher_path), **self.config.record()}

    def fisher(self, model: TextToMusicModel) -> tuple[list[Tensor], int]:
        """``F`` of the selected parameters (in `names` order) and ``N``, read once, after checking the file was
        computed at `model`'s current weights and covers every selected parameter."""
        digest = weights_digest(sorted(model.state_dict().items()))
        if self._fisher is None or self._fisher[0] != digest:
            values, info = FisherFile(self.fisher_path).load(weights=digest)
            missing = [name for name in self.names if name not in values]
            if missing:
                raise ValueError(f"The Fisher information in {self.fisher_path} has no entry for {missing[:5]}; "
                                 "compute it for parameter groups covering the unlearned ones.")
            if int(info.get("count", 0)) < 1:
                raise ValueError(f"The Fisher information in {self.fisher_path} records no training-set size "
                                 "(info 'count'); recompute it with FisherEstimation.")
            self._fisher = (digest, [values[name] for name in self.names], int(info["count"]))
        return self._fisher[1], self._fisher[2]

    def unlearning_batch(self, batch: Batch) -> Batch:
        """The query as unlearning sees it: with "none" masking the padding counts as audio."""
        if self.config.masking == "none":
            return {**batch, "mask": torch.ones_like(batch["mask"])}
        return batch

    def query_gradient(self, model: TextToMusicModel, params: Sequence[nn.Parameter], batch: Batch, step: int
                       ) -> tuple[list[Tensor], float]:
        """``mean_d grad mean_q L(q; draw d)`` over `params` at the draws of step `step` (one backward per draw, so
        memory does not grow with `draws`), and the mean loss at those draws."""
        total = [torch.zeros_like(param, dtype=torch.float32) for param in params]
        means = []
        for draw in range(self.config.draws):
            fixed = model.fixed_loss_inputs(list(batch["id"]), self.config.seed + step * self.config.draws + draw)
            losses = model.loss(batch, **fixed)
            # the sync this costs replaces the one float(loss) took per draw: the means are read once, below
            check_finite(losses, list(batch["id"]), f"query loss at ascent step {step}, draw {draw}")
            loss = losses.mean()
            for acc, grad in zip(total, torch.autograd.grad(loss, params), strict=True):
                acc += grad.float() / self.config.draws
            means.append(loss.detach())
        return total, sum(float(mean) / self.config.draws for mean in means)

    def unlearn(self, model: TextToMusicModel, batch: Batch, reduce: Callable[[Tensor], Tensor] | None = None
                ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Apply `steps` preconditioned ascent steps on the query `batch` to `model`'s selected parameters, in place.
        Only they change; the model is left in its train / eval mode, ``requires_grad`` flags and the global random
        state as they were.

        Args:
            model: the model to change, at the weights the Fisher was computed at.
            batch: the queries: ``id``, ``caption``, ``mask`` and ``audio`` (or ``targets``).
            reduce: averages a gradient across processes (a fit passes the strategy's mean); None for one process.

        Returns:
            The new values of the changed parameters (name -> detached CPU copy), and the query loss ``before`` (at
            step 0's draws) and ``after`` (at the same draws).

        Raises:
            ValueError: `model`'s weights are below float32, where the steps would round away (`require_float32`).
        """
        require_float32(model, "The query's ascent", autocast=False)
        fisher, count = self.fisher(model)
        named = dict(model.named_parameters())
        params = [named[name] for name in self.names]
        batch = model.with_targets(self.unlearning_batch(batch))  # encoded once, not once per step and draw
        device = params[0].device
        denominators = [count * value.to(device=device, dtype=torch.float32) + self.config.eps for value in fisher]
        flags = [param.requires_grad for param in params]
        losses = []
        try:
            with measuring(model, device, grad=True):
                for param in params:
                    param.requires_grad_(True)
                for step in range(self.config.steps):
                    gradients, loss = self.query_gradient(model, params, batch, step)
                    losses.append(loss)
                    with torch.no_grad():
                        for param, grad, denominator in zip(params, gradients, denominators, strict=True):
                            grad = reduce(grad) if reduce is not None else grad
                            param.add_((self.config.lr * grad / denominator).to(param.dtype))
                with torch.no_grad():  # at the first step's draws, as the loss before
                    after_losses = torch.stack([model.loss(batch, **model.fixed_loss_inputs(list(batch["id"]),
                                                                                            self.config.seed + d))
                                                for d in range(self.config.draws)], dim=1)  # (queries, draws)
                check_finite(after_losses, list(batch["id"]), f"query loss after {self.config.steps} ascent step(s) at "
                             f"lr {self.config.lr} (also check the Fisher file {self.fisher_path})")
                after = sum(float(mean) for mean in after_losses.mean(dim=0)) / self.config.draws
        finally:
            for param, flag in zip(params, flags, strict=True):
                param.requires_grad_(flag)
        delta = {name: param.detach().cpu().clone() for name, param in zip(self.names, params, strict=True)}
        return delta, {"before": losses[0], "after": after}


class QueryUnlearning(ModelAudioFormat, L.LightningModule):
    """Fisher-preconditioned gradient ascent on the query audio, unlearning every query of the DataModule together.

    Args:
        model: the model to unlearn from (the weights the Fisher was computed at).
        fisher_path: the training set's Fisher (``configs/attribution/fisher.yaml``); it must cover the groups.
        delta_path: where the fit writes the changed parameters (``torch.save`` of name -> tensor).
        parameter_groups: names of the model's parameter groups to change.
        ascent: the ascent's lr, steps, draws, seed, eps and silence masking (``ascent:`` nested in YAML).
    """

    def __init__(self, model: TextToMusicModel, fisher_path: str, delta_path: str,
                 parameter_groups: Sequence[str] = ("all",), ascent: AscentSettings = AscentSettings()) -> None:
        super().__init__()
        self.model = model
        self.delta_path = Path(delta_path)
        self.parameter_groups = list(parameter_groups)
        names = model.parameter_names(model.select_parameters(self.parameter_groups))
        self.ascent = FisherAscent(names, fisher_path, ascent)
        self.automatic_optimization = False
        self.delta: dict[str, Tensor] = {}
        self.query_ids: list[str] = []
        self.query_loss: dict[str, float] = {}

    @property
    def seed(self) -> int:
        return self.ascent.config.seed

    @property
    def measure_masked(self) -> bool:
        """Whether the loss sweeps should mask padding (the sweep's ``masked``): only with "dual" masking."""
        return self.ascent.measure_masked

    def unlearn(self, model: TextToMusicModel, batch: Batch,
                reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """`FisherAscent.unlearn` on `model` (this module's own in a fit, or another with the same parameter
        names); keeps the delta and the query loss for `write`, and returns the delta."""
        self.delta, self.query_loss = self.ascent.unlearn(model, batch, reduce)
        self.query_ids = list(batch["id"])
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
        return {"queries": self.query_ids, "parameter_groups": self.parameter_groups, **self.ascent.settings(),
                "query_loss": self.query_loss, "parameters": self.ascent.names}

    def write(self, path: str | Path) -> None:
        """Write the changed parameters to `path` and the settings to `path` with suffix ``.json``, atomically
        (`datamodules.attribution_store.Delta`)."""
        Delta(path).write(self.delta, self.settings())
        log.info("Unlearned %d parameter tensor(s) on %d query(ies): query loss %.6g -> %.6g; delta written to %s.",
                 len(self.delta), len(self.query_ids), self.query_loss["before"], self.query_loss["after"], path)
