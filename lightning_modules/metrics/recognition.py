"""`Recognition`: the share of clips a classifier assigns to their intended group, e.g. how often generations from the
forgotten artist's prompts are still recognised as that artist (the opt-out study's measure of forgetting), and how
often other artists' prompts still give their own artist."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_modules.metrics.embedder import AudioTagger, embed_or_given
from lightning_modules.metrics.functional import Samples
from lightning_modules.metrics.per_item import PerItemMetric


class Recognition(PerItemMetric):
    """Accuracy of a tagger's top class against each clip's target label; keeps each clip's target and prediction.

    Args:
        tagger: the classifier, e.g. a `ZeroShotTagger` over the artists' names.
    """

    higher_is_better = True
    fields = ("target", "predicted")
    batched_statistic = True

    def __init__(self, tagger: AudioTagger, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tagger = tagger.eval()

    def target_indices(self, labels: list[str]) -> Tensor:
        """Label names to class indices, with an error naming any label the tagger does not know."""
        unknown = sorted(set(labels) - set(self.tagger.labels))
        if unknown:
            raise ValueError(f"Labels {unknown} are not among the tagger's labels {self.tagger.labels}.")
        return torch.tensor([self.tagger.labels.index(label) for label in labels])

    def update(self, audio: Tensor | None = None, sample_rate: int | None = None,
               targets: Tensor | Sequence[str] = (), *, logits: Tensor | None = None, index: Tensor | None = None
               ) -> None:
        """`audio` `(batch, samples)` at `sample_rate`, or the tagger's `logits` `(batch, classes)` for it; `targets`
        class indices `(batch,)` or label names; `index` places the clips (`PerItemMetric`)."""
        logits = embed_or_given(self.tagger, audio, sample_rate, logits)
        if not isinstance(targets, Tensor):
            targets = self.target_indices(list(targets))
        if len(targets) != len(logits):
            raise ValueError(f"Got {len(logits)} clips but {len(targets)} targets.")
        self.keep(index, target=targets.long(), predicted=logits.argmax(dim=-1))

    def statistic(self, samples: Samples) -> Tensor:
        """Share of clips whose predicted class is their target."""
        return (samples["predicted"] == samples["target"]).double().mean(-1)

    def confusion(self) -> Tensor:
        """Counts `(target, predicted)` over the labels, float64 (call on every process under DDP)."""
        samples, size = self.samples(), len(self.tagger.labels)
        pairs = samples["target"] * size + samples["predicted"]
        return torch.bincount(pairs, minlength=size * size).reshape(size, size).double()

    def per_label(self) -> dict[str, float]:
        """Accuracy within each target label that occurred (call on every process under DDP)."""
        confusion = self.confusion()
        counts = confusion.sum(dim=1)
        return {label: (confusion[i, i] / counts[i]).item() for i, label in enumerate(self.tagger.labels)
                if counts[i] > 0}
