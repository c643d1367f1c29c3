"""Benchmark: what the arithmetic's precision does to attribution by unlearning's scores. The ascent moves each
weight by
about 1e-4 of its value and a score is the loss change that follows, so the "after" minus "before" sweep is a small
difference of large numbers. Measured on the toy LDS benchmark (`checkpoints/toy/lds_base`, its test queries, the
Fisher of its 400 training tracks, `attribute.yaml`'s ascent: lr 1e-7, 3 steps of 8 draws, mixed masking), each
query's scores over the first `--tracks` training tracks at 20 draws are computed in each precision and compared with
float64's (Pearson correlation, the share of float64's top 10 / top 50 found in the same places, the error's RMS over
the scores' standard deviation):

- **float64** (the reference) and **float32** (IEEE, what `sweep_losses` runs on a CPU);
- **tf32-conv**: convolutions with TF32 operands, PyTorch's default on CUDA (``torch.backends.cudnn.conv
  .fp32_precision == "tf32"``), emulated on the CPU by rounding both operands of every ``conv1d`` / ``conv2d`` to
  TF32's 10 mantissa bits (round to nearest even) and accumulating in float32, as TF32 tensor cores do;
- **tf32**: also the linear layers' products (``torch.set_float32_matmul_precision("high")``, which Lightning advises
  on tensor-core GPUs), emulated the same way for ``linear`` (attention's own products are left in float32);
- **bf16-mixed**: the sweep under bfloat16 autocast (``--trainer.precision=bf16-mixed``), on the CPU;
- **bf16-true**: the weights and the inputs in bfloat16 (``--trainer.precision=bf16-true``), the ascent's update
  added to the bfloat16 weights in bfloat16, as `FisherAscent` would add it.

Also, per query, the share of the ascent's weight changes that a weight in bfloat16, float16 or TF32 cannot hold
(the rounded weight equals the rounded original). In the other modes the update is added in float32 (or float64) and
rounded with the weight where a kernel reads it, so a change below the rounding step still moves some weights across
it, as dither does. The unlearning itself runs in float32, as the attribution's does.
bfloat16 is emulated by PyTorch on CPUs without bf16 instructions, so its two rows take most of the time (about
16 and 19 minutes at 100 tracks and 3 queries on 2 cores, against 52 s for float32).

    python benchmarks/sweep_precision.py          # writes benchmarks/results/sweep_precision.json (39 minutes)
    python benchmarks/sweep_precision.py --tracks 20 --queries 1 --modes float64 float32 tf32   # about a minute
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from benchmarks.attribution import load_batch  # noqa: E402
from datamodules.audio import AudioTextDataset  # noqa: E402
from datamodules.manifest import read_queries  # noqa: E402
from lightning_modules.attribution.fisher import write_fisher  # noqa: E402
from lightning_modules.attribution.query import FisherAscent  # noqa: E402
from lightning_modules.attribution.settings import SWEEP_DRAWS, AscentSettings  # noqa: E402
from lightning_modules.attribution.sweep import _fixed_inputs, _rows, set_weights  # noqa: E402
from lightning_modules.io import read_json_verified, write_json_atomic  # noqa: E402
from lightning_modules.models import ToyTextToMusic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "checkpoints" / "toy" / "lds"
ASCENT = AscentSettings(**yaml.safe_load((REPO / "configs" / "attribution" / "attribute.yaml").read_text())["model"]
                        ["init_args"]["ascent"])  # the attribution's own
MODES = ("float64", "float32", "tf32-conv", "tf32", "bf16-mixed", "bf16-true")


def tf32(value: Tensor) -> Tensor:
    """`value` (float32) rounded to TF32: 10 mantissa bits, to the nearest, ties to even."""
    bits = value.contiguous().view(torch.int32)
    bits = (bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF
    return bits.view(torch.float32)


@contextmanager
def tf32_operands(*names: str) -> Iterator[None]:
    """`torch.nn.functional`'s `names` (e.g. "conv2d", "linear") with both operands rounded to TF32 inside."""
    originals = {name: getattr(F, name) for name in names}

    def rounded(function: Callable) -> Callable:
        return lambda input, weight, *args, **kwargs: function(tf32(input), tf32(weight), *args, **kwargs)

    try:
        for name, function in originals.items():
            setattr(F, name, rounded(function))
        yield
    finally:
        for name, function in originals.items():
            setattr(F, name, function)


