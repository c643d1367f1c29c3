"""`Recognition`: the share of clips a classifier assigns to their intended group, e.g. how often generations from the
forgotten artist's prompts are still recognised as that artist (the opt-out study's measure of forgetting), and how
often other artists' prompts still give their own artist."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_modules.metrics.embedder import AudioTagger, embed_or_given


class Recognition(Metric):
    """Accuracy of a tagger's top class against each clip's target label, with the confusion counts kept.

    Args:
        tagger: the classifier, e.g. a `ZeroShotTagger` over the artists' names.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, tagger: AudioTagger, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tagger = tagger.eval()
        size = len(tagger.labels)
        self.add_state("confusion", torch.zeros(size, size, dtype=torch.float64), dist_reduce_fx="sum")

    def target_indices(self, labels: list[str]) -> Tensor:
        """Label names to class indices, with an error naming any label the tagger does not know."""
        unknown = sorted(set(labels) - set(self.tagger.labels))
        if unknown:
            raise ValueError(f"Labels {unknown} are not among the tagger's labels {self.tagger.labels}.")
        return torch.tensor([self.tagger.labels.index(label) for label in labels], device=self.confusion.device)

    def update(self, audio: Tensor | None = None, sample_rate: int | None = None,
               targets: Tensor | Sequence[str] = (), *, logits: Tensor | None = None) -> None:
        """`audio` `(batch, samples)` at `sample_rate`, or the tagger's `logits` `(batch, classes)` for it; `targets`
        class indices `(batch,)` or label names."""
        logits = embed_or_given(self.tagger, audio, sample_rate, logits)
        if not isinstance(targets, Tensor):
            targets = self.target_indices(list(targets))
        if len(targets) != len(logits):
            raise ValueError(f"Got {len(logits)} clips but {len(targets)} targets.")
        size = len(self.tagger.labels)
        pairs = targets.to(self.confusion.device) * size + logits.argmax(dim=-1).to(self.confusion.device)
        self.confusion += torch.bincount(pairs, minlength=size * size).reshape(size, size).double()

    def compute(self) -> Tensor:
        """Share of clips whose predicted class is their target."""
        total = self.confusion.sum()
        if total < 1:
            raise ValueError("Recognition has seen no clip.")
        return self.confusion.trace() / total

    def per_label(self) -> dict[str, float]:
        """Accuracy within each target label that occurred (call on every process under DDP)."""
        with self.sync_context():
            confusion = self.confusion.clone()
        counts = confusion.sum(dim=1)
        return {label: (confusion[i, i] / counts[i]).item() for i, label in enumerate(self.tagger.labels)
                if counts[i] > 0}
