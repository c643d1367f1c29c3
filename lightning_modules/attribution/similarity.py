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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.attribution_store import FisherFile
from lightning_modules.attribution.settings import AscentSettings
from lightning_modules.gradients import item
from lightning_modules.io import recorded_sha256
from lightning_modules.metrics.embedder import AudioEmbedder
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.passes import check_finite, measuring

if TYPE_CHECKING:
    from lightning_modules.attribution.query import FisherAscent

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
    chunks = [queries @ F.normalize(chunk.float(), dim=1).T for chunk in train.split(chunk_size)]
    return torch.cat(chunks, dim=1) if chunks else queries.new_zeros(len(queries), 0)


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
            batch = model.with_targets(_on(batch, device))  # each item encoded once, not once per draw
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


PROJECTIONS = ("gaussian", "sketch")


def _project(flat: Tensor, dim: int, seed: int, kind: str = "gaussian", block: int = 1 << 16) -> Tensor:
    """`(batch, n)` vectors mapped to `(batch, dim)` by a fixed random linear map from `seed`, generated block by
    block (never held whole), so every batch and process sees the same map; inner products are kept in expectation.

    - "gaussian": a Gaussian matrix scaled by 1/sqrt(dim) (Johnson-Lindenstrauss, TRAK's projection); costs
      ``n * dim`` random numbers per call (about 13 s per batch for 2.2M weights at dim 1024 on one CPU core).
    - "sketch": a count sketch (each coordinate added, with a random sign, to one random output coordinate; Charikar
      et al. 2002), the sparse Johnson-Lindenstrauss map: ``n`` random numbers per call, whatever `dim`.
    """
    if kind not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}.")
    projected = torch.zeros(flat.shape[0], dim, dtype=torch.float32, device=flat.device)
    for index, start in enumerate(range(0, flat.shape[1], block)):
        chunk = flat[:, start : start + block]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        if kind == "gaussian":
            projected += chunk @ torch.randn(chunk.shape[1], dim, generator=generator).to(flat.device)
        else:
            bucket = torch.randint(dim, (chunk.shape[1],), generator=generator).to(flat.device)
            sign = torch.randint(2, (chunk.shape[1],), generator=generator).to(flat.device) * 2.0 - 1.0
            projected.index_add_(1, bucket, chunk * sign)
    return projected / math.sqrt(dim) if kind == "gaussian" else projected


FUNCTIONS = ("loss", "output_norm")


def _function_of(model: TextToMusicModel, one: Batch, inputs: dict[str, Tensor], function: str) -> Tensor:
    """The scalar whose gradient is an item's feature: its training loss, or (D-TRAK's best variant, Zheng et al.
    2024) the squared norm of the network's output, ``criterion(output, 0)``, the masked mean of the output squared."""
    if function == "loss":
        return model.loss(one, **inputs).sum()
    output, _, weight = model.predict(one, **inputs)
    return model.criterion(output, torch.zeros_like(output), weight).sum()


