"""Similarity baselines of training-data attribution: each training track scored against each query by the cosine
similarity of per-item feature vectors: CLAP audio embeddings; a chosen denoiser module's activations, pooled over
space and time, at one timestep and noise shared by every item (the "LPIPS-like" model-internal similarity Choi et
al. compare unlearning with, arXiv 2506.18312); and per-item loss gradients on selected parameter groups, optionally
randomly projected (gradient cosine, a TRAK-like baseline without its kernel correction; Park et al., ICML 2023).
Features come from passes over iterables of batches, so a training set can be split across processes and the
`Features` gathered; the scores are then `cosine_scores(query.vectors, train.vectors)`, `(n_queries, n_train)`.
The baseline classes are chosen by ``class_path`` and run as a sharded ``train.py predict`` pass by
`lightning_modules.attribution.ranking.SimilarityRanking`, which gives them the model.
"""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.gradients import item
from lightning_modules.metrics.embedder import AudioEmbedder
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.passes import check_finite, measuring

SHARED_INPUTS_KEY = "attribution-similarity"  # the id whose fixed (timestep, noise) every item is measured at


class Features(NamedTuple):
    """Per-item feature vectors of a pass, in the order the items came."""

    ids: list[str]
    vectors: Tensor  # (n_items, dim) float32 on the CPU


def cosine_scores(queries: Tensor, train: Tensor, chunk_size: int = 4096) -> Tensor:
    """Cosine similarity of every query vector with every training vector.

    Args:
        queries: `(n_queries, dim)`.
        train: `(n_train, dim)`.
        chunk_size: training rows compared at a time (bounds memory).

    Returns:
        `(n_queries, n_train)` float32 in [-1, 1]; a zero vector has similarity 0 with everything.
    """
    if queries.dim() != 2 or train.dim() != 2 or queries.shape[1] != train.shape[1]:
        raise ValueError(f"Expected (n_queries, dim) and (n_train, dim) features of the same dim, got "
                         f"{tuple(queries.shape)} and {tuple(train.shape)}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
    queries = F.normalize(queries.float(), dim=1)
    return torch.cat([queries @ F.normalize(chunk.float(), dim=1).T for chunk in train.split(chunk_size)], dim=1)


def _on(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}  # type: ignore[return-value]


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


def _collect(pairs: Iterable[tuple[list[str], Tensor]]) -> Features:
    ids: list[str] = []
    vectors: list[Tensor] = []
    for batch_ids, batch_vectors in pairs:
        ids.extend(batch_ids)
        vectors.append(batch_vectors.detach().float().cpu())
    if not vectors:
        raise ValueError("No batches were given: a similarity needs at least one item.")
    return Features(ids, torch.cat(vectors))


def shared_loss_inputs(model: TextToMusicModel, batch_size: int, seed: int,
                       timestep: float | None) -> dict[str, Tensor]:
    """`loss` / `predict` keyword arguments that are the same for every item: the fixed inputs of one shared id
    (`SHARED_INPUTS_KEY`) at `seed`, repeated, with the timestep replaced by `timestep` when given."""
    inputs = model.fixed_loss_inputs([SHARED_INPUTS_KEY] * batch_size, seed)
    if timestep is not None:
        if "timesteps" not in inputs:
            raise ValueError(f"timestep={timestep} was given, but {type(model).__name__} draws no timesteps; leave "
                             "timestep unset for it.")
        inputs["timesteps"] = torch.full_like(inputs["timesteps"], timestep)
    return inputs


def clap_features(embedder: AudioEmbedder, batches: Iterable[Batch], sample_rate: int) -> Features:
    """CLAP (or any audio embedder's) embedding of each item's audio `(batch, samples)` at `sample_rate`, padding
    zeroed by the item's mask; frame-level embeddings `(batch, frames, dim)` are averaged over frames."""
    def pairs() -> Iterable[tuple[list[str], Tensor]]:
        for batch in batches:
            if "audio" not in batch:
                raise ValueError("The CLAP baseline needs each item's audio; build the dataset with audio (not only "
                                 "cached targets).")
            audio = batch["audio"] * batch["mask"] if "mask" in batch else batch["audio"]
            embeddings = embedder(audio, sample_rate)
            yield list(batch["id"]), embeddings.mean(dim=1) if embeddings.dim() == 3 else embeddings
    return _collect(pairs())


def _find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted `name`, or a ValueError listing the valid names nearby."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    parts = name.split(".")
    prefix = ""
    for depth in range(len(parts) - 1, 0, -1):  # the deepest valid prefix of the name
        if ".".join(parts[:depth]) in modules:
            prefix = ".".join(parts[:depth])
            break
    children = [f"{prefix}.{child}" if prefix else child for child, _ in modules[prefix].named_children()]
    close = difflib.get_close_matches(name, [key for key in modules if key], n=5, cutoff=0.6)
    raise ValueError(f"No module named {name!r} in {type(model).__name__}. Modules under {prefix or 'the model'!r}: "
                     f"{children}" + (f"; close matches: {close}" if close else "") + ".")


def _first_tensor(output: object) -> Tensor:
    """The main tensor of a module's output: itself, the first element of a tuple, or a model output's first field."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return _first_tensor(output[0])
    if isinstance(output, dict) and output:
        return _first_tensor(next(iter(output.values())))
    raise ValueError(f"Cannot take features from a module output of type {type(output).__name__}; choose a module "
                     "that returns a tensor.")


def activation_features(model: TextToMusicModel, module: str, batches: Iterable[Batch], *, seed: int = 0,
                        timestep: float | None = None, draws: int = 1, caption: str | None = "",
                        channel_dim: int = 1) -> Features:
    """The output of the denoiser's module `module` (dotted name, e.g. ``unet.mid_block``) for each item, captured by a
    forward hook while `model.predict` runs at inputs shared by every item (`shared_loss_inputs`), averaged over
    every axis except batch and `channel_dim`. With several `draws` (seeds ``seed .. seed + draws - 1``) the
    L2-normalised vectors of the draws are concatenated, so that cosine similarity is the mean over draws.

    Args:
        model: the text-to-music model; evaluated in eval mode without gradients, its random state left as it was.
        module: dotted name of the submodule whose output is the feature map.
        batches: the items; ``audio`` or cached ``targets``.
        seed: seed of the shared timestep and noise.
        timestep: replaces the shared drawn timestep (a low noise level keeps the features about the audio).
        draws: number of shared (timestep, noise) draws.
        caption: the caption every item is conditioned on ("" = unconditional, the features then depend on the audio
            alone); None uses each item's own caption.
        channel_dim: the feature map's channel axis (1 for UNet maps `(batch, channels, height, width)`, -1 for
            transformer tokens `(batch, tokens, channels)`).
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    target = _find_module(model, module)
    captured: list[Tensor] = []
    device = _device(model)

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        captured.append(_first_tensor(output))

    def pairs() -> Iterable[tuple[list[str], Tensor]]:
        for batch in batches:
            batch = _on(batch, device)
            size = len(batch["id"])
            captions = None if caption is None else [caption] * size
            per_draw = []
            for draw in range(draws):
                captured.clear()
                model.predict(batch, captions=captions, **shared_loss_inputs(model, size, seed + draw, timestep))
                if not captured:
                    raise ValueError(f"Module {module!r} did not run during the forward pass; choose a module of the "
                                     "denoiser.")
                features = captured[-1].float()
                if features.dim() < 2 or features.shape[0] != size:
                    raise ValueError(f"Module {module!r} returned shape {tuple(features.shape)}, not one feature map "
                                     f"per item of the batch of {size}; choose another module.")
                axis = channel_dim % features.dim()
                if axis == 0:
                    raise ValueError("channel_dim must not be the batch axis 0.")
                pooled_axes = [d for d in range(1, features.dim()) if d != axis]
                pooled = features.mean(dim=pooled_axes) if pooled_axes else features
                per_draw.append(F.normalize(pooled, dim=1))
            yield list(batch["id"]), torch.cat(per_draw, dim=1) / math.sqrt(draws)

    handle = target.register_forward_hook(hook)
    try:
        with measuring(model, device):
            return _collect(pairs())
    finally:
        handle.remove()


