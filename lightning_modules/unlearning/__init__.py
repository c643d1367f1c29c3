"""Unlearning methods: one LightningModule per method, sharing `UnlearningModule`."""

from lightning_modules.unlearning.base import UnlearningModule
from lightning_modules.unlearning.gradient_ascent import GradientAscent
from lightning_modules.unlearning.gradient_difference import GradientDifference

__all__ = ["GradientAscent", "GradientDifference", "UnlearningModule"]
