"""`ParameterSummary`: Lightning's model summary with what matters to an unlearning run and nothing else.

Lightning's summary ends with the count of modules in eval mode (here hundreds: the frozen text encoder, the frozen
reference model, by design) and the FLOPs, which its counter leaves at 0 for the models of this package (it measures
no forward pass); both read like problems and are not. This summary keeps each top-level module's type and parameter
count, and the trainable, frozen and total parameters. ``train.py`` puts it in place of Lightning's unless the config
names a summary callback or sets ``enable_model_summary: false``.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import get_formatted_model_size, get_human_readable_count

log = logging.getLogger(__name__)
DROPPED_COLUMNS = ("Mode", "FLOPs")


class ParameterSummary(ModelSummary):
    """The summary table without the module modes and FLOPs (see the module docstring)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int, **kwargs: Any) -> None:
        log.info("\n" + summary_table(summary_data, total_parameters, trainable_parameters, model_size))


def summary_table(columns: list[tuple[str, list[str]]], total: int, trainable: int, size_mb: float) -> str:
    """The kept `columns` (header, values) as an aligned table, then the parameter totals."""
    columns = [(name, [str(value) for value in values]) for name, values in columns if name not in DROPPED_COLUMNS]
    widths = [max([len(name), *map(len, values)]) for name, values in columns]
    rows = [[name for name, _ in columns], *zip(*(values for _, values in columns), strict=True)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    rule = "-" * max(map(len, lines))
    totals = [(get_human_readable_count(trainable), "Trainable params"),
              (get_human_readable_count(total - trainable), "Non-trainable params (frozen)"),
              (get_human_readable_count(total), "Total params"),
              (get_formatted_model_size(size_mb), "Total estimated model params size (MB)")]
    return "\n".join([lines[0], rule, *lines[1:], rule, *(f"{count:<10} {what}" for count, what in totals)])