def _project(flat: Tensor, dim: int, seed: int, block: int = 1 << 16) -> Tensor:
    """`(batch, n)` vectors times a fixed Gaussian `(n, dim)` matrix scaled by 1/sqrt(dim), generated block by block
    from `seed` (never held whole), so every batch and process sees the same projection."""
    projected = torch.zeros(flat.shape[0], dim, dtype=torch.float32, device=flat.device)
    for index, start in enumerate(range(0, flat.shape[1], block)):
        chunk = flat[:, start : start + block]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        matrix = torch.randn(chunk.shape[1], dim, generator=generator).to(flat.device)
        projected += chunk @ matrix
    return projected / math.sqrt(dim)


def gradient_features(model: TextToMusicModel, parameter_groups: Sequence[str], batches: Iterable[Batch], *,
                      seed: int = 0, timestep: float | None = None, draws: int = 1,
                      projection_dim: int | None = None, projection_seed: int = 0) -> Features:
    """Each item's loss gradient on the parameters of `parameter_groups`, averaged over `draws` shared (timestep,
    noise) draws (`shared_loss_inputs`, seeds ``seed .. seed + draws - 1``), flattened, and projected to
    `projection_dim` by a fixed Gaussian matrix from `projection_seed` when given (Johnson-Lindenstrauss: cosines are
    kept approximately while memory is bounded). One backward pass per item and draw; the model is left in its own
    train / eval mode, random state and ``requires_grad`` flags.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    if projection_dim is not None and projection_dim < 1:
        raise ValueError(f"projection_dim must be at least 1 (or None for no projection), got {projection_dim}.")
    parameters = model.select_parameters(parameter_groups)
    device = _device(model)

    def pairs() -> Iterable[tuple[list[str], Tensor]]:
        for batch in batches:
            batch = _on(batch, device)
            rows, losses = [], []
            for index in range(len(batch["id"])):
                one = item(batch, index)
                total = torch.zeros(sum(p.numel() for p in parameters), dtype=torch.float32, device=device)
                for draw in range(draws):
                    loss = model.loss(one, **shared_loss_inputs(model, 1, seed + draw, timestep)).sum()
                    losses.append(loss.detach())
                    grads = torch.autograd.grad(loss, parameters)
                    total += torch.cat([grad.float().flatten() for grad in grads])
                rows.append(total / draws)
            flat = torch.stack(rows)
            # once per batch (one device sync): a NaN loss or gradient would give NaN cosine scores
            check_finite(torch.stack(losses).view(-1, draws), list(batch["id"]), "per-item loss of the gradient "
                         "similarity pass")
            check_finite(flat, list(batch["id"]), "per-item loss gradient of the gradient similarity pass")
            yield list(batch["id"]), flat if projection_dim is None else _project(flat, projection_dim, projection_seed)

    flags = [param.requires_grad for param in parameters]
    try:
        for param in parameters:
            param.requires_grad_(True)
        with measuring(model, device, grad=True):
            return _collect(pairs())
    finally:
        for param, flag in zip(parameters, flags, strict=True):
            param.requires_grad_(flag)


class SimilarityBaseline(nn.Module, ABC):
    """A similarity baseline: per-item `features` of batches under a model, and `scores` of queries against training
    items. The model is given to each call, never held, so a pass's config names it once (`SimilarityRanking`); a
    baseline is an `nn.Module` so that what it does hold (an embedder) moves to the pass's device."""

    def check(self, model: TextToMusicModel) -> None:
        """Raise a ValueError when the baseline's settings do not fit `model` (a module or group name); the pass
        calls it at construction, before any data is read."""

    @abstractmethod
    def features(self, batches: Iterable[Batch], model: TextToMusicModel) -> Features:
        """Feature vectors `(n_items, dim)` of the items of `batches` under `model`, in order."""

    def scores(self, queries: Iterable[Batch], train: Iterable[Batch], model: TextToMusicModel) -> Tensor:
        """`(n_queries, n_train)` cosine similarities, rows in the order of `queries`' items, columns in the order of
        `train`'s (higher = more similar)."""
        return cosine_scores(self.features(queries, model).vectors, self.features(train, model).vectors)


