"""The `TextToMusicModel` contract: the only way unlearning methods, metrics and attribution talk to a model.

A backend wraps one model family (the built-in toy model, diffusers latent diffusion models, MusicGen) behind a
per-sample training loss with caller-controlled randomness, seeded generation, named parameter groups and saving in
the family's native format. A method written once against this class works on every backend.
"""

from __future__ import annotations

import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple, NotRequired, TypedDict

import torch
from torch import Tensor, nn

PARAMETER_GROUPS = ("all", "cross_attention", "cross_attention_kv", "self_attention", "transformer_blocks")


class Batch(TypedDict):
    """A collated batch of audio-text items, as every DataModule of this package yields it."""

    id: list[str]
    caption: list[str]
    mask: Tensor  # (batch, samples) bool: True where the audio is real, False where it is padding
    audio: NotRequired[Tensor]  # (batch, samples), mono, at the model's sample rate; absent when `targets` suffice
    targets: NotRequired[Tensor]  # (batch, *target_shape): `encode_audio` output, when read from a cache
    group: NotRequired[list[str]]


def check_captions(batch: Batch, captions: Sequence[str] | None) -> list[str]:
    """`captions` (default the batch's own) after checking there is one per item."""
    if captions is None:
        return list(batch["caption"])
    if len(captions) != len(batch["caption"]):
        raise ValueError(f"Got {len(captions)} captions for a batch of {len(batch['caption'])} items; give one "
                         "caption per item.")
    return list(captions)


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def check_pretrained(pretrained: str | os.PathLike, marker: str, example: str) -> str:
    """`pretrained` as a library's ``from_pretrained`` takes it, after checking it is a checkpoint folder holding
    `marker` (``model_index.json`` for diffusers pipelines, ``config.json`` for transformers models) or a hub id.

    A name of the form ``owner/name`` whose ``owner`` is an existing local folder counts as a local path, so a
    mistyped ``checkpoints/my-model`` fails here instead of at the hub.

    Raises:
        FileNotFoundError: a folder without `marker`, or a path that is neither a folder nor a hub id.
    """
    text = str(pretrained)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            raise FileNotFoundError(f"{path} has no {marker}: give a folder written by save_pretrained (the "
                                    f"library's native format) or a hub id such as {example}.")
        return str(path)
    if not HUB_ID.match(text) or path.parent.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {path} not found (relative paths are taken from {Path.cwd()}); "
                                f"give an existing folder or a hub id such as {example}.")
    return text


def prompt_seeds(prompts: Sequence[str], seed: int | Sequence[int]) -> list[int]:
    """One generation seed per prompt: ``seed + i`` for prompt i, or the given list after checking its length."""
    seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
    if len(seeds) != len(prompts):
        raise ValueError(f"Got {len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt.")
    return seeds


class Prediction(NamedTuple):
    """What `TextToMusicModel.predict` returns."""

    output: Tensor  # the network's raw output (diffusion: the denoiser's prediction)
    target: Tensor  # what the training loss compares it with (diffusion: noise, velocity or sample)
    weight: Tensor  # broadcastable to the output: 1 where the audio is real, 0 on padding