def arithmetic(mode: str) -> tuple[torch.dtype, Callable[[], object]]:
    """The dtype of the weights and inputs, and the context the forwards run in, for `mode`."""
    return {
        "float64": (torch.float64, nullcontext),
        "float32": (torch.float32, nullcontext),
        "tf32-conv": (torch.float32, lambda: tf32_operands("conv1d", "conv2d")),
        "tf32": (torch.float32, lambda: tf32_operands("conv1d", "conv2d", "linear")),
        "bf16-mixed": (torch.float32, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
        "bf16-true": (torch.bfloat16, nullcontext),
    }[mode]


def mean_losses(model: ToyTextToMusic, batch: dict, mode: str, micro_batch: int) -> Tensor:
    """Each item's loss at `SWEEP_DRAWS` fixed draws, averaged over the draws, `(items,)` float64: the sweep of
    `sweep_losses` (unmasked, as mixed masking measures) in `mode`'s arithmetic."""
    dtype, context = arithmetic(mode)
    count = len(batch["id"])
    batch = {**batch, "mask": torch.ones_like(batch["mask"])}
    item = torch.arange(count).repeat_interleave(SWEEP_DRAWS)
    draw = torch.arange(SWEEP_DRAWS).repeat(count)
    out = torch.empty(count * SWEEP_DRAWS, dtype=torch.float64)
    with torch.no_grad(), context():
        for start in range(0, len(out), micro_batch):
            part = {key: value.to(dtype) if isinstance(value, Tensor) and value.is_floating_point() else value
                    for key, value in _rows(batch, item[start:start + micro_batch]).items()}
            inputs = _fixed_inputs(model, part["id"], draw[start:start + micro_batch].tolist(), 0)
            inputs = {key: value.to(dtype) if value.is_floating_point() else value for key, value in inputs.items()}
            out[start:start + micro_batch] = model.loss(part, **inputs).double()
    return out.view(count, SWEEP_DRAWS).mean(dim=1)


def recall(scores: Tensor, reference: Tensor, k: int) -> float:
    top = set(scores.argsort(descending=True)[:k].tolist())
    return len(top & set(reference.argsort(descending=True)[:k].tolist())) / k


def lost_changes(base: dict[str, Tensor], delta: dict[str, Tensor]) -> dict[str, float]:
    """The share of the weights the ascent changed whose change rounds away in each low precision."""
    changed = {name: delta[name] != base[name] for name in delta}
    total = sum(int(mask.sum()) for mask in changed.values())
    formats = {"bfloat16": lambda value: value.bfloat16(), "float16": lambda value: value.half(), "tf32": tf32}
    return {name: sum(int((cast(delta[key]) == cast(base[key]))[mask].sum()) for key, mask in changed.items()) / total
            for name, cast in formats.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "toy" / "lds_base")
    parser.add_argument("--tracks", type=int, default=100, help="the first N training tracks are scored")
    parser.add_argument("--queries", type=int, default=3, help="the first Q test queries of the LDS benchmark")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sweep_precision.json")
    args = parser.parse_args(argv)
    if "float64" not in args.modes:
        parser.error("--modes must include float64, the reference")
    torch.set_num_threads(args.threads)
    model = ToyTextToMusic.from_pretrained(args.model).eval()
    train = load_batch(model, 400, torch.device("cpu"), from_audio=False)
    base = {name: value.detach().clone() for name, value in model.state_dict().items()}
    split = read_json_verified(BENCHMARK / "lds.json", "the LDS benchmark", "rebuild it (scripts/lds.py)")["split"]
    items = [item for item in read_queries(BENCHMARK / "queries" / "queries.jsonl") if split[item.id] == "test"]
    dataset = AudioTextDataset(items[:args.queries], model.sample_rate, model.num_samples)
    started = time.perf_counter()
    names = model.parameter_names(model.select_parameters(["all"]))
    deltas, lost = [], {}
    with tempfile.TemporaryDirectory() as folder:
        fisher = Path(folder) / "fisher.pt"
        write_fisher(model, ["all"], [{key: value[start:start + 16] for key, value in train.items()}
                                      for start in range(0, 400, 16)], fisher)
        for index, item in enumerate(dataset.items):
            set_weights(model, base)
            delta, _ = FisherAscent(names, fisher, ASCENT).unlearn(model, default_collate([dataset[index]]))
            deltas.append(delta)
            lost[item.id] = lost_changes(base, delta)
            print(f"{item.id}: weight changes lost in bfloat16 / float16 / TF32: "
                  + " / ".join(f"{share:.3f}" for share in lost[item.id].values()), flush=True)
    print(f"Fisher and {len(deltas)} unlearned queries: {time.perf_counter() - started:.0f} s", flush=True)
    tracks = {key: value[:args.tracks] for key, value in train.items()}
    scores, seconds = {}, {}
    for mode in ["float64", *[mode for mode in MODES if mode in args.modes and mode != "float64"]]:
        started = time.perf_counter()
        model.to(arithmetic(mode)[0])
        set_weights(model, base)
        before = mean_losses(model, tracks, mode, args.micro_batch)
        rows = []
        for delta in deltas:
            set_weights(model, base)
            with torch.no_grad():  # the ascent's update added in the weights' own dtype, as `FisherAscent` adds it
                for name, param in model.named_parameters():
                    if name in delta:
                        param.add_((delta[name] - base[name]).to(param.dtype))
            rows.append(mean_losses(model, tracks, mode, args.micro_batch) - before)
        scores[mode] = torch.stack(rows)
        seconds[mode] = time.perf_counter() - started
        print(f"{mode}: {seconds[mode]:.0f} s", flush=True)
    reference = scores["float64"]
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
              "tracks": args.tracks, "draws": SWEEP_DRAWS, "ascent": ASCENT.record(),
              "queries": [item.id for item in dataset.items], "weight_changes_lost": lost,
              "score_spread": [float(row.std()) for row in reference], "modes": {}}
    for mode, values in scores.items():
        per_query = [{"pearson": float(torch.corrcoef(torch.stack([row, ref]))[0, 1]),
                      **{f"recall@{k}": recall(row, ref, k) for k in (10, 50) if k < args.tracks},
                      "rms_error_over_sd": float((row - ref).pow(2).mean().sqrt() / ref.std())}
                     for row, ref in zip(values, reference, strict=True)]
        result["modes"][mode] = {"seconds": seconds[mode], "per_query": per_query,
                                 **{key: sum(query[key] for query in per_query) / len(per_query)
                                    for key in per_query[0]}}
        print(f"{mode:>10}: " + ", ".join(f"{key} {result['modes'][mode][key]:.3g}" for key in per_query[0]),
              flush=True)
    write_json_atomic(args.out, result)
    print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
