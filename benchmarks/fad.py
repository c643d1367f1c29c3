"""Benchmark: this package's FAD against frechet-audio-distance's, on the same embeddings, side by side in one process.

For embedding widths 128, 512 and 2048 it draws reference and generated embeddings from two different Gaussians and
times, from the embeddings to the distance, (a) `FrechetAudioDistance.calculate_embd_statistics` +
`calculate_frechet_distance` of frechet-audio-distance (numpy, `scipy.linalg.sqrtm`) and (b) this package's float64
sums + `gaussian_statistics` + the eigenvalue-based `frechet_distance` (torch). It reports the time ratio and the
relative disagreement, for a well-conditioned case (more samples than dimensions) and a near-singular one (fewer).

    python benchmarks/fad.py            # writes benchmarks/results/fad.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_modules.io import write_json_atomic  # noqa: E402
from lightning_modules.metrics.functional import frechet_distance, gaussian_statistics  # noqa: E402


def ours(real: torch.Tensor, fake: torch.Tensor) -> float:
    stats = [gaussian_statistics(x.sum(0), x.T @ x, len(x)) for x in (real.double(), fake.double())]
    return frechet_distance(*stats[0], *stats[1]).item()


def theirs(real: np.ndarray, fake: np.ndarray) -> tuple[float, str]:
    from frechet_audio_distance import FrechetAudioDistance  # imports laion_clap: only here, only when benchmarking

    # the methods use no instance state; an instance would load a network from the hub
    mu1, sigma1 = FrechetAudioDistance.calculate_embd_statistics(None, real)
    mu2, sigma2 = FrechetAudioDistance.calculate_embd_statistics(None, fake)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            value = float(FrechetAudioDistance.calculate_frechet_distance(None, mu1, sigma1, mu2, sigma2))
        except ValueError as error:  # "Imaginary component": sqrtm failed
            return float("nan"), str(error)
    return value, printed.getvalue().strip()


def timed(fn, *args, repeats: int, budget_s: float = 20.0) -> tuple[float, object]:
    """Median wall time of `repeats` calls (fewer once `budget_s` is spent), after one untimed warm-up call."""
    result = fn(*args)
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget_s:
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "fad.json"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for dim in args.dims:
        for case, samples in (("well-conditioned", 4 * dim), ("near-singular", dim // 2)):
            generator = torch.Generator().manual_seed(dim)
            mixing = torch.randn(dim, dim, generator=generator) / dim**0.5
            real = torch.randn(samples, dim, generator=generator) @ mixing
            fake = (torch.randn(samples, dim, generator=generator) * 1.2 + 0.1) @ mixing
            time_ours, value_ours = timed(ours, real, fake, repeats=args.repeats)
            real_np, fake_np = real.double().numpy(), fake.double().numpy()
            time_theirs, (value_theirs, message) = timed(theirs, real_np, fake_np, repeats=args.repeats)
            row = {"dim": dim, "case": case, "samples": samples, "ours_s": time_ours, "theirs_s": time_theirs,
                   "speedup": time_theirs / time_ours, "ours": value_ours, "theirs": value_theirs,
                   "relative_difference": abs(value_ours - value_theirs) / abs(value_ours), "theirs_said": message}
            rows.append(row)
            print(f"dim {dim:5d} {case:16s} n={samples:5d}: ours {time_ours * 1e3:8.1f} ms, theirs "
                  f"{time_theirs * 1e3:8.1f} ms ({row['speedup']:.1f}x); FAD {value_ours:.6f} vs {value_theirs:.6f} "
                  f"(rel. diff {row['relative_difference']:.1e}) {message}")
    write_json_atomic(args.output, {"benchmark": "fad", "torch_threads": torch.get_num_threads(), "rows": rows})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
