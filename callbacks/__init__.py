"""Callbacks: evaluation reports and model export."""

from callbacks.evaluation import UnlearningEvaluation
from callbacks.guard import UnlearningGuard
from callbacks.save_pretrained import SavePretrained

__all__ = ["SavePretrained", "UnlearningEvaluation", "UnlearningGuard"]
