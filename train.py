"""Command-line entry point: ``python train.py {fit,validate,test,predict} --config configs/....yaml``.

A thin LightningCLI: the model (a LightningModule of this package) and the data (a LightningDataModule) are chosen
by ``class_path`` in the YAML; the DataModule's sample rate and clip length are linked from the model; the full
config is saved into each run's log dir; TensorBoard is the default logger; runs are seeded.
"""

from __future__ import annotations

import logging
import operator

import lightning as L
from lightning.pytorch.cli import LightningCLI

import lightning_modules  # noqa: F401  (checks the torch / torchaudio pair first)


class TextToMusicCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for name in ("sample_rate", "num_samples"):
            parser.link_arguments("model", f"data.init_args.{name}", compute_fn=operator.attrgetter(name),
                                  apply_on="instantiate")


def main(args: list[str] | None = None) -> TextToMusicCLI:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for package in ("lightning_modules", "datamodules", "callbacks"):
        logger = logging.getLogger(package)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(handler)
    return TextToMusicCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )


if __name__ == "__main__":
    main()
