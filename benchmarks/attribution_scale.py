"""Benchmark: attribution by unlearning at catalogue scale (issue 20). A query's cost by the full "after" sweep against
the cascade (cheap first-order scores from a feature store, then the exact sweep of the top fraction), for a growing
synthetic training set; the feature store's one-off cost; and several queries per pass against one per pass.

The training set is the shipped toy model's 400 toy tracks repeated under distinct ids up to N items (each id draws
its own timestep and noise, so every row is a distinct forward pass; the targets are encoded once, as the target
cache serves them). One process, the same run for both paths, so their ratio holds on a loaded machine:

- **full sweep**: the query's unlearning (`FisherAscent` at `attribute.yaml`'s ascent: 3 steps of 8 draws), then the
  loss of all N items at `--draws` draws (`sweep_losses`, micro-batches of `--micro-batch`).
- **cascade**: the query side of the cascade's cheap score (`cascade_scores.yaml`: the same unlearning, its update
  scaled and count-sketched to `--dim`; the sweep then needs no other unlearning), its product with the store's
  `(N, dim)` matrix (random values of the store's size and type: the product's cost does not depend on them), the top
  ``ceil(fraction N)`` and their exact sweep.
- **feature store** (one-off per training set): `gradient_features` of `--store-items` items, seconds per item; the
  store for N items is that times N (linear, not run at N), and 4 · dim bytes per item on disk.
- **several queries per pass** (`--queries` Q): per shard of `--micro-batch` rows, (a) Q passes each reading the
  rows' cached targets from disk (`TargetCache`) and drawing their inputs, (b) one pass reading them once and running
  the Q query models one after another, (c) one pass running the Q models in one batched call
  (`torch.func.functional_call` under `vmap` over stacked weights); throughput per query, as ratios to (a).

The Fisher the ascent reads is measured on 64 of the toy tracks (its values do not change the cost). Memory is the
process's peak resident set after each stage (it only grows: the scale stages run first, from the
smallest N up), beside the bytes of the N items' targets and of the store.

    python benchmarks/attribution_scale.py                      # N = 1K, 10K, 100K; writes
                                                                # benchmarks/results/attribution_scale.json
    python benchmarks/attribution_scale.py --sizes 1000 2000 --store-items 32   # a quick run (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.func import functional_call, vmap  # noqa: E402

from benchmarks.attribution import load_batch  # noqa: E402
from datamodules.target_cache import TargetCache  # noqa: E402
from lightning_modules.attribution.cascade import candidate_count  # noqa: E402
from lightning_modules.attribution.fisher import write_fisher  # noqa: E402
from lightning_modules.attribution.query import FisherAscent  # noqa: E402
from lightning_modules.attribution.settings import AscentSettings  # noqa: E402
from lightning_modules.attribution.similarity import FirstOrderUnlearning, gradient_features  # noqa: E402
from lightning_modules.attribution.sweep import _fixed_inputs, set_weights, sweep_losses  # noqa: E402
from lightning_modules.io import write_json_atomic  # noqa: E402
from lightning_modules.models import ToyTextToMusic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def peak_rss_gb() -> float:
    """The process's peak resident set so far, GB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(function: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def synthetic(batch: dict, count: int) -> dict:
    """`count` items: the toy tracks of `batch` repeated, each under its own id (so its own draws)."""
    index = torch.arange(count) % len(batch["id"])
    return {"id": [f"synthetic-{i:06d}" for i in range(count)], "caption": [batch["caption"][i] for i in index],
            "targets": batch["targets"][index], "mask": batch["mask"][index]}


def rows(batch: dict, start: int, stop: int) -> dict:
    return {key: value[start:stop] for key, value in batch.items()}


def full_sweep(model: ToyTextToMusic, batch: dict, draws: int, micro_batch: int) -> Tensor:
    return sweep_losses(model, batch, draws, seed=0, masked=True, micro_batch_size=micro_batch)


def unlearning(model: ToyTextToMusic, toy: dict, folder: Path, dim: int) -> FirstOrderUnlearning:
    """The cascade's cheap score at `attribute.yaml`'s ascent, sketched to `dim`, on a Fisher of 64 toy tracks written
    into `folder`; its `step` is the full sweep's unlearning too."""
    fisher = folder / "fisher.pt"
    write_fisher(model, ["all"], [rows(toy, start, start + 16) for start in range(0, 64, 16)], fisher)
    config = yaml.safe_load((REPO / "configs" / "attribution" / "attribute.yaml").read_text())
    return FirstOrderUnlearning(str(fisher), projection_dim=dim,
                                step=AscentSettings(**config["model"]["init_args"]["ascent"]))


