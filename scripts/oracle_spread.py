"""Forget quality against several oracles: how much of a method's KS p-value is the oracle's own training draw.

Forget quality (the KS test of the forget set's per-item losses against the oracle's) compares a method with one
retrained model; a retrained model is itself one draw of training. This script measures the forget set's per-item
losses (the evaluation's: timesteps and noise fixed by each item's id and `--seed`) of every fit of a
`compare_methods.py` comparison and of each oracle given, and reports every fit's p-value against every oracle, and
the oracles' against each other.

    python scripts/oracle_spread.py --runs reports/methods_aurora_vale/runs \
        --data configs/data/toy_forget_aurora_vale.yaml --out reports/oracle_spread_aurora_vale \
        --oracles seed0=checkpoints/toy/oracle_aurora_vale seed1=<folder> seed2=<folder>

A fit is read from its run folder's saved model (`<runs>/<method>/seed<k>/lightning_logs/<method>/pretrained`, written
by `SavePretrained`; git keeps only the records, so the fits must have run on this machine), loaded by the class its
`config.yaml` names, and its mean loss must equal the one its record reports (else the data, seed or model differ, and
the script stops). The losses are kept in `<out>/losses.json` (verified), so the report is rebuilt without the models
once they are measured; an oracle is named by its weights' digest there, and a changed folder is measured again.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from jsonargparse import ArgumentParser  # noqa: E402
from scipy.stats import ks_2samp  # noqa: E402

from callbacks.measuring import fixed_losses  # noqa: E402
from lightning_modules.io import (  # noqa: E402
    read_json_verified,
    update_with_folder,
    write_json_atomic,
    write_json_verified,
    write_text_atomic,
)

ALPHA = 0.05  # "told apart" below this p-value


def forget_dataset(data_config: Path, model):
    """The forget set the evaluation measures, from a DataModule config (`ForgetRetainDataModule`), at `model`'s
    sample rate and clip length (as train.py links them)."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    data = yaml.safe_load(data_config.read_text())
    data.setdefault("init_args", {}).update(sample_rate=model.sample_rate, num_samples=model.num_samples)
    config = parser.parse_object({"data": data})
    datamodule = parser.instantiate(config).data
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.eval_datasets()["forget"]


@torch.no_grad()
def item_losses(model, dataset, seed: int, batch_size: int = 16) -> list[float]:
    """Per-item losses at the timesteps and noise fixed by each item's id and `seed`: the evaluation's own
    `fixed_losses` (which refuses a non-finite loss, naming the items), on one CPU process."""
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    return fixed_losses(trainer, model.eval(), dataset, seed, batch_size).tolist()


