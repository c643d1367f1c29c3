"""`TagKLDivergence`: KL divergence between the tag distributions of reference audio and of audio generated from the
same caption, with a tagger such as PANN's AudioSet classifier (AudioLDM's KL, Liu et al., ICML 2023) or a CLAP
zero-shot tagger over the toy world's artists."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_modules.metrics.embedder import AudioTagger, embed_or_given
from lightning_modules.metrics.functional import kl_divergence


class TagKLDivergence(Metric):
    """Mean over (reference, generated) pairs of KL(reference ‖ generated) of the tagger's softmax distributions.

    Args:
        tagger: the classifier giving logits over tags.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, tagger: AudioTagger, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tagger = tagger.eval()
        self.add_state("kl_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, generated: Tensor | None = None, reference: Tensor | None = None, sample_rate: int | None = None,
               *, generated_logits: Tensor | None = None, reference_logits: Tensor | None = None) -> None:
        """Pairs of `generated` and `reference` audio `(batch, samples)` at `sample_rate` (the i-th clips share a
        caption), or the tagger's logits `(batch, tags)` for either."""
        generated_logits = embed_or_given(self.tagger, generated, sample_rate, generated_logits)
        reference_logits = embed_or_given(self.tagger, reference, sample_rate, reference_logits)
        if generated_logits.shape != reference_logits.shape:
            raise ValueError(f"Generated and reference logits differ in shape: {tuple(generated_logits.shape)} vs "
                             f"{tuple(reference_logits.shape)}; give one reference clip per generated clip.")
        kl = kl_divergence(reference_logits, generated_logits)
        self.kl_sum += kl.sum()
        self.count += len(kl)

    def compute(self) -> Tensor:
        if self.count < 1:
            raise ValueError("TagKLDivergence has seen no pair.")
        return self.kl_sum / self.count