def unlearn(model: ToyTextToMusic, query: dict, estimate: FirstOrderUnlearning) -> None:
    """The full sweep's unlearning of the query (the weights put back: the sweep's cost does not depend on them)."""
    names = model.parameter_names(model.select_parameters(["all"]))
    kept = {name: param.detach().clone() for name, param in model.named_parameters() if name in names}
    FisherAscent(names, estimate.fisher_path, estimate.step).unlearn(model, query)
    set_weights(model, kept)


def cascade_query(model: ToyTextToMusic, query: dict, store: Tensor, batch: dict, fraction: float, draws: int,
                  micro_batch: int, estimate: FirstOrderUnlearning) -> dict[str, float]:
    """One query through the cascade; the seconds of each stage."""
    seconds = {}
    seconds["query_update"], features = timed(lambda: estimate.query_features([query], model))
    seconds["cheap_scores"], top = timed(lambda: torch.topk(store @ features.vectors[0],
                                                            candidate_count(len(store), fraction)).indices)
    chosen = top.sort().values
    subset = {key: [value[i] for i in chosen.tolist()] if isinstance(value, list) else value[chosen]
              for key, value in batch.items()}
    seconds["exact_sweep"], _ = timed(lambda: full_sweep(model, subset, draws, micro_batch))
    seconds["total"] = sum(seconds.values())
    return seconds


def scale(model: ToyTextToMusic, toy: dict, query: dict, sizes: list[int], fraction: float, draws: int, dim: int,
          micro_batch: int, estimate: FirstOrderUnlearning) -> list[dict]:
    table = []
    for size in sizes:
        batch = synthetic(toy, size)
        store = torch.randn(size, dim)  # the store's size and type; its values do not change the product's cost
        unlearned, _ = timed(lambda: unlearn(model, query, estimate))
        swept, _ = timed(lambda: full_sweep(model, batch, draws, micro_batch))  # noqa: B023
        full = unlearned + swept
        full_rss = peak_rss_gb()
        cascade = cascade_query(model, query, store, batch, fraction, draws, micro_batch, estimate)
        measured = candidate_count(size, fraction)
        row = {"tracks": size, "full_sweep_seconds": full,
               "full_sweep_stages": {"unlearning": unlearned, "sweep": swept}, "full_sweep_evaluations": size * draws,
               "cascade_seconds": cascade, "cascade_evaluations": measured * draws,
               "fewer_evaluations": size / measured, "wall_time_ratio": full / cascade["total"],
               "store_gb": size * dim * 4 / 1e9, "targets_gb": batch["targets"].nbytes / 1e9,
               "peak_rss_gb_after_full": full_rss,
               "peak_rss_gb_after_cascade": peak_rss_gb()}
        table.append(row)
        print(f"N = {size}: full sweep {full:.1f} s, cascade {cascade['total']:.2f} s "
              f"({row['wall_time_ratio']:.1f}x less wall time, {row['fewer_evaluations']:.0f}x fewer evaluations)",
              flush=True)
    return table


def store_cost(model: ToyTextToMusic, toy: dict, items: int, draws: int, dim: int, batch_size: int = 16
               ) -> dict[str, float]:
    """The feature store's cost per item, in batches of `batch_size` as the store's pass reads them."""
    batch = synthetic(toy, items)
    batches = [rows(batch, start, start + batch_size) for start in range(0, items, batch_size)]
    seconds, _ = timed(lambda: gradient_features(model, ["all"], batches, draws=draws, projection_dim=dim,
                                                 projection="sketch", shared_draws=False))
    return {"items": items, "seconds": seconds, "seconds_per_item": seconds / items}