def gradient_features(model: TextToMusicModel, parameter_groups: Sequence[str], batches: Iterable[Batch], *,
                      seed: int = 0, timestep: float | None = None, draws: int = 1,
                      projection_dim: int | None = None, projection_seed: int = 0, projection: str = "gaussian",
                      function: str = "loss", shared_draws: bool = True,
                      preconditioner: Sequence[Tensor] | None = None) -> Features:
    """Each item's gradient of `function` (`_function_of`: its loss, or D-TRAK's output norm) on the parameters of
    `parameter_groups`, averaged over `draws` (timestep, noise) draws (seeds ``seed .. seed + draws - 1``; shared by
    every item, `shared_loss_inputs`, or with ``shared_draws=False`` each item's own, ``fixed_loss_inputs([id], ...)``,
    as the loss sweeps of attribution by unlearning draw them), multiplied elementwise by `preconditioner` (one
    tensor per parameter, e.g. ``1 / sqrt(N F + eps)``) when given, flattened, and projected to `projection_dim` by
    `_project` (`projection`, from `projection_seed`) when given. One backward pass per item and draw; the model is
    left in its own train / eval mode, random state and ``requires_grad`` flags.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    if projection_dim is not None and projection_dim < 1:
        raise ValueError(f"projection_dim must be at least 1 (or None for no projection), got {projection_dim}.")
    if function not in FUNCTIONS:
        raise ValueError(f"function must be one of {FUNCTIONS}, got {function!r}.")
    parameters = model.select_parameters(parameter_groups)
    if preconditioner is not None and [p.shape for p in preconditioner] != [p.shape for p in parameters]:
        raise ValueError("The preconditioner needs one tensor per selected parameter, of its shape.")
    device = _device(model)
    scale = None if preconditioner is None else torch.cat([p.to(device).float().flatten() for p in preconditioner])

    def inputs(one: Batch, draw: int) -> dict[str, Tensor]:
        if shared_draws:
            return shared_loss_inputs(model, 1, seed + draw, timestep)
        return model.fixed_loss_inputs(list(one["id"]), seed + draw)

    def pairs() -> Iterable[tuple[list[str], Tensor]]:
        for batch in batches:
            batch = model.with_targets(_on(batch, device))  # each item encoded once, not once per draw
            rows, values = [], []
            for index in range(len(batch["id"])):
                one = item(batch, index)
                total = torch.zeros(sum(p.numel() for p in parameters), dtype=torch.float32, device=device)
                for draw in range(draws):
                    value = _function_of(model, one, inputs(one, draw), function)
                    values.append(value.detach())
                    grads = torch.autograd.grad(value, parameters)
                    total += torch.cat([grad.float().flatten() for grad in grads])
                rows.append(total / draws if scale is None else total * scale / draws)
            flat = torch.stack(rows)
            # once per batch (one device sync): a NaN loss or gradient would give NaN scores
            check_finite(torch.stack(values).view(-1, draws), list(batch["id"]), f"per-item {function} of the "
                         "gradient pass")
            check_finite(flat, list(batch["id"]), f"per-item {function} gradient of the gradient pass")
            yield list(batch["id"]), (flat if projection_dim is None
                                      else _project(flat, projection_dim, projection_seed, projection))

    flags = [param.requires_grad for param in parameters]
    try:
        for param in parameters:
            param.requires_grad_(True)
        with measuring(model, device, grad=True):
            return _collect(pairs())
    finally:
        for param, flag in zip(parameters, flags, strict=True):
            param.requires_grad_(flag)


def _unreduced(value: Tensor) -> Tensor:
    return value


class SimilarityBaseline(nn.Module, ABC):
    """A similarity baseline: per-item `features` of batches under a model, and `scores` of queries against training
    items (`match` of their features: the cosine unless a baseline says otherwise). The model is given to each call,
    never held, so a pass's config names it once (`SimilarityRanking`); a baseline is an `nn.Module` so that what it
    does hold (an embedder) moves to the pass's device."""

    score_label = "cosine similarity"

    def check(self, model: TextToMusicModel) -> None:
        """Raise a ValueError when the baseline's settings do not fit `model` (a module or group name); the pass
        calls it at construction, before any data is read."""

    @abstractmethod
    def features(self, batches: Iterable[Batch], model: TextToMusicModel) -> Features:
        """Feature vectors `(n_items, dim)` of the items of `batches` under `model`, in order."""

    def feature_settings(self) -> dict[str, Any]:
        """What the baseline's features depend on besides the model and the item, for a `FeatureStore`'s recipe.

        Raises:
            ValueError: the baseline keeps no feature store.
        """
        raise ValueError(f"{type(self).__name__} keeps no feature store; the store holds the gradient baselines' "
                         "features (GradientSimilarity, TrakScores, FirstOrderUnlearning).")

    def query_features(self, batches: Iterable[Batch], model: TextToMusicModel) -> Features:
        """Feature vectors `(n_queries, dim)` of the queries of `batches`: their `features`, unless the baseline sees
        a query otherwise (`FirstOrderUnlearning` with a `step`)."""
        return self.features(batches, model)

    def match(self, queries: Tensor, train: Tensor, total: Callable[[Tensor], Tensor] = _unreduced) -> Tensor:
        """Scores `(n_queries, n_train)` of query features against training features (higher = the track counts
        more for the query). `train` may be one process's share of the training set: `total` sums a tensor over
        the processes (the identity in one process), for a score that depends on the whole set."""
        return cosine_scores(queries, train)

    def scores(self, queries: Iterable[Batch], train: Iterable[Batch], model: TextToMusicModel) -> Tensor:
        """`(n_queries, n_train)` scores, rows in the order of `queries`' items, columns in the order of `train`'s."""
        return self.match(self.query_features(queries, model).vectors, self.features(train, model).vectors)


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
    """Per-item gradient cosine similarity: arguments as in `gradient_features`."""

    def __init__(self, parameter_groups: Sequence[str] = ("all",), seed: int = 0, timestep: float | None = None,
                 draws: int = 1, projection_dim: int | None = None, projection_seed: int = 0,
                 projection: str = "gaussian", function: str = "loss") -> None:
        super().__init__()
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}.")
        if projection_dim is not None and projection_dim < 1:
            raise ValueError(f"projection_dim must be at least 1 (or None for no projection), got {projection_dim}.")
        for name, value, allowed in (("projection", projection, PROJECTIONS), ("function", function, FUNCTIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
        self.parameter_groups = list(parameter_groups)
        self.options = {"seed": seed, "timestep": timestep, "draws": draws, "projection_dim": projection_dim,
                        "projection_seed": projection_seed, "projection": projection, "function": function}

    def check(self, model: TextToMusicModel) -> None:
        model.select_parameters(self.parameter_groups)
        if self.options["function"] == "output_norm" and not model.fixed_loss_inputs(["check"], 0):
            raise ValueError(f"function 'output_norm' (D-TRAK) is the norm of a diffusion model's output at a drawn "
                             f"timestep; {type(model).__name__} draws none: use function 'loss'.")

    def features(self, batches: Iterable[Batch], model: TextToMusicModel) -> Features:
        return gradient_features(model, self.parameter_groups, batches, **self.options)  # type: ignore[arg-type]

    def feature_settings(self) -> dict[str, Any]:
        """The gradients' settings (a TRAK store serves any damping: that is in `match` only)."""
        return {"features": "GradientSimilarity", "parameter_groups": self.parameter_groups, **self.options}


class TrakScores(GradientSimilarity):
    """TRAK (Park et al., ICML 2023) on a diffusion model, and D-TRAK (Zheng et al., ICLR 2024): projected
    per-item gradients φ (`gradient_features`, every item at the same `draws` shared draws), scored
    ``φ(q)ᵀ (ΦᵀΦ + λI)⁻¹ φ(z)`` with Φ the training set's projected gradients; λ is `damping` times the mean
    eigenvalue of ΦᵀΦ. `function` "loss" is TRAK on the training loss; "output_norm", the squared norm of the
    denoiser's output, is the variant D-TRAK found to attribute best. Both need `projection_dim` (the kernel is
    `projection_dim` square); "sketch" projects all of a model's weights at the cost of one pass over them.
    Other arguments as in `gradient_features`.
    """

    score_label = "TRAK score"

    def __init__(self, parameter_groups: Sequence[str] = ("all",), function: str = "output_norm", seed: int = 0,
                 timestep: float | None = None, draws: int = 10, projection_dim: int = 2048, projection_seed: int = 0,
                 projection: str = "sketch", damping: float = 1e-3) -> None:
        if projection_dim is None or damping < 0:
            raise ValueError(f"TRAK needs a projection_dim (its kernel is that size) and a non-negative damping, got "
                             f"{projection_dim} and {damping}.")
        super().__init__(parameter_groups, seed, timestep, draws, projection_dim, projection_seed, projection, function)
        self.damping = damping

    def match(self, queries: Tensor, train: Tensor, total: Callable[[Tensor], Tensor] = _unreduced) -> Tensor:
        train = train.double()
        gram = total(train.T @ train)  # ΦᵀΦ over the whole training set
        ridge = self.damping * torch.trace(gram) / gram.shape[0]
        kernel = gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return (train @ torch.linalg.solve(kernel, queries.double().T)).T.float()


class FirstOrderUnlearning(GradientSimilarity):
    """The first-order estimate of attribution by unlearning's score, with no sweep: one Fisher-preconditioned
    ascent step on the query, ``lr ∇L(q) / (N F + eps)`` (`FisherAscent`), changes a training track's loss by about
    ``lr ∇L(z)ᵀ ∇L(q) / (N F + eps)``, so that inner product ranks the tracks as the unlearning score does for a
    small step. Each item's gradient is taken at its own `draws` draws (as the loss sweeps measure it), scaled by
    ``1 / sqrt(N F + eps)`` and projected (`projection_dim`; None keeps the full gradients); the score is the inner
    product of the projected vectors.

    With `step`, a query's side is not its gradient but the update ``Δθ(q)`` that unlearning it with those ascent
    settings makes (the query alone, from the model's weights, which are put back), scaled by ``sqrt(N F + eps)``:
    the score is then ``∇L(z)ᵀ Δθ(q)``, the first-order prediction, in loss units, of the rise in track z's loss that
    exactly that unlearning causes, the query's own draws and every step included. It is the cascade's cheap score
    (``configs/attribution/cascade_scores.yaml``): the full sweep's ranking is a function of that update, so its
    linearisation finds the sweep's top tracks far more often than the gradient at other draws does (issue 20). The
    training side, and so a gradient store, is the same either way.

    Args:
        fisher_path: the training set's Fisher (``configs/attribution/fisher.yaml``), computed at the model's weights
            and covering `parameter_groups`.
        eps: as in `AscentSettings`.
        step: the ascent whose update the queries' features are (the attribution pass's ``ascent``); None takes
            their gradients.
        Others: as in `gradient_features`.
    """

    score_label = "first-order unlearning score"

    def __init__(self, fisher_path: str, parameter_groups: Sequence[str] = ("all",), seed: int = 0, draws: int = 20,
                 projection_dim: int | None = 4096, projection_seed: int = 0, projection: str = "sketch",
                 eps: float = 1e-12, step: AscentSettings | None = None) -> None:
        super().__init__(parameter_groups, seed, None, draws, projection_dim, projection_seed, projection, "loss")
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}.")
        self.fisher_path = fisher_path
        self.eps = eps
        self.step = step
        if step is not None:
            self.score_label = "predicted loss rise after unlearning"

    def _ascent(self, model: TextToMusicModel) -> FisherAscent:
        """The ascent of `step` (the default settings without one) over the selected parameters: it reads the Fisher
        once for both the scaling and the queries' unlearning."""
        from lightning_modules.attribution.query import FisherAscent  # the attribution pass imports this module

        names = model.parameter_names(model.select_parameters(self.parameter_groups))
        return FisherAscent(names, self.fisher_path, *([self.step] if self.step is not None else []))

    def _denominators(self, model: TextToMusicModel, ascent: FisherAscent) -> list[Tensor]:
        """``N F + eps`` of each selected parameter."""
        fisher, count = ascent.fisher(model)
        return [count * value.float() + self.eps for value in fisher]

    def features(self, batches: Iterable[Batch], model: TextToMusicModel) -> Features:
        denominators = self._denominators(model, self._ascent(model))
        return gradient_features(model, self.parameter_groups, batches, shared_draws=False,
                                 preconditioner=[value.rsqrt() for value in denominators],
                                 **self.options)  # type: ignore[arg-type]

    def query_features(self, batches: Iterable[Batch], model: TextToMusicModel) -> Features:
        """With `step`: each query's unlearning update times ``sqrt(N F + eps)``, projected as the training side.
        The update is the difference of the weights before and after, as the loss sweeps load them."""
        if self.step is None:
            return self.features(batches, model)
        from lightning_modules.attribution.sweep import set_weights

        ascent = self._ascent(model)
        names, denominators = ascent.names, self._denominators(model, ascent)
        device = _device(model)
        scale = torch.cat([value.to(device).sqrt().flatten() for value in denominators])
        named = dict(model.named_parameters())
        base = {name: named[name].detach().clone() for name in names}
        dim, seed, kind = (self.options[key] for key in ("projection_dim", "projection_seed", "projection"))

        def pairs() -> Iterable[tuple[list[str], Tensor]]:
            for batch in batches:
                batch = _on(batch, device)
                rows = []
                for index in range(len(batch["id"])):
                    changed, _ = ascent.unlearn(model, item(batch, index))
                    rows.append(scale * torch.cat([(changed[name].to(device).float() - value.float()).flatten()
                                                   for name, value in base.items()]))
                    set_weights(model, base)
                flat = torch.stack(rows)
                check_finite(flat, list(batch["id"]), "unlearning update of the query")
                yield list(batch["id"]), flat if dim is None else _project(flat, dim, seed, kind)

        try:
            return _collect(pairs())
        finally:
            set_weights(model, base)

    def feature_settings(self) -> dict[str, Any]:
        """The gradients' settings, each item at its own draws, and the Fisher that scales them (the digest its file
        records: the file is checked against it when the features are computed)."""
        return {**super().feature_settings(), "features": "FirstOrderUnlearning", "eps": self.eps,
                "fisher": recorded_sha256(self.fisher_path, FisherFile.WHAT, FisherFile.REMEDY)}

    def match(self, queries: Tensor, train: Tensor, total: Callable[[Tensor], Tensor] = _unreduced) -> Tensor:
        return queries.double().matmul(train.double().T).float()
