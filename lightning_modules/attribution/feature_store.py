"""`FeatureStorePass`: a gradient baseline's features of every training item, computed once and stored (issue 20).

The first-order estimate of attribution by unlearning, TRAK and D-TRAK score a query against the training set's
projected gradients. Without a store, every pass computes them again (on the toy world's LDS benchmark, 400 of the
first-order pass's 440 items' gradients, about 1,980 of its 2,173 s for 40 queries); with one, a pass over new
queries computes only the queries' gradients and reads the rest (`SimilarityRanking`'s ``train_store``). The store
is a `FeatureStore`: the items sorted by id in fixed shards, one verified file per shard written atomically, so a
stopped pass resumes at its first missing shard on any number of ranks, and a recipe (the model, its weights, the
baseline's feature settings, the items) that every reader checks, so features of another model, projection or Fisher
are never mixed in.

    python train.py predict --config configs/attribution/gradient_store.yaml

Size on disk: 4 bytes per item and projected dimension, 1.6 GB for 100,000 tracks at 4,096 dimensions.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from datamodules.interfaces import SweepWork, require
from lightning_modules.attribution.similarity import SimilarityBaseline
from lightning_modules.gradients import weights_digest
from lightning_modules.models.base import Batch, TextToMusicModel
from lightning_modules.module import ModelAudioFormat


def store_recipe(model: TextToMusicModel, baseline: SimilarityBaseline) -> dict[str, Any]:
    """What a feature store's vectors depend on besides the items: the model, its weights and the baseline's
    feature settings (`SimilarityBaseline.feature_settings`)."""
    return {"model": f"{type(model).__module__}.{type(model).__qualname__}", "targets_key": model.targets_key(),
            "weights": weights_digest(model.state_dict().items()), **baseline.feature_settings()}


def baseline_features(baseline: SimilarityBaseline, model: TextToMusicModel, batch: Batch, query: bool = False
                      ) -> torch.Tensor:
    """`baseline`'s feature vectors `(items, dim)` of `batch` (its `query_features` when `query`), with autograd
    re-enabled (prediction runs under inference mode) on copies of the batch's tensors made outside it, for the
    gradient baselines.

    Raises:
        RuntimeError: the baseline returned the items in another order.
    """
    with torch.inference_mode(False), torch.enable_grad():
        copy = {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        features = (baseline.query_features if query else baseline.features)([copy], model)  # type: ignore[list-item]
    if features.ids != list(batch["id"]):
        raise RuntimeError(f"{type(baseline).__name__} returned features of {features.ids[:5]} for a batch of "
                           f"{list(batch['id'])[:5]}; a baseline must keep the order of the items.")
    return features.vectors


class FeatureStorePass(ModelAudioFormat, L.LightningModule):
    """Writes `baseline`'s features of every item of a `FeatureStoreDataModule`, shard by shard (`SweepWriter`).

    Args:
        model: the model whose gradients the features are (the one attributed).
        baseline: a gradient baseline (`FirstOrderUnlearning`, `TrakScores`, `GradientSimilarity`), by class_path;
            the passes that read the store must use the same feature settings (checked).
    """

    def __init__(self, model: TextToMusicModel, baseline: SimilarityBaseline) -> None:
        super().__init__()
        baseline.check(model)
        baseline.feature_settings()  # a baseline that keeps no store fails before any data is read
        self.model = model.requires_grad_(False)  # the gradient baselines enable their own groups while measuring
        self.baseline = baseline

    def recipe(self) -> dict[str, Any]:
        return store_recipe(self.model, self.baseline)

    def setup(self, stage: str) -> None:
        """Check the store folder holds this store or none yet (rank 0 records the recipe), before any shard."""
        if stage != "predict":
            raise ValueError(f"FeatureStorePass runs as `train.py predict`, not {stage!r}.")
        data = self.trainer.datamodule
        require(data, SweepWork, "FeatureStorePass", "datamodules.sweep.FeatureStoreDataModule")
        data.sweep.open({**self.recipe(), **data.recipe()}, write=self.trainer.is_global_zero)
        self.trainer.strategy.barrier("store_recipe_checked")

    def predict_step(self, shard: dict, batch_idx: int = 0) -> dict:
        """``{"sweep", "shard", "id", "rows": vectors (items, dim)}`` for a shard; a placeholder step gives no ids."""
        if "batch" not in shard:
            return {"shard": int(shard["shard"]), "id": [], "rows": torch.empty(0, 0)}
        return {"sweep": self.trainer.datamodule.sweep, "shard": int(shard["shard"]),
                "id": list(shard["batch"]["id"]), "rows": baseline_features(self.baseline, self.model, shard["batch"])}
