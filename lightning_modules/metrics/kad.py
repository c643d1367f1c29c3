"""`KernelAudioDistance`: KAD, the unbiased MMD² between embeddings of generated and reference audio with a Gaussian
kernel whose bandwidth is the reference set's median pairwise distance (kadtk; Chung et al., "KAD: No More FAD! An
Effective and Efficient Evaluation Metric for Audio Generation", 2025). Unlike FAD it assumes no Gaussian and its
estimate is unbiased, so sets of different sizes compare fairly and small sets give usable values; O(n²) in clips.

kadtk's own code takes the bandwidth from its second argument; here it is always the reference's, fixed when the
reference is set, so the kernel is the same for every model and every bootstrap resample compared with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.metrics.embedder import AudioEmbedder, embed_or_given
from lightning_modules.metrics.functional import (
    Samples,
    kernel_audio_distance,
    kernel_mean,
    median_pairwise_distance,
)
from lightning_modules.metrics.per_item import PerItemMetric

BANDWIDTH_ROWS = 4096  # the median pairwise distance of a larger reference comes from this many rows drawn at seed 0


class KernelAudioDistance(PerItemMetric):
    """KAD (x100, as kadtk reports it) of the generated audio from reference embeddings set with `set_reference`.

    Args:
        embedder: the feature extractor; frame-level embeddings `(batch, frames, dim)` count every frame as a sample,
            as kadtk does (and a resample draws clips).
    """

    higher_is_better = False
    fields = ("embedding",)
    batched_statistic = True

    def __init__(self, embedder: AudioEmbedder, **kwargs) -> None:
        super().__init__(**kwargs)
        self.embedder = embedder.eval()
        self.reference: Tensor | None = None
        self.bandwidth: Tensor | None = None
        self._reference_mean: Tensor | None = None

    def set_reference(self, embeddings: Tensor) -> None:
        """The reference set's embeddings `(n, dim)` or `(n, frames, dim)` (the same on every process); kept across
        resets. Fixes the kernel bandwidth to their median pairwise distance."""
        if embeddings.dim() not in (2, 3) or embeddings.shape[-1] != self.embedder.dim:
            raise ValueError(f"Expected reference embeddings (n, {self.embedder.dim}) or (n, frames, "
                             f"{self.embedder.dim}) from {self.embedder.name}, got {tuple(embeddings.shape)}.")
        rows = embeddings.reshape(-1, embeddings.shape[-1]).double()
        if not torch.isfinite(rows).all():
            raise ValueError(f"The reference embeddings of {self.embedder.name} hold NaN or infinite values.")
        if len(rows) > BANDWIDTH_ROWS:
            chosen = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:BANDWIDTH_ROWS]
        else:
            chosen = slice(None)
        bandwidth = median_pairwise_distance(rows[chosen])
        if bandwidth <= 0:
            raise ValueError(f"The reference embeddings of {self.embedder.name} are all identical: KAD's bandwidth "
                             "(their median pairwise distance) is 0.")
        self.reference, self.bandwidth = rows, bandwidth
        self._reference_mean = kernel_mean(rows, bandwidth)  # once, not once per bootstrap resample

    def update(self, audio: Tensor | None = None, sample_rate: int | None = None, *,
               embeddings: Tensor | None = None, index: Tensor | None = None) -> None:
        """Generated `audio` `(batch, samples)` at `sample_rate`, or its `embeddings` already computed by this
        metric's embedder; `index` places the clips (`PerItemMetric`)."""
        embeddings = embed_or_given(self.embedder, audio, sample_rate, embeddings).double()
        if not torch.isfinite(embeddings).all():
            raise ValueError(f"The embedder {self.embedder.name} returned NaN or infinite embeddings.")
        self.keep(index, embedding=embeddings)

    def statistic(self, samples: Samples) -> Tensor:
        """KAD of the clips in `samples`. In a bootstrap resample a clip can come twice; the pairs of a clip with its
        own copy are left out of the generated set's kernel mean (with ``index`` in `samples`), as a U-statistic is
        bootstrapped, so that the repeats do not bias the replicates upwards; a resample of one distinct clip has no
        pair left and gives NaN, which the percentile interval leaves out. With a batch of resamples (``index``
        `(resamples, clips)`), one value per resample."""
        if self.reference is None:
            raise ValueError("KernelAudioDistance needs the reference embeddings: call set_reference() first.")
        embeddings, items = samples["embedding"], samples.get("index")
        lead = items.dim() - 1 if items is not None else 0
        generated = embeddings.reshape(*embeddings.shape[:lead], -1, embeddings.shape[-1])
        pairs = None
        if items is not None:
            frames = generated.shape[-2] // items.shape[-1]
            item = items.to(generated.device).repeat_interleave(frames, dim=-1)  # (..., rows)
            draw = torch.arange(item.shape[-1], device=generated.device) // frames
            same_draw = draw[:, None] == draw[None, :]
            distinct = ~torch.eye(item.shape[-1], dtype=torch.bool, device=generated.device)
            pairs = (item.unsqueeze(-1) != item.unsqueeze(-2)) | (same_draw & distinct)
        return kernel_audio_distance(generated, self.reference.to(generated.device), self.bandwidth, pairs,
                                     self._reference_mean)
