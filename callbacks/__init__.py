"""Callbacks: evaluation reports, model export and the target cache writer."""

from callbacks.evaluation import UnlearningEvaluation
from callbacks.guard import UnlearningGuard
from callbacks.save_pretrained import SavePretrained
from callbacks.target_cache import TargetCacheWriter

__all__ = ["SavePretrained", "TargetCacheWriter", "UnlearningEvaluation", "UnlearningGuard"]
