"""The arithmetic attribution by unlearning needs. Its ascent moves each weight by about 1e-4 of its value (the toy LDS
benchmark's chosen setting, lr 1e-7 x 3 steps: median 1.5e-4) and its scores are the loss changes that follow, small
differences of large losses. Against float64 on that benchmark (`benchmarks/sweep_precision.py`, README "Precision of
the attribution"; 3 test queries x 100 tracks), float32 keeps every score (error 1e-4 of their spread) and TF32
operands nearly (0.04; 0.93 of the top 10), but bfloat16 autocast finds 0.73 of the top 10 and bfloat16 weights, where
87 % of the ascent's weight changes round away, 0.43. So the ascent and the loss sweeps refuse to run below float32
(`require_float32`: a mixed or half trainer precision, autocast, weights below float32) rather than approximate, and
TF32 is left to PyTorch's settings (on CUDA: convolutions in TF32, matrix products in float32 unless
``train.py --float32_matmul_precision high``)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

FULL_PRECISIONS = ("32-true", "32", "64-true", "64")  # Lightning's names of float32 and float64 runs
ADVICE = ("attribution by unlearning's scores are loss changes of about 1e-4 of the loss, made by weight changes of "
          "about 1e-4 of a weight, which bfloat16 loses (README, \"Precision of the attribution\"; float16 was not "
          "measured)")


def require_float32(model: nn.Module, what: str, trainer: L.Trainer | None = None, autocast: bool = True) -> None:
    """Raise `ValueError` where `what` would compute below float32.

    Args:
        model: the model whose weights must be float32 or float64.
        what: the pass, for the message (e.g. "The loss sweep").
        trainer: whose ``precision`` must be a float32 or float64 one (`FULL_PRECISIONS`); None skips that check.
        autocast: also refuse autocast enabled on the model's device (False where only the weights matter).
    """
    if trainer is not None and str(trainer.precision) not in FULL_PRECISIONS:
        raise ValueError(f"{what} cannot run at trainer.precision={trainer.precision!r}: {ADVICE}. Run it with "
                         "--trainer.precision=32-true (the default).")
    low = sorted({str(param.dtype) for param in model.parameters()
                  if param.is_floating_point() and param.dtype not in (torch.float32, torch.float64)})
    if low:
        raise ValueError(f"{what} cannot run on weights in {', '.join(low)}: {ADVICE}. Load the model in float32 "
                         "(no bf16-true / 16-true trainer precision, no half-precision dtype).")
    device = next((param.device.type for param in model.parameters()), "cpu")
    if autocast and torch.is_autocast_enabled(device):
        raise ValueError(f"{what} cannot run under {torch.get_autocast_dtype(device)} autocast on {device}: "
                         f"{ADVICE}. Run it with --trainer.precision=32-true, outside torch.autocast.")