class TextToMusicModel(nn.Module, ABC):
    """A text-to-music model seen through the operations unlearning and attribution need.

    Backends set `sample_rate` (Hz) and `num_samples` (the clip length they train on) and implement the abstract
    methods. The model is a plain `nn.Module`: Lightning lives in the modules that train it.
    """

    sample_rate: int
    num_samples: int
    targets_backend: str | None = None  # whose targets `encode_audio` computes, when not this class's (a subclass's)

    @abstractmethod
    def encode_audio(self, waveform: Tensor, mask: Tensor) -> Tensor:
        """Training targets (latents, mel patches or codec codes) of `(batch, samples)` audio; cacheable per item."""

    def with_targets(self, batch: Batch, batch_size: int | None = None) -> Batch:
        """`batch` with its ``targets``: `encode_audio` of its audio, `batch_size` items at a time (all at once when
        None), without gradients (no parameter group holds the encoder). A pass that takes the loss of the same items
        at several draws encodes them once this way, not once per draw; a batch that has targets (read from a target
        cache) is returned as it is."""
        if "targets" in batch:
            return batch
        size = len(batch["audio"])
        step = size if batch_size is None else max(1, batch_size)
        with torch.no_grad():
            targets = torch.cat([self.encode_audio(batch["audio"][start: start + step],
                                                   batch["mask"][start: start + step])
                                 for start in range(0, size, step)])
        return {**batch, "targets": targets}  # type: ignore[return-value]

    def audio_encoder(self) -> nn.Module | None:
        """The module(s) `encode_audio` runs (VAE, codec, mel front end): their weights key the target cache."""
        return None

    def targets_settings(self) -> dict:
        """Settings other than the encoder's weights that change what `encode_audio` returns (e.g. normalisation)."""
        return {}

    def targets_key(self) -> str:
        """Names what `encode_audio` returns: the backend (`targets_backend`, default the class's name), its audio
        format, its settings and a digest of its encoder's weights, so that cached targets are only read by a model
        that would compute the same ones."""
        backend = self.targets_backend or type(self).__name__
        digest = hashlib.blake2b(digest_size=10)
        digest.update(repr((backend, self.sample_rate, self.num_samples,
                            sorted(self.targets_settings().items()))).encode())
        encoder = self.audio_encoder()
        if encoder is not None:
            for name, tensor in sorted(encoder.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        return f"{backend.lower()}-{digest.hexdigest()}"

    @abstractmethod
    def encode_text(self, captions: Sequence[str]) -> dict[str, Tensor]:
        """Conditioning for `captions`, as the backend's denoiser or decoder consumes it."""

    @abstractmethod
    def predict(
        self,
        batch: Batch,
        *,
        captions: Sequence[str] | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Prediction:
        """The network's output for the batch's audio under `captions` (default the batch's own), with the target
        the training loss compares it with. The empty caption is the unconditional input, as classifier-free
        guidance uses it.

        Args:
            batch: the items; ``targets`` is used instead of encoding ``audio`` when present.
            captions: one caption per item, replacing the batch's (e.g. a concept to erase, an anchor, "").
            timesteps: `(batch,)` diffusion timesteps; drawn from `generator` when None.
            noise: noise shaped like the targets; drawn from `generator` when None.
            generator: source of the randomness not given explicitly; the draws do not depend on `captions`, so
                two calls with equally seeded generators see the same noisy input.
        """

    @abstractmethod
    def criterion(self, output: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        """The per-item training criterion `(batch,)` between an `output` and a `target` as `predict` returns them
        (diffusion: masked mean squared error). `target` may also be another output, e.g. a frozen model's or a
        guided combination of outputs, as distillation methods (ESD, Concept Ablation) use it."""

    def loss(
        self,
        batch: Batch,
        *,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        reduction: Literal["none", "mean"] = "none",
    ) -> Tensor:
        """The training objective of each item, `(batch,)` (or its mean), honouring the validity mask:
        ``criterion(*predict(batch, ...))``.

        Args:
            batch: the items; ``targets`` is used instead of encoding ``audio`` when present.
            timesteps: `(batch,)` diffusion timesteps; drawn from `generator` when None.
            noise: noise shaped like the targets; drawn from `generator` when None.
            generator: source of the randomness not given explicitly.
            reduction: "none" for per-item losses, "mean" for their mean.

        The same batch, timesteps and noise give the same losses bit for bit.
        """
        losses = self.criterion(*self.predict(batch, timesteps=timesteps, noise=noise, generator=generator))
        return losses.mean() if reduction == "mean" else losses

    def fixed_loss_inputs(self, ids: Sequence[str], seed: int = 0) -> dict[str, Tensor]:
        """`loss` keyword arguments (timesteps, noise) fixed per item id, so that losses compare across runs.

        Deterministic backends (autoregressive cross-entropy) need none and return an empty dict.
        """
        return {}

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[str],
        *,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        duration: float | None = None,
    ) -> Tensor:
        """Audio for `prompts`, `(batch, channels, samples)` at `sample_rate`; the same seed gives the same audio."""

    @abstractmethod
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by name; at least the names in `PARAMETER_GROUPS` (or the backend's equivalent)."""

    @abstractmethod
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save in the backend's native format (a diffusers or transformers folder)."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | os.PathLike) -> TextToMusicModel:
        """Load what `save_pretrained` wrote (or a public checkpoint of the family)."""

    def select_parameters(self, names: Sequence[str]) -> list[nn.Parameter]:
        """The union of the named parameter groups, each parameter once, in a stable order.

        Raises:
            ValueError: a name is not one of this backend's groups (the message lists them).
        """
        groups = self.parameter_groups()
        unknown = [name for name in names if name not in groups]
        if unknown:
            raise ValueError(f"Unknown parameter group(s) {unknown} for {type(self).__name__}; "
                             f"known: {sorted(groups)}.")
        if not names:
            raise ValueError(f"No parameter group selected: name at least one of {sorted(groups)}.")
        seen: set[int] = set()
        selected = []
        for name in names:
            for param in groups[name]:
                if id(param) not in seen:
                    seen.add(id(param))
                    selected.append(param)
        return selected

    def parameter_names(self, parameters: Sequence[nn.Parameter]) -> list[str]:
        """The names (as in ``named_parameters()``) of `parameters`, in their order.

        Raises:
            ValueError: a parameter is not this model's.
        """
        names = {id(param): name for name, param in self.named_parameters()}
        missing = [index for index, param in enumerate(parameters) if id(param) not in names]
        if missing:
            raise ValueError(f"Parameters at positions {missing[:5]} are not parameters of {type(self).__name__}.")
        return [names[id(param)] for param in parameters]