def model_class(run: Path):
    """The TextToMusicModel class a fit's `config.yaml` names (model.init_args.model.class_path)."""
    config = yaml.safe_load(run.joinpath("config.yaml").read_text())
    module, name = config["model"]["init_args"]["model"]["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def fits(runs: Path) -> dict[str, Path]:
    """`method/seed<k>` -> its run folder under `runs`, for every record."""
    found = {}
    for record in sorted(runs.glob("*/seed*/results.json")):
        method = record.parent.parent.name
        found[f"{method}/{record.parent.name}"] = record.parent / "lightning_logs" / method
    if not found:
        raise FileNotFoundError(f"No run record (<method>/seed<k>/results.json) under {runs}: pass the `runs` folder "
                                "of a compare_methods.py comparison.")
    return found


def measure(args: argparse.Namespace) -> dict:
    """Every fit's and oracle's per-item forget losses, reusing those in `<out>/losses.json`."""
    store = args.out / "losses.json"
    what, remedy = "per-item forget losses", f"delete {store} to measure them again"
    table = read_json_verified(store, what, remedy) if store.is_file() else {"seed": args.seed, "fits": {},
                                                                              "oracles": {}}
    if table["seed"] != args.seed:
        raise ValueError(f"{store} holds losses at seed {table['seed']}, not --seed {args.seed}: {remedy}.")
    dataset = None
    runs = fits(args.runs)
    backend = model_class(next(iter(runs.values())))  # the oracles load as the fits' backend, as in the evaluation
    for name, folder in args.oracles.items():
        digest = update_with_folder(hashlib.sha256(), folder).hexdigest()
        if table["oracles"].get(name, {}).get("digest") != digest:
            model = backend.from_pretrained(folder)
            dataset = dataset or forget_dataset(args.data, model)
            table["oracles"][name] = {"folder": str(folder), "digest": digest,
                                      "losses": item_losses(model, dataset, args.seed)}
    for key, run in runs.items():
        if key in table["fits"]:
            continue
        saved = run / "pretrained"
        if not saved.is_dir():
            raise FileNotFoundError(f"{saved} (the model fit {key} saved) not found: rerun that fit with "
                                    "compare_methods.py --force on this machine, or measure without it.")
        model = model_class(run).from_pretrained(saved)
        dataset = dataset or forget_dataset(args.data, model)
        losses = item_losses(model, dataset, args.seed)
        recorded = read_json_verified(args.runs / key / "results.json", "run record", "rerun the fit")
        expected = recorded["columns"]["after"]["forget"]["loss"]
        if abs(sum(losses) / len(losses) - expected) > 1e-6 * max(1.0, abs(expected)):
            raise ValueError(f"{key}: the mean forget loss measured here, {sum(losses) / len(losses):.6f}, is not the "
                             f"record's {expected:.6f}: --data or --seed is not the comparison's.")
        table["fits"][key] = losses
        write_json_verified(store, table)  # progress kept fit by fit
    write_json_verified(store, table)
    return table


def report(table: dict, out: Path) -> dict:
    """Every fit's KS p-value against every oracle, the oracles' against each other, as JSON and Markdown."""
    oracles = {name: entry["losses"] for name, entry in table["oracles"].items()}
    names = list(oracles)
    rows = {}
    for key, losses in table["fits"].items():
        p = {name: float(ks_2samp(losses, reference).pvalue) for name, reference in oracles.items()}
        rows[key] = {"mean_loss": sum(losses) / len(losses), "p": p,
                     "not_told_apart": sum(value >= ALPHA for value in p.values())}
    between = {f"{a} vs {b}": float(ks_2samp(oracles[a], oracles[b]).pvalue)
               for i, a in enumerate(names) for b in names[i + 1:]}
    result = {"alpha": ALPHA, "seed": table["seed"], "items": len(next(iter(oracles.values()))),
              "oracle_mean_loss": {name: sum(v) / len(v) for name, v in oracles.items()},
              "between_oracles": between, "fits": rows}
    write_json_atomic(out / "oracle_spread.json", result)
    lines = [f"Forget quality (KS p of the {result['items']} forget items' losses, evaluation seed {table['seed']}) of "
             "every fit against each oracle; `not told apart`: against how many oracles p ≥ 0.05.", "",
             "| oracle | mean forget loss |", "|---|---:|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in result["oracle_mean_loss"].items()]
    lines += ["", "| oracles compared | KS p |", "|---|---:|"] + [f"| {k} | {v:.2e} |" for k, v in between.items()]
    lines += ["", "| fit | mean forget loss | " + " | ".join(f"p vs {n}" for n in names) + " | not told apart |",
              "|---|---:|" + "---:|" * len(names) + "---:|"]
    lines += [f"| {key} | {row['mean_loss']:.4f} | " + " | ".join(f"{row['p'][n]:.1e}" for n in names)
              + f" | {row['not_told_apart']} / {len(names)} |" for key, row in rows.items()]
    write_text_atomic(out / "oracle_spread.md", "\n".join(lines) + "\n")
    return result


def oracle(value: str) -> tuple[str, Path]:
    name, _, folder = value.partition("=")
    if not name or not folder:
        raise argparse.ArgumentTypeError(f"{value!r}: expected name=folder (seed1=/path/to/oracle)")
    if not Path(folder).is_dir():
        raise argparse.ArgumentTypeError(f"{folder}: no such model folder (oracle {name!r})")
    return name, Path(folder)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="a comparison's runs folder (compare_methods.py)")
    parser.add_argument("--data", type=Path, required=True, help="the comparison's DataModule config")
    parser.add_argument("--oracles", type=oracle, nargs="+", required=True, help="name=folder, one per oracle")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="the evaluation's loss seed (UnlearningEvaluation)")
    args = parser.parse_args(argv)
    args.oracles = dict(args.oracles)
    args.out.mkdir(parents=True, exist_ok=True)
    return report(measure(args), args.out)


if __name__ == "__main__":
    main()
