"""`ProjectionEmbedder`: the metric tests' deterministic audio embedder, shared by the metric and fault tests."""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.metrics import AudioEmbedder

RATE = 8000
WINDOW = 64  # samples of a clip the projection embedder reads
DIM = 8


class ProjectionEmbedder(AudioEmbedder):
    """Deterministic test embedder: a fixed random projection `(WINDOW, dim)` of a clip's first WINDOW samples, in
    float64 (so results do not depend on batch size)."""

    sample_rate = RATE

    def __init__(self, dim=DIM, seed=0, label="projection"):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(WINDOW, dim, generator=generator, dtype=torch.float64),
                                   requires_grad=False)
        self.dropout = nn.Dropout(0.5)  # a child module, to see that train() leaves it in eval mode too
        self.label = label

    @property
    def name(self):
        return f"{self.label}-{self.weight.shape[1]}"

    @property
    def dim(self):
        return self.weight.shape[1]

    def embed(self, waveform):
        return waveform[:, :WINDOW].double() @ self.weight
