"""`TagKLDivergence`: KL divergence between the tag distributions of reference audio and of audio generated from the
same caption, with a tagger such as PANN's AudioSet classifier (AudioLDM's KL, Liu et al., ICML 2023) or a CLAP
zero-shot tagger over the toy world's artists."""

from __future__ import annotations

from torch import Tensor

from lightning_modules.metrics.embedder import AudioTagger, embed_or_given
from lightning_modules.metrics.functional import Samples, kl_divergence
from lightning_modules.metrics.per_item import PerItemMetric


class TagKLDivergence(PerItemMetric):
    """Mean over (reference, generated) pairs of KL(reference ‖ generated) of the tagger's softmax distributions;
    keeps each pair's divergence.

    Args:
        tagger: the classifier giving logits over tags.
    """

    higher_is_better = False
    fields = ("kl",)
    batched_statistic = True

    def __init__(self, tagger: AudioTagger, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tagger = tagger.eval()

    def update(self, generated: Tensor | None = None, reference: Tensor | None = None, sample_rate: int | None = None,
               *, generated_logits: Tensor | None = None, reference_logits: Tensor | None = None,
               index: Tensor | None = None) -> None:
        """Pairs of `generated` and `reference` audio `(batch, samples)` at `sample_rate` (the i-th clips share a
        caption), or the tagger's logits `(batch, tags)` for either; `index` places the pairs (`PerItemMetric`)."""
        generated_logits = embed_or_given(self.tagger, generated, sample_rate, generated_logits)
        reference_logits = embed_or_given(self.tagger, reference, sample_rate, reference_logits)
        if generated_logits.shape != reference_logits.shape:
            raise ValueError(f"Generated and reference logits differ in shape: {tuple(generated_logits.shape)} vs "
                             f"{tuple(reference_logits.shape)}; give one reference clip per generated clip.")
        self.keep(index, kl=kl_divergence(reference_logits, generated_logits))

    def statistic(self, samples: Samples) -> Tensor:
        return samples["kl"].mean(-1)
