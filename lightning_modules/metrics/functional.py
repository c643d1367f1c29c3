"""Pure maths of the metrics, free of models and Lightning."""

from __future__ import annotations

import torch
from torch import Tensor


def zero_shot_predictions(audio_embeddings: Tensor, class_embeddings: Tensor) -> Tensor:
    """Index of the closest class text embedding for each audio embedding (both L2-normalised): `(batch,)`."""
    return (audio_embeddings @ class_embeddings.T).argmax(dim=-1)


def per_class_accuracy(predictions: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Accuracy within each true class, `(num_classes,)`; NaN for a class with no item."""
    correct = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, targets, (predictions == targets).double())
    counts = torch.bincount(targets, minlength=num_classes).double()
    return correct / counts
