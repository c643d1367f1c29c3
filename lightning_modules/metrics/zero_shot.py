"""`ZeroShotTagger`: a classifier over arbitrary labels from any CLAP, by the similarity of the audio embedding to the
text embedding of a prompt per label ("a piece by {label}"). Radford et al. (CLIP) zero-shot classification, as CLAP
uses it; the toy world's artist recogniser."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lightning_modules.metrics.embedder import AudioTagger, TextAudioEmbedder


class ZeroShotTagger(AudioTagger):
    """Logits `(batch, len(labels))`: ``logit_scale`` × cosine similarity of the audio to each label's prompt.

    Args:
        embedder: a CLAP embedder.
        labels: the class names, e.g. artists.
        template: the prompt of a label, with ``{}`` where the label goes.
        logit_scale: inverse softmax temperature of the logits; default the CLAP's own (trained) value.
    """

    def __init__(self, embedder: TextAudioEmbedder, labels: Sequence[str], template: str = "a piece by {}",
                 logit_scale: float | None = None) -> None:
        super().__init__()
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"ZeroShotTagger needs distinct labels, got {list(labels)}.")
        if "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{}}' where the label goes.")
        self.embedder = embedder.eval()
        self.labels = list(labels)
        self.template = template
        self.logit_scale = embedder.logit_scale if logit_scale is None else logit_scale
        self.sample_rate = embedder.sample_rate
        self._label_embeddings: Tensor | None = None

    def unreadable_labels(self) -> dict[str, list[str]]:
        """The labels whose prompt has words the CLAP's text tower cannot read, with those words: it cannot name
        them (such a label's prompt reduces to unknown tokens), so recognition of them says nothing about the audio."""
        unreadable = {label: self.embedder.unknown_words(label) for label in self.labels}
        return {label: words for label, words in unreadable.items() if words}

    @property
    def name(self) -> str:
        return f"zero-shot[{self.template}:{','.join(self.labels)}]@{self.embedder.name}"

    def label_embeddings(self) -> Tensor:
        """`(len(labels), dim)` text embeddings of the label prompts, computed once."""
        if self._label_embeddings is None or self._label_embeddings.device != self.device:
            self._label_embeddings = self.embedder.embed_text([self.template.format(label) for label in self.labels])
        return self._label_embeddings

    def embed(self, waveform: Tensor) -> Tensor:
        return self.logits(self.embedder.embed(waveform))

    def logits(self, audio_embeddings: Tensor) -> Tensor:
        """Logits from audio embeddings `(batch, dim)` already computed by the CLAP embedder."""
        return self.logit_scale * audio_embeddings @ self.label_embeddings().T
