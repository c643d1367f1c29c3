"""Command-line entry point: ``python train.py {fit,validate,test,predict} --config configs/....yaml``.

A thin LightningCLI: the model (a LightningModule of this package) and the data (a LightningDataModule) are chosen
by ``class_path`` in the YAML; the DataModule's sample rate and clip length are linked from the model; the full
config is saved into each run's log dir; TensorBoard is the default logger; runs are seeded. A config's
``run_name`` fixes the run's folder, ``<default_root_dir>/lightning_logs/<run_name>/`` (instead of a new
``version_N`` per run), so that ``--ckpt_path last`` finds the ``checkpoints/last.ckpt`` its `ModelCheckpoint` keeps
there; a fresh fit into a folder that already holds a run is refused rather than mixed with it.
"""

from __future__ import annotations

import logging
import operator
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import transformers
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

import lightning_modules  # noqa: F401  (checks the torch / torchaudio pair first)

# isort: split
# every LightningModule and DataModule of the package, imported so that `fit --help` lists them as known subclasses
# (a run imports them for its class_path anyway: measured, no slower than importing the unlearning methods alone)
import datamodules  # noqa: F401
import lightning_modules.attribution  # noqa: F401
import lightning_modules.clap_training  # noqa: F401
import lightning_modules.codec_training  # noqa: F401
import lightning_modules.encoding  # noqa: F401
import lightning_modules.training  # noqa: F401
import lightning_modules.unlearning  # noqa: F401
from callbacks.progress import StepProgressBar
from callbacks.summary import ParameterSummary


class _DropInstallTips(logging.Filter):
    """Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines: advertising, not about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


def quiet() -> None:
    """Silence what a normal run prints that is not about the run, each by its exact source and message: Lightning's
    install tips, its warning about modules in eval mode at the start of training (here by design: the frozen text
    encoder, VAE or codec, a method's frozen reference model), the FutureWarning torch 2.11 raises inside Lightning
    2.6's own pytree code (``LeafSpec``; nothing a user can change), and transformers' "Loading weights" bars."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(existing, _DropInstallTips) for existing in rank_zero.filters):
        rank_zero.addFilter(_DropInstallTips())
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training",
                            category=PossibleUserWarning)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    transformers.utils.logging.disable_progress_bar()


class TextToMusicCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for name in ("sample_rate", "num_samples"):
            parser.link_arguments("model", f"data.init_args.{name}", compute_fn=operator.attrgetter(name),
                                  apply_on="instantiate")
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="Name of the run's folder <default_root_dir>/lightning_logs/<run_name> (default: a "
                                 "new version_N per run); `--ckpt_path last` resumes the run of that name.")
        parser.add_argument("--float32_matmul_precision", type=Literal["highest", "high", "medium"] | None,
                            default=None,
                            help="torch.set_float32_matmul_precision for the run: 'high' lets float32 matrix products "
                                 "use TF32 tensor cores (7.4x the float32 peak on an H100; Lightning's tensor-core "
                                 "hint); default: PyTorch's own ('highest'). What TF32 does to attribution's scores: "
                                 "README, \"Precision of the attribution\".")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        matmul_precision = self._get(self.config, "float32_matmul_precision")
        if matmul_precision is not None:
            torch.set_float32_matmul_precision(matmul_precision)
        run_name = self._get(self.config, "run_name")
        if run_name is not None and self.subcommand in (None, "fit"):
            trainer = self._get(self.config_init, "trainer", default={})
            if trainer.get("logger") not in (None, True):
                raise ValueError(f"run_name={run_name!r} names the folder of the default TensorBoard logger, but "
                                 "trainer.logger is set; unset run_name, or give that logger a fixed version instead.")
            save_dir = trainer.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = TensorBoardLogger(save_dir, name="lightning_logs", version=run_name)
        # Lightning's default summary and rich bar (not ones the config names) in their quieter forms: no module modes
        # or FLOPs (hundreds of modules are frozen by design; the FLOPs read 0), no "Epoch 0/-2" under max_steps.
        # A copy: the Trainer appends its defaults to the config's own list.
        chosen = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        trainer = super().instantiate_trainer(**kwargs)
        defaults = {ModelSummary: ParameterSummary, RichModelSummary: ParameterSummary,
                    RichProgressBar: StepProgressBar}
        trainer.callbacks = [defaults[type(callback)]() if type(callback) in defaults
                             and not any(callback is mine for mine in chosen) else callback
                             for callback in trainer.callbacks]
        return trainer

    def before_fit(self) -> None:
        """A fresh fit (no ``--ckpt_path``) into a named run's folder that is not empty would mix its logs, report and
        checkpoints with the earlier run's: refuse it, naming the ways out."""
        run_name = self._get(self.config, "run_name")
        if run_name is None or self._get(self.config, "ckpt_path") is not None:
            return
        folder = Path(self.trainer.logger.log_dir)
        if folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(
                f"{folder} already holds the run {run_name!r}. Resume it with `--ckpt_path last`, start a separate "
                f"run with `--run_name <another name>`, or delete {folder} to start this one afresh.")

    def _last_of_run(self) -> None:
        """``validate`` / ``test`` / ``predict`` log into a new ``version_N`` folder (the fit's report stays as it
        is); their ``--ckpt_path last`` is the named fit run's ``checkpoints/last.ckpt``."""
        run_name = self._get(self.config, "run_name")
        config = self.config_init[self.subcommand]
        if run_name is None or config.get("ckpt_path") != "last":
            return
        root = config["trainer"].get("default_root_dir") or os.getcwd()
        last = Path(root) / "lightning_logs" / run_name / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"--ckpt_path last: the run {run_name!r} has no checkpoint {last}; fit it first "
                                    "or give the checkpoint's path.")
        config["ckpt_path"] = str(last)

    before_validate = before_test = before_predict = _last_of_run


def main(args: list[str] | None = None, run: bool = True) -> TextToMusicCLI:
    """The CLI on `args` (default ``sys.argv``); with ``run=False`` it only builds the model, data and trainer."""
    quiet()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for package in ("lightning_modules", "datamodules", "callbacks"):
        logger = logging.getLogger(package)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(handler)
    with warnings.catch_warnings():
        if args is not None:  # a caller's own command line is not the CLI's, which Lightning would warn of
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return TextToMusicCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )


if __name__ == "__main__":
    main()
