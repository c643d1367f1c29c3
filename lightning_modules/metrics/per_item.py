"""`PerItemMetric`: a torchmetrics Metric that keeps one value per item (per-clip outcomes, similarities,
embeddings) instead of running sums, so that its value can be resampled: its value is a `statistic` of those values,
and `interval` bootstraps it.

Each item carries an index. Under DDP the values are gathered from every process and put in index order, so with the
evaluation's global prompt indices the values, the statistic and every bootstrap interval are the same on any number of
devices. Without indices the items keep their arrival order, process after process (rank order, as torchmetrics'
concatenated states have it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_modules.metrics.functional import Interval, Samples, bootstrap

_RANK_STRIDE = 1 << 40  # default indices: rank * stride + arrival order on that process


class PerItemMetric(Metric):
    """Base of the metrics whose value is `statistic(samples())`.

    Subclasses name their per-item fields in `fields`, call `keep` in `update`, and implement `statistic`, which maps
    per-item values (all of them, or a bootstrap resample) to the metric's value: a scalar tensor or a dict of them.
    Where it also maps a batch of resamples (a leading dimension) to a batch of values, as a mean over the last
    dimension does, `batched_statistic` says so and a bootstrap costs one call instead of one per resample.
    """

    fields: tuple[str, ...] = ()
    batched_statistic = False
    # the statistic is biased upwards on resamples that repeat items (FAD: a resample of n clips holds about 0.63 n
    # distinct ones, and FAD's bias grows as its sample shrinks): its replicates are centred on the value
    biased_under_resampling = False
    minimum: float | None = None  # the statistic's lower bound, where the centred replicates are clamped
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("index", [], dist_reduce_fx="cat")
        for name in self.fields:
            self.add_state(name, [], dist_reduce_fx="cat")
        self._arrived = 0

    def keep(self, index: Tensor | None = None, **values: Tensor) -> None:
        """Record one value of each field per item; `index` `(batch,)` places the items (default: arrival order on
        this process, after the items of lower ranks)."""
        if set(values) != set(self.fields):
            raise TypeError(f"{type(self).__name__} keeps {list(self.fields)}, got {sorted(values)}.")
        count = len(next(iter(values.values())))
        if any(len(value) != count for value in values.values()):
            raise ValueError(f"Per-item values of different lengths: { {k: len(v) for k, v in values.items()} }.")
        if index is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            index = rank * _RANK_STRIDE + torch.arange(self._arrived, self._arrived + count)
        elif len(index) != count:
            raise ValueError(f"Got {count} items but {len(index)} indices.")
        self._arrived += count
        self.index.append(torch.as_tensor(index, dtype=torch.long, device=self.device).reshape(-1))
        for name, value in values.items():
            getattr(self, name).append(value.detach().to(self.device))

    def reset(self) -> None:
        super().reset()
        self._arrived = 0

    def _ordered(self) -> Samples:
        """The current states in index order (after `compute`'s sync: those of every process)."""
        if isinstance(self.index, list) and not self.index:
            raise ValueError(f"{type(self).__name__} has seen no item.")
        index, order = torch.sort(dim_zero_cat(self.index), stable=True)
        return {"index": index, **{name: dim_zero_cat(getattr(self, name))[order] for name in self.fields}}

    def samples(self) -> Samples:
        """Per-item values of every process in index order, with the items' ``index`` (call on every process under
        DDP)."""
        with self.sync_context():
            return self._ordered()

    def compute(self) -> Tensor | dict[str, Tensor]:
        return self.statistic(self._ordered())

    def statistic(self, samples: Samples) -> Tensor | dict[str, Tensor]:
        """The metric's value from per-item `samples` (the kept values, or a resample of them)."""
        raise NotImplementedError

    def interval(self, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval | dict[str, Interval]:
        """The value and its percentile bootstrap interval over the items (call on every process under DDP)."""
        return bootstrap(self.statistic, [self.samples()], resamples, level, seed, self.batched_statistic,
                         self.biased_under_resampling, self.minimum)
