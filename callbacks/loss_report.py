"""`LossReport`: the forget / retain / held-out loss before and after unlearning, and of the oracle.

Losses are measured at timesteps and noise fixed per item id, so the before, after and oracle columns see identical
inputs. Each process measures its own share of the items (no padding, no duplicates) and the sums are reduced over
processes, so the numbers do not depend on the number of devices. The table is logged, written to
``loss_report.json`` and ``loss_report.md`` in the run's log dir, and the values are logged as ``report/...``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Subset

from lightning_modules.io import write_json_atomic, write_text_atomic
from lightning_modules.models.base import TextToMusicModel

log = logging.getLogger(__name__)


class LossReport(Callback):
    """Measures the mean per-item loss of each evaluation set at fit start and fit end.

    Args:
        oracle: folder of the oracle model (the same backend retrained without the forget set); measured once.
        seed: seed of the per-item timesteps and noise.
        batch_size: items per measurement batch.
    """

    def __init__(self, oracle: str | None = None, seed: int = 0, batch_size: int = 16) -> None:
        self.oracle = oracle
        self.seed = seed
        self.batch_size = batch_size
        self.results: dict[str, dict[str, float]] = {}

    @torch.no_grad()
    def measure(self, trainer: L.Trainer, model: TextToMusicModel) -> dict[str, float]:
        """Mean loss of each evaluation set of the DataModule, identical for any number of processes."""
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "eval_datasets"):
            raise TypeError(f"LossReport needs a DataModule with eval_datasets() (such as ForgetRetainDataModule), "
                            f"got {type(datamodule).__name__}.")
        was_training = model.training
        model.eval()
        device = trainer.strategy.root_device
        results = {}
        for split, dataset in datamodule.eval_datasets().items():
            shard = Subset(dataset, range(trainer.global_rank, len(dataset), trainer.world_size))
            total = torch.zeros(2, dtype=torch.float64, device=device)
            for batch in DataLoader(shard, batch_size=self.batch_size):
                batch = move_data_to_device(batch, device)
                with trainer.precision_plugin.forward_context():
                    losses = model.loss(batch, **model.fixed_loss_inputs(batch["id"], self.seed))
                total += torch.stack([losses.double().sum(), torch.tensor(len(losses), device=device)])
            total = trainer.strategy.reduce(total, reduce_op="sum")
            results[split] = (total[0] / total[1]).item()
        model.train(was_training)
        return results

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.results = {"before": self.measure(trainer, pl_module.model)}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.results["after"] = self.measure(trainer, pl_module.model)
        if self.oracle is not None:
            oracle = type(pl_module.model).from_pretrained(self.oracle).to(trainer.strategy.root_device)
            self.results["oracle"] = self.measure(trainer, oracle)
            del oracle
        if trainer.logger is not None:
            metrics = {f"report/{column}/{split}_loss": value for column, values in self.results.items()
                       for split, value in values.items()}
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # every rank: log_dir is a collective under DDP
        if trainer.is_global_zero:
            table = self.table()
            log.info("Loss at fixed timesteps and noise (lower = better fit):\n%s", table)
            write_json_atomic(folder / "loss_report.json", self.results)
            write_text_atomic(folder / "loss_report.md", table + "\n")

    def table(self) -> str:
        """The results as a Markdown table: one row per set, one column per model, and the change."""
        columns = list(self.results)
        header = "| set | " + " | ".join(columns) + " | after / before |"
        lines = [header, "|" + "---|" * (len(columns) + 2)]
        for split in self.results["before"]:
            values = [self.results[column][split] for column in columns]
            ratio = self.results.get("after", {}).get(split, float("nan")) / self.results["before"][split]
            lines.append(f"| {split} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {ratio:.2f}x |")
        return "\n".join(lines)
