"""`FrechetAudioDistance`: the Fréchet distance between Gaussians fitted to embeddings of reference and generated audio,
as a torchmetrics Metric modelled on torchmetrics' FrechetInceptionDistance. Kilgour et al., "Fréchet Audio Distance: A
Metric for Evaluating Music Enhancement Algorithms", Interspeech 2019; FAD-infinity from Gui et al., "Adapting Fréchet
Audio Distance for Generative Music Evaluation", ICASSP 2024.

The reference (real) side is float64 sums of embeddings and of their outer products, reduced with ``sum`` across
processes; it can be frozen once, kept across resets and saved to a file, so a reference set is embedded once for every
checkpoint and run that is compared with it. The generated side keeps each clip's embeddings (`PerItemMetric`), so the
value can be bootstrapped over clips against the fixed reference; both are the same on any number of devices.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from lightning_modules.io import TensorField, cache_key, load_verified, save_verified
from lightning_modules.metrics.embedder import AudioEmbedder, embed_or_given
from lightning_modules.metrics.functional import (
    Samples,
    frechet_distance_infinity,
    frechet_distance_to_embeddings,
    gaussian_statistics,
    psd_sqrt,
)
from lightning_modules.metrics.per_item import PerItemMetric

STATISTICS = ("sum", "outer_sum", "count")
REFERENCE_STRUCTURE = {"sum": TensorField(ndim=1, dtype=torch.float64, finite=True),
                       "outer_sum": TensorField(ndim=2, dtype=torch.float64, finite=True),
                       "count": TensorField(ndim=0, dtype=torch.float64, finite=True), "embedder": str}


def reference_key(embedder: AudioEmbedder, sample_rate: int, description: object) -> str:
    """A file-name-safe key of reference statistics: the embedder's identity, the audio's sample rate and a JSON-able
    `description` of the reference set (e.g. its items' ids, paths, sizes and crops)."""
    return cache_key(embedder.name, sample_rate, description)


def reference_statistics(embeddings: Tensor) -> dict[str, Tensor]:
    """FAD reference statistics (``sum``, ``outer_sum``, ``count``) of `(items, dim)` or `(items, frames, dim)`
    embeddings, every frame a sample."""
    rows = embeddings.reshape(-1, embeddings.shape[-1]).double()
    return {"sum": rows.sum(0), "outer_sum": rows.T @ rows, "count": torch.tensor(float(len(rows)),
                                                                                   dtype=torch.float64)}


class FrechetAudioDistance(PerItemMetric):
    """FAD between the audio given with ``real=True`` (or frozen reference statistics) and with ``real=False``.

    Args:
        embedder: the feature extractor (CLAP, VGGish, PANN, EnCodec, ...); frame-level embeddings
            `(batch, frames, dim)` count every frame as a sample, as FAD toolkits do (and a resample draws clips).
    """

    higher_is_better = False
    fields = ("embedding",)
    biased_under_resampling = True  # fewer distinct clips in a resample: a larger bias (benchmarks/sample_size.py)
    batched_statistic = True
    minimum = 0.0

    def __init__(self, embedder: AudioEmbedder, **kwargs) -> None:
        super().__init__(**kwargs)
        self.embedder = embedder.eval()
        self._reference: dict[str, Tensor] | None = None
        self._moments: tuple[Tensor, Tensor, Tensor] | None = None
        dim = embedder.dim
        self.add_state("real_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("real_outer_sum", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("real_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, audio: Tensor | None = None, sample_rate: int | None = None, real: bool = False, *,
               embeddings: Tensor | None = None, index: Tensor | None = None) -> None:
        """Add `(batch, samples)` or `(batch, channels, samples)` audio at `sample_rate` to the real (reference) or
        generated set, or `embeddings` `(batch, dim)` / `(batch, frames, dim)` already computed by this embedder;
        `index` places generated clips (`PerItemMetric`)."""
        embeddings = embed_or_given(self.embedder, audio, sample_rate, embeddings)
        if real and self._reference is not None:
            raise ValueError("Reference statistics are frozen or loaded; clear_reference() before adding real audio.")
        features = embeddings.double()
        if features.shape[-1] != len(self.real_sum):
            raise ValueError(f"Expected embeddings of width {len(self.real_sum)} from {self.embedder.name}, got "
                             f"{tuple(embeddings.shape)}.")
        if not torch.isfinite(features).all():
            raise ValueError(f"The embedder {self.embedder.name} returned NaN or infinite embeddings.")
        if not real:
            self.keep(index, embedding=features)
            return
        stats = reference_statistics(features)
        self.real_sum += stats["sum"]
        self.real_outer_sum += stats["outer_sum"]
        self.real_count += stats["count"]

    def _reference_gaussian(self) -> tuple[Tensor, Tensor]:
        stats = self._reference or {name: getattr(self, f"real_{name}") for name in STATISTICS}
        if stats["count"] < 2:
            raise ValueError(f"FAD needs at least 2 reference embeddings, got {int(stats['count'])}.")
        return gaussian_statistics(stats["sum"], stats["outer_sum"], stats["count"])

    def _reference_moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, covariance and the covariance's square root of the reference; computed once for a frozen one, not
        once per bootstrap resample."""
        if self._reference is not None and self._moments is not None:
            return self._moments
        mean, cov = self._reference_gaussian()
        moments = (mean, cov, psd_sqrt(cov))
        if self._reference is not None:
            self._moments = moments
        return moments

    def statistic(self, samples: Samples) -> Tensor:
        """The Fréchet distance (float64) of the generated clips in `samples` from the reference; with a batch of
        resamples (``index`` `(resamples, clips)`), one per resample. Raises on fewer than 2 reference or generated
        embeddings."""
        mean, cov, root = self._reference_moments()
        embeddings = samples["embedding"]
        lead = samples["index"].dim() - 1 if "index" in samples else 0
        features = embeddings.reshape(*embeddings.shape[:lead], -1, embeddings.shape[-1])
        if features.shape[-2] < 2:
            raise ValueError(f"FAD needs at least 2 generated embeddings, got {features.shape[-2]}.")
        return frechet_distance_to_embeddings(mean, cov, features, root)

    def compute_infinity(self, num_points: int = 15, min_samples: int = 500, seed: int = 0) -> tuple[Tensor, Tensor]:
        """FAD-infinity and the fit's R² from the generated embeddings (call on every process under DDP)."""
        samples = self.samples()
        with self.sync_context():
            reference = self._reference_gaussian()
        embeddings = samples["embedding"].reshape(-1, samples["embedding"].shape[-1])
        generator = torch.Generator().manual_seed(seed)
        return frechet_distance_infinity(*reference, embeddings.cpu(), num_points, min_samples, generator)

    def freeze_reference(self) -> dict[str, Tensor]:
        """Turn the real audio added so far (summed over processes) into reference statistics kept across resets, and
        return them (call on every process under DDP)."""
        with self.sync_context():
            stats = {name: getattr(self, f"real_{name}").clone() for name in STATISTICS}
        self.set_reference(stats)
        return stats

    def set_reference(self, stats: dict[str, Tensor]) -> None:
        """Use `stats` (``sum``, ``outer_sum``, ``count``, as from `freeze_reference` or `load_reference`) as the
        reference statistics, whatever real audio was added; they survive `reset()`."""
        missing = set(STATISTICS) - set(stats)
        if missing:
            raise ValueError(f"Reference statistics lack {sorted(missing)}; expected {list(STATISTICS)}.")
        if stats["sum"].shape != self.real_sum.shape:
            raise ValueError(f"Reference statistics of width {tuple(stats['sum'].shape)} do not fit embeddings of "
                             f"width {len(self.real_sum)} from {self.embedder.name}.")
        self._reference = {name: stats[name].to(self.real_count.device, torch.float64) for name in STATISTICS}
        self._moments = None
        self._computed = None  # torchmetrics caches compute(); the reference it used is gone
        self.real_count.zero_(), self.real_sum.zero_(), self.real_outer_sum.zero_()

    def clear_reference(self) -> None:
        self._reference = None
        self._moments = None
        self._computed = None

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    def save_reference(self, path: str | os.PathLike) -> None:
        """Write the frozen reference statistics to `path` atomically with their digest (call on one process)."""
        if self._reference is None:
            raise ValueError("No reference statistics to save: call freeze_reference() or set_reference() first.")
        save_verified({name: tensor.cpu() for name, tensor in self._reference.items()} | {"embedder":
                      self.embedder.name}, Path(path))

    def load_reference(self, path: str | os.PathLike) -> None:
        """Read reference statistics written by `save_reference`; the file must come from the same embedder.

        Raises:
            CorruptFileError: the file fails verification (digest, structure, finite float64 statistics).
        """
        stats = load_verified(path, "FAD reference statistics", "delete it: the evaluation embeds the reference audio "
                              "again and rewrites it", REFERENCE_STRUCTURE)
        if stats.get("embedder") != self.embedder.name:
            raise ValueError(f"Reference statistics {path} were computed with embedder {stats.get('embedder')!r}, "
                             f"not {self.embedder.name!r}; delete the file or point to the right one.")
        self.set_reference({name: stats[name] for name in STATISTICS})
