"""Benchmark: how FAD and KAD depend on the number of generated clips n, so that users can pick n.

On the toy world, the generated set is the shipped base model's generations from `--pool` training captions spread over
every artist (one seed each, 25 DDIM steps), embedded by the toy CLAP, against two references: every training track
(the model's own distribution: a true distance near 0) and one artist's training tracks (`--artist`: a real gap). For
each n (8 ... 512) it draws `--draws` subsets of n clips without replacement from the pool and computes FAD and KAD of
each against the reference, the way `UnlearningEvaluation` does (fixed reference statistics and KAD bandwidth). It
reports each metric's mean, standard deviation and 5-95 % range over the draws, and the mean's offset from the value on
the whole pool: FAD's bias shrinks as 1/n (its mean falls with n), KAD's estimate is unbiased (its mean stays put), and
the spread of both is what an evaluation of n clips can resolve. Generation dominates the cost (about 6 minutes for 512
clips on 2 CPU cores; cached in ``benchmarks/results/sample_size_clips.pt`` when ``--keep-clips``).

    python benchmarks/sample_size.py    # writes benchmarks/results/sample_size.{json,png}
    python benchmarks/sample_size.py --quick    # pool 64, n up to 64 (about a minute)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from datamodules import ToyCorpus, read_manifest  # noqa: E402
from lightning_modules.io import write_json_atomic  # noqa: E402
from lightning_modules.metrics import ClapEmbedder, FrechetAudioDistance, KernelAudioDistance  # noqa: E402
from lightning_modules.metrics.fad import reference_statistics  # noqa: E402
from lightning_modules.models import ToyTextToMusic  # noqa: E402
from scripts.toy_recognition import load_clips  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def measure(fad: FrechetAudioDistance, kad: KernelAudioDistance, embeddings: torch.Tensor) -> tuple[float, float]:
    samples = {"embedding": embeddings}
    return fad.statistic(samples).item(), kad.statistic(samples).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/toy")
    parser.add_argument("--clap", default="checkpoints/toy/clap")
    parser.add_argument("--model", default="checkpoints/toy/base")
    parser.add_argument("--pool", type=int, default=512, help="generated clips to draw subsets from")
    parser.add_argument("--sizes", type=int, nargs="*", default=[8, 16, 32, 64, 128, 256, 512])
    parser.add_argument("--draws", type=int, default=200, help="subsets per size")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps per generation")
    parser.add_argument("--artist", default="Kestrel Drive", help="the artist of the second reference")
    parser.add_argument("--quick", action="store_true", help="pool 64, sizes 8-64, 50 draws")
    parser.add_argument("--keep-clips", action="store_true", help="cache the generated clips' embeddings")
    parser.add_argument("--out", default=str(RESULTS / "sample_size.json"))
    args = parser.parse_args()
    if args.quick:
        args.pool, args.sizes, args.draws = 64, [8, 16, 32, 64], 50
    if max(args.sizes) > args.pool:
        parser.error(f"--sizes go up to {max(args.sizes)} but --pool is {args.pool}: raise --pool.")

    corpus = ToyCorpus.existing(args.corpus) if Path(args.corpus).is_dir() else ToyCorpus(args.corpus)
    corpus.prepare()
    rate, length = corpus.settings["sample_rate"], round(corpus.settings["duration"] * corpus.settings["sample_rate"])
    clap = ClapEmbedder(args.clap)
    train, items = load_clips(corpus.train_manifest, rate, length)
    everything = torch.cat([clap(chunk, rate) for chunk in train.split(64)]).double()
    if args.artist not in {item.group for item in items}:
        parser.error(f"--artist {args.artist!r} is not an artist of {args.corpus}.")
    references = {"every training track": everything,
                  f"{args.artist}'s training tracks": everything[[item.group == args.artist for item in items]]}

    cache = RESULTS / f"sample_size_clips_{args.pool}.pt"
    started = time.perf_counter()
    cached = cache.is_file()
    if cached:
        generated = torch.load(cache, weights_only=True)
    else:
        model = ToyTextToMusic.from_pretrained(args.model).eval()
        captions = [item.caption for item in read_manifest(corpus.train_manifest)]
        prompts = [captions[i * len(captions) // args.pool] for i in range(args.pool)]  # spread over the artists
        audio = torch.cat([model.generate(prompts[i:i + 64], seed=list(range(i, min(i + 64, args.pool))),
                                          num_inference_steps=args.steps)[:, 0] for i in range(0, args.pool, 64)])
        generated = torch.cat([clap(chunk, rate) for chunk in audio.split(64)]).double()
        if args.keep_clips:
            torch.save(generated, cache)
    generation_seconds = None if cached else time.perf_counter() - started  # None: read from the cache

    conditions = {}
    for label, reference in references.items():
        fad, kad = FrechetAudioDistance(clap), KernelAudioDistance(clap)
        fad.set_reference(reference_statistics(reference))
        kad.set_reference(reference)
        whole = measure(fad, kad, generated)
        generator = torch.Generator().manual_seed(0)
        rows = []
        for n in args.sizes:
            values = torch.tensor([measure(fad, kad, generated[torch.randperm(args.pool, generator=generator)[:n]])
                                   for _ in range(args.draws)], dtype=torch.float64)
            row = {"n": n}
            for k, name in enumerate(("fad", "kad")):
                column = values[:, k]
                low, high = column.quantile(torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
                row[name] = {"mean": column.mean().item(), "std": column.std().item(), "p05": low, "p95": high,
                             "offset_from_pool_value": column.mean().item() - whole[k]}
            rows.append(row)
            fad_row, kad_row = row["fad"], row["kad"]
            print(f"{label}, n={n:4d}: FAD {fad_row['mean']:.4f} ± {fad_row['std']:.4f}, "
                  f"KAD {kad_row['mean']:.3f} ± {kad_row['std']:.3f}", flush=True)
        conditions[label] = {"reference_tracks": len(reference), "pool_value": {"fad": whole[0], "kad": whole[1]},
                             "rows": rows}

    result = {"generated": f"{args.pool} generations of {args.model} from training captions, {args.steps} DDIM "
                           "steps, toy CLAP embeddings", "draws": args.draws, "conditions": conditions,
              "generation_seconds": generation_seconds, "machine": platform.platform(),
              "threads": torch.get_num_threads()}
    out = Path(args.out)
    write_json_atomic(out, result)
    plot(result, out.with_suffix(".png"))
    print(f"Wrote {out} and {out.with_suffix('.png')}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = result["conditions"]
    figure, axes = plt.subplots(len(conditions), 2, figsize=(10, 3.5 * len(conditions)), squeeze=False)
    for row_axes, (label, condition) in zip(axes, conditions.items(), strict=True):
        rows = condition["rows"]
        sizes = [row["n"] for row in rows]
        for axis, name, title in zip(row_axes, ("fad", "kad"), ("FAD", "KAD (x100)"), strict=True):
            axis.fill_between(sizes, [row[name]["p05"] for row in rows], [row[name]["p95"] for row in rows],
                              alpha=0.3, label="5-95 % of draws")
            axis.plot(sizes, [row[name]["mean"] for row in rows], "o-", label="mean over draws")
            axis.axhline(condition["pool_value"][name], color="grey", linestyle="--", label="whole pool")
            axis.set_xscale("log", base=2)
            axis.set_xlabel("generated clips n")
            axis.set_title(f"{title} against {label}")
            axis.legend(fontsize=8)
    figure.suptitle("Toy world: base generations from every artist's captions (toy CLAP embeddings)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