def several_queries(model: ToyTextToMusic, toy: dict, queries: int, micro_batch: int, repeats: int
                    ) -> dict[str, float]:
    """Seconds per query and shard of `micro_batch` rows: (a) one pass per query, (b) one pass looping over the
    queries, (c) one pass with the queries' weights stacked under vmap."""
    shard = rows(synthetic(toy, micro_batch), 0, micro_batch)
    base = {name: value.detach() for name, value in model.unet.named_parameters()}
    buffers = dict(model.unet.named_buffers())
    generator = torch.Generator().manual_seed(0)
    weights = [{name: value + 1e-7 * torch.randn(value.shape, generator=generator) for name, value in base.items()}
               for _ in range(queries)]
    stacked = {name: torch.stack([w[name] for w in weights]) for name in base}
    with tempfile.TemporaryDirectory() as folder:
        cache = TargetCache(folder, "benchmark")
        for i, item_id in enumerate(shard["id"]):
            cache.save(item_id, shard["targets"][i], model.num_samples)

        def inputs() -> tuple[Tensor, Tensor, dict]:
            targets = torch.stack([cache.load(item_id)[0] for item_id in shard["id"]])
            fixed = _fixed_inputs(model, shard["id"], [0] * micro_batch, 0)
            noisy = model.scheduler.add_noise(targets, fixed["noise"], fixed["timesteps"])
            return noisy, fixed["timesteps"], model.encode_text(shard["caption"])

        def unet(parameters: dict, noisy: Tensor, timesteps: Tensor, condition: dict) -> Tensor:
            return functional_call(model.unet, (parameters, buffers), (noisy, timesteps), condition).sample

        def one_per_pass() -> None:
            for w in weights:
                unet(w, *inputs())

        def looped() -> None:
            prepared = inputs()
            for w in weights:
                unet(w, *prepared)

        def batched() -> None:
            prepared = inputs()
            vmap(lambda parameters: unet(parameters, *prepared))(stacked)

        variants = {"one_query_per_pass": one_per_pass, "queries_looped_in_one_pass": looped,
                    "queries_batched_by_vmap": batched}
        times: dict[str, list[float]] = {name: [] for name in variants}
        with torch.no_grad():
            for run in variants.values():
                run()  # warm-up
            for _ in range(repeats):  # interleaved, so that a busy moment of the machine hits every variant
                for name, run in variants.items():
                    times[name].append(timed(run)[0])
        result = {name: statistics.median(values) / queries for name, values in times.items()}
    base_time = result["one_query_per_pass"]
    return {"queries": queries, "rows": micro_batch, "seconds_per_query": result,
            "throughput_ratio": {name: base_time / value for name, value in result.items()}}


# The real models' forward cost per item and draw, in FLOPs: 2 x parameters x tokens for the dense layers, plus
# 4 x layers x tokens^2 x width for self-attention (QK^T and AV); a backward costs two forwards.
REAL_MODELS = {
    # Stable Audio Open 1.0's DiT: about 1.06e9 parameters, 24 layers of width 1536, 47.55 s clips as 1024 latent
    # frames (64 channels at 21.5 Hz).
    "stable_audio_open_dit": {"parameters": 1.06e9, "layers": 24, "width": 1536, "tokens": 1024},
    # MusicGen medium's decoder: 1.5e9 parameters, 48 layers of width 1536, 30 s clips as 1500 frames (50 Hz; the
    # four codebooks' embeddings are summed into one token per frame). Its loss draws nothing: one draw per item.
    "musicgen_medium_decoder": {"parameters": 1.5e9, "layers": 48, "width": 1536, "tokens": 1500, "draws": 1},
}
CATALOGUE = 115_000  # Choi et al.'s training set
# An H100 SXM's dense TF32 peak (494.7 TFLOP/s) at an assumed 40 % utilisation: the sweeps and the ascent run in
# float32 (bfloat16 loses the scores: benchmarks/sweep_precision.py), with TF32 tensor cores, which change them little
# (PyTorch's default for convolutions; for matrix products it takes torch.set_float32_matmul_precision("high"), else
# they run at the float32 peak, 66.9 TFLOP/s, 7.4 times slower).
GPU_FLOPS = 494.7e12 * 0.4


def forward_flops(parameters: float, layers: int, width: int, tokens: int) -> float:
    return 2 * parameters * tokens + 4 * layers * tokens**2 * width


