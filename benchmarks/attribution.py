"""Benchmark: the attribution loss sweep (`LossSweep.losses`, (item, draw) rows batched in micro-batches) against the
per-track loop the image code uses, side by side in one process, and how the sweep's time grows.

On the shipped toy model and the toy training set (`data/toy/train.jsonl`, written by `ToyCorpus` when missing) it
times every item's loss at `draws` fixed (timestep, noise) draws, `(items, draws)`: (a) the naive loop, for each item
and each draw d one ``model.loss(item, **model.fixed_loss_inputs([id], seed + d))`` call, and (b) `LossSweep` at
each micro-batch size given, keeping the fastest. Both read targets encoded once beforehand, as both would read the
target cache (``--from-audio`` encodes the audio inside every loss call instead). It checks that (a) and every (b)
give the same losses (atol 1e-5) and reports tracks and track-draws scored per second and the speed ratio b / a;
then the sweep's time at the best micro-batch size for a growing number of tracks (fixed draws) and of draws (fixed
tracks), with a least-squares line seconds = overhead + cost x (tracks x draws). Each timing is the median of
``--repeats`` runs after an untimed warm-up. The default run takes about 4-5 minutes on 2 CPU cores.

    python benchmarks/attribution.py            # writes benchmarks/results/attribution.json
    python benchmarks/attribution.py --quick    # a smaller run (about half a minute)
    python benchmarks/attribution.py --device cuda --micro-batches 64 256 1024
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from datamodules import ToyCorpus, read_manifest  # noqa: E402
from datamodules.audio import AudioTextDataset  # noqa: E402
from lightning_modules.attribution.sweep import LossSweep  # noqa: E402
from lightning_modules.io import write_json_atomic  # noqa: E402
from lightning_modules.models import TextToMusicModel, ToyTextToMusic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_batch(model: TextToMusicModel, count: int, device: torch.device, from_audio: bool) -> dict:
    """The first `count` toy training tracks as one batch on `device`; with targets encoded once unless
    `from_audio`."""
    root = REPO / "data" / "toy"
    if not (root / "train.jsonl").is_file():
        ToyCorpus(root=str(root)).prepare()
    items = read_manifest(root / "train.jsonl")
    if count > len(items):
        raise ValueError(f"--tracks / --scale-tracks ask for {count} tracks; {root / 'train.jsonl'} has {len(items)}.")
    dataset = AudioTextDataset(items[:count], model.sample_rate, model.num_samples)
    batch = default_collate([dataset[i] for i in range(count)])
    batch = {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}
    if not from_audio:
        with torch.no_grad():
            batch["targets"] = model.encode_audio(batch["audio"], batch["mask"])
        del batch["audio"]  # as a cached dataset (with_audio=False) gives it
    return batch


def first(batch: dict, count: int) -> dict:
    return {key: value[:count] for key, value in batch.items()}


def naive(model: TextToMusicModel, batch: dict, draws: int, seed: int) -> Tensor:
    """The per-track loop: one `loss` call per (item, draw), `(items, draws)`."""
    losses = []
    with torch.no_grad():
        for i, item_id in enumerate(batch["id"]):
            item = {key: value[i : i + 1] for key, value in batch.items()}
            losses.append(torch.cat([model.loss(item, **model.fixed_loss_inputs([item_id], seed + d))
                                     for d in range(draws)]))
    return torch.stack(losses).float().cpu()


def sweep(model: TextToMusicModel, batch: dict, draws: int, seed: int, micro_batch_size: int) -> Tensor:
    return LossSweep(model, draws=draws, seed=seed, micro_batch_size=micro_batch_size).losses(batch)


def timed(fn: Callable[[], Tensor], repeats: int, device: torch.device) -> tuple[float, list[float], Tensor]:
    """Median wall time of `repeats` calls (the caller warms up), all the times, and the last result."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def check_same(reference: Tensor, losses: Tensor, what: str) -> float:
    """Max |difference|; raises when the two are not allclose (atol 1e-5): a speed ratio of different numbers means
    nothing."""
    torch.testing.assert_close(losses, reference, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what} disagree: {m}")
    return (losses - reference).abs().max().item()


