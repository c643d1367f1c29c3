"""Callbacks: evaluation reports and model export."""

from callbacks.loss_report import LossReport
from callbacks.save_pretrained import SavePretrained

__all__ = ["LossReport", "SavePretrained"]
