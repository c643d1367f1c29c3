"""`TargetEncoding`: the pass that encodes a dataset into a model's training targets once (VAE latents, codec codes),
run as ``train.py predict`` with `callbacks.TargetCacheWriter`, sharded across ranks by Lightning's distributed
sampler; later unlearning and attribution passes read the cache and skip the encoder."""

from __future__ import annotations

import lightning as L

from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.module import ModelAudioFormat


class TargetEncoding(ModelAudioFormat, L.LightningModule):
    """Predicts each item's `encode_audio` targets; a `TargetCacheWriter` writes them.

    Args:
        model: the model whose targets to cache (only its audio encoder runs).
    """

    def __init__(self, model: TextToMusicModel) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()

    def predict_step(self, batch: Batch, batch_idx: int) -> dict:
        """``id``, ``targets`` `(batch, *target_shape)` and ``num_valid`` `(batch,)`, the real samples of each item."""
        return {"id": list(batch["id"]), "targets": self.model.encode_audio(batch["audio"], batch["mask"]),
                "num_valid": batch["mask"].sum(dim=1)}