class ClapSimilarity(SimilarityBaseline):
    """CLAP audio-embedding cosine similarity (the text-to-music model plays no part).

    Args:
        embedder: the audio embedder (e.g. `lightning_modules.metrics.ClapEmbedder`).
        sample_rate: the rate of the batches' audio in Hz; None takes the model's (the rate its data is loaded at).
    """

    def __init__(self, embedder: AudioEmbedder, sample_rate: int | None = None) -> None:
        super().__init__()
        if sample_rate is not None and sample_rate < 1:
            raise ValueError(f"sample_rate must be a positive number of Hz (or None for the model's), got "
                             f"{sample_rate}.")
        self.embedder = embedder
        self.sample_rate = sample_rate

    def features(self, batches: Iterable[Batch], model: TextToMusicModel) -> Features:
        sample_rate = model.sample_rate if self.sample_rate is None else self.sample_rate
        return clap_features(self.embedder, batches, sample_rate)


class ActivationSimilarity(SimilarityBaseline):
    """Model-internal activation similarity ("LPIPS-like"): arguments as in `activation_features`."""

    def __init__(self, module: str, seed: int = 0, timestep: float | None = None, draws: int = 1,
                 caption: str | None = "", channel_dim: int = 1) -> None:
        super().__init__()
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}.")
        self.module = module
        self.options = {"seed": seed, "timestep": timestep, "draws": draws, "caption": caption,
                        "channel_dim": channel_dim}

    def check(self, model: TextToMusicModel) -> None:
        _find_module(model, self.module)

    def features(self, batches: Iterable[Batch], model: TextToMusicModel) -> Features:
        return activation_features(model, self.module, batches, **self.options)  # type: ignore[arg-type]


class GradientSimilarity(SimilarityBaseline):
    """Per-item loss-gradient cosine similarity: arguments as in `gradient_features`."""

    def __init__(self, parameter_groups: Sequence[str] = ("all",), seed: int = 0, timestep: float | None = None,
                 draws: int = 1, projection_dim: int | None = None, projection_seed: int = 0) -> None:
        super().__init__()
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}.")
        if projection_dim is not None and projection_dim < 1:
            raise ValueError(f"projection_dim must be at least 1 (or None for no projection), got {projection_dim}.")
        self.parameter_groups = list(parameter_groups)
        self.options = {"seed": seed, "timestep": timestep, "draws": draws, "projection_dim": projection_dim,
                        "projection_seed": projection_seed}

    def check(self, model: TextToMusicModel) -> None:
        model.select_parameters(self.parameter_groups)

    def features(self, batches: Iterable[Batch], model: TextToMusicModel) -> Features:
        return gradient_features(model, self.parameter_groups, batches, **self.options)  # type: ignore[arg-type]