def linear_fit(rows: list[dict]) -> dict:
    """seconds = overhead_s + per_track_draw_s x (tracks x draws), least squares, with R^2."""
    x = np.array([row["tracks"] * row["draws"] for row in rows], dtype=float)
    y = np.array([row["sweep_s"] for row in rows])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    r2 = 1 - (residual @ residual) / max(((y - y.mean()) ** 2).sum(), 1e-30)
    return {"per_track_draw_s": float(slope), "overhead_s": float(intercept), "r2": float(r2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=64, help="tracks of the sweep-against-naive comparison")
    parser.add_argument("--draws", type=int, default=20, help="draws of the sweep-against-naive comparison")
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--scale-tracks", type=int, nargs="+", default=[32, 64, 128, 256, 320])
    parser.add_argument("--scale-tracks-draws", type=int, default=5, help="draws of the growing-tracks series")
    parser.add_argument("--scale-draws", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--scale-draws-tracks", type=int, default=64, help="tracks of the growing-draws series")
    parser.add_argument("--repeats", type=int, default=3, help="timings per sweep setting (median kept)")
    parser.add_argument("--naive-repeats", type=int, default=2, help="timings of the naive loop (median kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--from-audio", action="store_true", help="encode audio in every loss call (no cache)")
    parser.add_argument("--quick", action="store_true", help="a small run: 16 tracks x 5 draws, short series")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "attribution.json"))
    args = parser.parse_args()
    if args.quick:
        args.tracks, args.draws, args.micro_batches = 16, 5, [16, 64]
        args.scale_tracks, args.scale_tracks_draws = [8, 16, 32, 64], 2
        args.scale_draws, args.scale_draws_tracks = [1, 2, 5], 16
        args.repeats = args.naive_repeats = 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given but torch sees no CUDA device; use --device cpu.")

    model = ToyTextToMusic.from_pretrained(REPO / "checkpoints" / "toy" / "base").to(device).eval()
    most = max([args.tracks, args.scale_draws_tracks, *args.scale_tracks])
    start = time.perf_counter()
    everything = load_batch(model, most, device, args.from_audio)
    load_before = os.getloadavg()
    print(f"loaded {most} tracks{'' if args.from_audio else ' and encoded their targets'} in "
          f"{time.perf_counter() - start:.2f} s; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{device}; load average {load_before[0]:.2f}")

    # ---- head to head: naive loop against the sweep at each micro-batch size, same items and draws; the repeats
    # take turns (naive, then every size, then again) so a load that comes and goes on a shared machine falls on all
    batch = first(everything, args.tracks)
    naive(model, first(batch, 2), 2, args.seed)  # warm-ups
    for micro in args.micro_batches:
        sweep(model, first(batch, 2), max(1, micro // 2), args.seed, micro)
    runs: dict[int, list[float]] = {micro: [] for micro in [1, *args.micro_batches]}  # 1: the naive loop
    results: dict[int, Tensor] = {}
    for repeat in range(max(args.repeats, args.naive_repeats)):
        for micro in runs:
            if repeat >= (args.naive_repeats if micro == 1 else args.repeats):
                continue
            if micro == 1:
                _, times, results[micro] = timed(lambda: naive(model, batch, args.draws, args.seed), 1, device)
            else:
                _, times, results[micro] = timed(lambda m=micro: sweep(model, batch, args.draws, args.seed, m), 1,
                                                 device)
            runs[micro] += times
            print(f"  repeat {repeat + 1}: {'naive loop' if micro == 1 else f'sweep, micro batch {micro}'} "
                  f"{times[0]:.2f} s")
    reference = results[1]
    track_draws = args.tracks * args.draws
    naive_s = statistics.median(runs[1])
    head = [{"method": "naive", "micro_batch_size": 1, "tracks": args.tracks, "draws": args.draws,
             "seconds": naive_s, "times": runs[1]}]
    sweep_times: dict[tuple[int, int, int], tuple[float, list[float]]] = {}
    for micro in args.micro_batches:
        seconds = statistics.median(runs[micro])
        sweep_times[(args.tracks, args.draws, micro)] = (seconds, runs[micro])
        difference = check_same(reference, results[micro], f"sweep (micro batch {micro}) and naive loop")
        head.append({"method": "sweep", "micro_batch_size": micro, "tracks": args.tracks, "draws": args.draws,
                     "seconds": seconds, "times": runs[micro], "max_abs_difference_to_naive": difference})
    for row in head:
        row.update(tracks_per_s=row["tracks"] / row["seconds"], track_draws_per_s=track_draws / row["seconds"],
                   speedup_vs_naive=naive_s / row["seconds"])
    best = min((row for row in head if row["method"] == "sweep"), key=lambda row: row["seconds"])
    best_micro = best["micro_batch_size"]

    # ---- how the sweep grows, at the best micro-batch size; again the repeats take turns over the settings
    points = [(tracks, args.scale_tracks_draws) for tracks in args.scale_tracks]
    points += [(args.scale_draws_tracks, draws) for draws in args.scale_draws]
    measured = {(tracks, draws): list(times) for (tracks, draws, micro), (_, times) in sweep_times.items()
                if micro == best_micro}
    for _ in range(args.repeats):
        for tracks, draws in dict.fromkeys(points):
            if len(measured.setdefault((tracks, draws), [])) >= args.repeats:
                continue
            _, times, losses = timed(lambda t=tracks, d=draws: sweep(model, first(everything, t), d, args.seed,
                                                                     best_micro), 1, device)
            measured[(tracks, draws)] += times
            if tracks <= args.tracks and draws <= args.draws:  # the naive loop's losses cover these
                check_same(reference[:tracks, :draws], losses, f"sweep ({tracks} x {draws}) and naive loop")

    def scale(tracks: int, draws: int) -> dict:
        seconds = statistics.median(measured[(tracks, draws)])
        return {"tracks": tracks, "draws": draws, "sweep_s": seconds, "times": measured[(tracks, draws)],
                "track_draws_per_s": tracks * draws / seconds}

    tracks_rows = [scale(tracks, args.scale_tracks_draws) for tracks in args.scale_tracks]
    draws_rows = [scale(args.scale_draws_tracks, draws) for draws in args.scale_draws]
    fits = {"tracks": linear_fit(tracks_rows), "draws": linear_fit(draws_rows),
            "both": linear_fit(tracks_rows + draws_rows)}

    print(f"\n### Sweep against the per-track loop ({args.tracks} tracks x {args.draws} draws, "
          f"{'audio encoded per call' if args.from_audio else 'targets pre-encoded'}, {device}, "
          f"{torch.get_num_threads()} threads)\n")
    print("| method | micro batch | seconds | tracks/s | track-draws/s | vs naive | max abs loss diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in head:
        mark = " (best)" if row is best else ""
        print(f"| {row['method']}{mark} | {row['micro_batch_size']} | {row['seconds']:.2f} | {row['tracks_per_s']:.2f} "
              f"| {row['track_draws_per_s']:.1f} | {row['speedup_vs_naive']:.1f}x "
              f"| {row.get('max_abs_difference_to_naive', 0.0):.1e} |")
    for name, rows, fit in (("tracks", tracks_rows, fits["tracks"]), ("draws", draws_rows, fits["draws"])):
        fixed = (f"{args.scale_tracks_draws} draws" if name == "tracks" else f"{args.scale_draws_tracks} tracks")
        print(f"\n### Sweep time against {name} (micro batch {best_micro}, {fixed})\n")
        print("| tracks | draws | track-draws | seconds | track-draws/s |")
        print("|---:|---:|---:|---:|---:|")
        for row in rows:
            print(f"| {row['tracks']} | {row['draws']} | {row['tracks'] * row['draws']} | {row['sweep_s']:.2f} "
                  f"| {row['track_draws_per_s']:.1f} |")
        print(f"\nfit: {fit['per_track_draw_s'] * 1e3:.2f} ms per track-draw + {fit['overhead_s']:.3f} s overhead "
              f"(R^2 {fit['r2']:.4f})")
    both = fits["both"]
    print(f"\nboth series together: {both['per_track_draw_s'] * 1e3:.2f} ms per track-draw + "
          f"{both['overhead_s']:.3f} s overhead (R^2 {both['r2']:.4f})")

    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
               "cpu_count": os.cpu_count(),
               "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
               "python": platform.python_version(), "platform": platform.platform()}
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    settings["targets"] = "encoded per loss call" if args.from_audio else "pre-encoded once (as from the target cache)"
    write_json_atomic(args.out, {"benchmark": "attribution", "machine": machine, "settings": settings,
                                 "best_micro_batch_size": best_micro, "speedup_vs_naive": best["speedup_vs_naive"],
                                 "head_to_head": head, "scaling_tracks": tracks_rows, "scaling_draws": draws_rows,
                                 "fits": fits})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
