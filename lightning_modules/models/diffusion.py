"""Pieces every diffusion backend shares: per-item fixed noise, targets by prediction type, masked per-sample MSE,
and parameter groups found by diffusers' module names (``attn1`` self-attention, ``attn2`` cross-attention).

Follows DDPM (Ho et al., 2020) with the epsilon, sample and v (Salimans & Ho, 2022) targets as diffusers'
schedulers define them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from diffusers import SchedulerMixin
from torch import Tensor, nn


def item_seed(item_id: str, seed: int = 0) -> int:
    """A 63-bit seed derived from an item id and a global seed, stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def fixed_timesteps_and_noise(
    ids: Sequence[str], shape: Sequence[int], num_train_timesteps: int | None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """One timestep `(batch,)` and one noise tensor `(batch, *shape)` per item, each a function of its id alone.

    Timesteps are integers in ``[0, num_train_timesteps)`` (DDPM-style schedulers) or, with `num_train_timesteps`
    None, continuous times in ``[0, 1)`` (continuous-time models such as Stable Audio's v-objective DiT). Drawn in
    float32 whatever the default dtype (bf16-true sets it), so the draws are the same under every precision.
    """
    timesteps, noise = [], []
    for item_id in ids:
        generator = torch.Generator().manual_seed(item_seed(item_id, seed))
        if num_train_timesteps is None:
            timesteps.append(torch.rand((1,), generator=generator, dtype=torch.float32))
        else:
            timesteps.append(torch.randint(0, num_train_timesteps, (1,), generator=generator))
        noise.append(torch.randn(tuple(shape), generator=generator, dtype=torch.float32))
    return torch.cat(timesteps), torch.stack(noise)


def diffusion_target(scheduler: SchedulerMixin, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """What the denoiser is trained to predict, as the scheduler's ``prediction_type`` says."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(sample, noise, timesteps)
    if prediction_type == "sample":
        return sample
    raise ValueError(f"Scheduler prediction_type {prediction_type!r} is not supported; use epsilon, v_prediction or "
                     "sample.")


def masked_mse(prediction: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Per-item mean squared error `(batch,)` where `weight` (broadcastable to the target) is 1 on real audio."""
    weight = weight.to(prediction.dtype).expand_as(prediction)
    squared = (prediction.float() - target.float()).pow(2) * weight
    return squared.flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)


def attention_parameter_groups(denoiser: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameter groups of a diffusers UNet or DiT by module name.

    ``cross_attention`` is every ``attn2`` projection, ``cross_attention_kv`` its ``to_k`` / ``to_v``,
    ``self_attention`` every ``attn1``, ``transformer_blocks`` everything inside ``transformer_blocks``,
    ``text_conditioning`` every layer that reads the text: cross-attention and the projections of a pooled text
    embedding into the time embedding (``class_embedding``, ``add_embedding``, as AudioLDM's and the toy model's
    UNets take it), ``all`` every parameter of the denoiser.
    """
    groups: dict[str, list[nn.Parameter]] = {
        "all": [], "cross_attention": [], "cross_attention_kv": [], "self_attention": [], "transformer_blocks": [],
        "text_conditioning": [],
    }
    for name, param in denoiser.named_parameters():
        groups["all"].append(param)
        parts = name.split(".")
        if "attn2" in parts or parts[0] in ("class_embedding", "add_embedding"):
            groups["text_conditioning"].append(param)
        if "attn2" in parts:
            groups["cross_attention"].append(param)
            if "to_k" in parts or "to_v" in parts:
                groups["cross_attention_kv"].append(param)
        if "attn1" in parts:
            groups["self_attention"].append(param)
        if "transformer_blocks" in parts:
            groups["transformer_blocks"].append(param)
    return groups
