"""Write the record of a model's training data (``training_data.json``) from the config it was trained with, for a
model saved before `SavePretrained` kept one (or trained elsewhere with the same data): without it, an evaluation
refuses the model as an oracle unless told ``oracle_unchecked: true``.

    python scripts/record_training_data.py --config configs/toy/oracle.yaml    # into its SavePretrained dirpath
    python scripts/record_training_data.py --config my_oracle.yaml --into models/my_oracle

The record is what the config's DataModule serves for training (its manifest less what it leaves out), read exactly as
``train.py fit`` reads it; it vouches for the config, not for the weights: run it only with the config the model was
really trained with.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks import SavePretrained  # noqa: E402
from datamodules.interfaces import RecordsTrainingData  # noqa: E402
from datamodules.provenance import RECORD_FILE  # noqa: E402
from train import main as cli  # noqa: E402


def record(config: str, into: str | None = None) -> Path:
    """Write the training record of `config`'s data into `into` (default: the config's `SavePretrained` dirpath)."""
    built = cli(["--config", config], run=False)
    datamodule = built.datamodule
    if not isinstance(datamodule, RecordsTrainingData):
        raise SystemExit(f"{config}: its DataModule, {type(datamodule).__name__}, keeps no training record (it has no "
                         "training_record(); AudioTextDataModule has).")
    if into is None:
        folders = [callback.dirpath for callback in built.trainer.callbacks
                   if isinstance(callback, SavePretrained) and callback.dirpath]
        if len(folders) != 1:
            raise SystemExit(f"{config} names {len(folders)} SavePretrained dirpath(s); say which model folder the "
                             "record is for with --into.")
        into = folders[0]
    folder = Path(into)
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no such model folder; train the model first, or give its folder with --into.")
    datamodule.prepare_data()
    datamodule.setup("fit")
    training = datamodule.training_record()
    training.write(folder)
    print(f"{folder / RECORD_FILE}: trained on {training.describe()}")
    return folder / RECORD_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the train.py config the model was trained with")
    parser.add_argument("--into", help="the model folder (default: the config's SavePretrained dirpath)")
    args = parser.parse_args(argv)
    record(args.config, args.into)


if __name__ == "__main__":
    main()