def encoder_flops() -> dict[str, float]:
    """FLOPs of encoding one clip into each real model's training targets, counted (`FlopCounterMode`) on the released
    architectures as benchmarks/gpu_steps.py builds them: Stable Audio Open's VAE encoder on 1024 x 2048 samples
    (47.55 s) of stereo 44.1 kHz audio on the meta device (no weights, no arithmetic), MusicGen's EnCodec 32 kHz on
    30 s of mono audio on the CPU (its padding reads a value, which the meta device cannot give; about 15 s). The
    counter sees convolutions and matrix products, not ``aten::lstm``: EnCodec's two LSTM layers (width 1024, 1500
    frames) add about 0.05 TFLOP by hand (8 x 2048 x 1024 per frame and layer) to its 0.19."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import EncodecModel

    from benchmarks.gpu_steps import _quiet, encodec_32khz, stable_audio_components

    def counted(encode: Callable[[], object]) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            encode()
        return float(counter.get_total_flops())

    with _quiet(), torch.device("meta"):
        vae = stable_audio_components()["vae"]
    with _quiet():
        codec = EncodecModel(encodec_32khz()).eval()
    return {"stable_audio_open_dit": counted(lambda: vae.encode(torch.empty(1, 2, 1024 * 2048, device="meta"))),
            "musicgen_medium_decoder": counted(lambda: codec.encode(torch.zeros(1, 1, 30 * 32000)))}


def gpu_hours(fraction: float, draws: int, dim: int, measured_ratio: float) -> dict:
    """Per query at `CATALOGUE` tracks and `draws` draws: the full sweep's GPU-hours from its FLOPs (the tracks'
    targets read from a target cache), the cascade's by the same arithmetic (its query gradient, its product with the
    store, its exact sweep of the top `fraction`) and by the wall-time ratio measured here, and the store's one-off
    GPU-hours; and what encoding the audio adds: once per training set into a target cache, once per track and sweep
    without one, or at every draw, as the sweeps did before they encoded each track once."""
    result = {"catalogue": CATALOGUE, "draws": draws, "fraction": fraction, "gpu_flops": GPU_FLOPS, "models": {}}
    measured = candidate_count(CATALOGUE, fraction)
    encoders = encoder_flops()
    for name, spec in REAL_MODELS.items():
        spec = dict(spec)
        model_draws = spec.pop("draws", draws)
        forward, encode = forward_flops(**spec), encoders[name]
        full = CATALOGUE * model_draws * forward
        cascade = 3 * model_draws * forward + 2 * CATALOGUE * dim + measured * model_draws * forward
        store = 3 * CATALOGUE * model_draws * forward
        result["models"][name] = {
            "draws": model_draws,
            "forward_tflops_per_item_draw": forward / 1e12,
            "full_sweep_gpu_hours": full / GPU_FLOPS / 3600,
            "cascade_gpu_hours_by_flops": cascade / GPU_FLOPS / 3600,
            "cascade_gpu_hours_by_measured_ratio": full / GPU_FLOPS / 3600 / measured_ratio,
            "store_gpu_hours_once": store / GPU_FLOPS / 3600,
            "encoder_tflops_per_clip": encode / 1e12,
            "target_cache_gpu_hours_once": CATALOGUE * encode / GPU_FLOPS / 3600,
            "full_sweep_gpu_hours_without_target_cache": (full + CATALOGUE * encode) / GPU_FLOPS / 3600,
            "full_sweep_gpu_hours_encoding_at_every_draw": (full + CATALOGUE * model_draws * encode) / GPU_FLOPS / 3600,
        }
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "toy" / "base")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--draws", type=int, default=1, help="draws per track and query (every cost is linear in it)")
    parser.add_argument("--dim", type=int, default=4096, help="projected dimensions of the feature store")
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--store-items", type=int, default=256)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only-several-queries", action="store_true", help="measure only several queries per pass")
    parser.add_argument("--only-gpu-hours", action="store_true",
                        help="recompute only the GPU-hours arithmetic of --out's results, from their measured ratio")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "attribution_scale.json")
    args = parser.parse_args(argv)
    if args.only_gpu_hours:
        result = json.loads(args.out.read_text())
        settings = result["settings"]
        result["gpu_hours"] = gpu_hours(settings["fraction"], 20, settings["dim"],
                                        result["scale"][-1]["wall_time_ratio"])
        write_json_atomic(args.out, result)
        return result
    torch.set_num_threads(args.threads)
    model = ToyTextToMusic.from_pretrained(args.model).eval()
    toy = load_batch(model, 400, torch.device("cpu"), from_audio=False)
    query = rows(synthetic(toy, 1), 0, 1)
    query["id"] = ["query-0"]
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "settings": {key: value for key, value in vars(args).items() if key not in ("out", "model")},
              "model": str(args.model)}
    if not args.only_several_queries:  # first, from the smallest N up, so that the peak memory grows with N
        with tempfile.TemporaryDirectory() as folder:
            estimate = unlearning(model, toy, Path(folder), args.dim)
            result["scale"] = scale(model, toy, query, sorted(args.sizes), args.fraction, args.draws, args.dim,
                                    args.micro_batch, estimate)
        result["store"] = store_cost(model, toy, args.store_items, args.draws, args.dim)
        print(f"feature store: {result['store']['seconds_per_item']:.3f} s per item", flush=True)
    result["several_queries"] = several_queries(model, toy, args.queries, args.micro_batch, args.repeats)
    print("several queries per pass, throughput per query against one per pass:",
          {name: round(value, 2) for name, value in result["several_queries"]["throughput_ratio"].items()}, flush=True)
    if args.only_several_queries:
        write_json_atomic(args.out, result)
        return result
    for row in result["scale"]:
        row["store_seconds_extrapolated"] = result["store"]["seconds_per_item"] * row["tracks"]
    result["peak_rss_gb"] = peak_rss_gb()
    result["gpu_hours"] = gpu_hours(args.fraction, 20, args.dim, result["scale"][-1]["wall_time_ratio"])
    write_json_atomic(args.out, result)
    print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
