"""`ResumableLoader`: the training loader of the DataModules here. Each pass over the data is a permutation drawn from
``(seed, epoch, pass)``, never from the global random state; each of `world_size` processes takes every
`world_size`-th index of it, as `torch.utils.data.DistributedSampler` does, so that at every step the union of the
processes' batches of ``batch_size`` is the batch of ``world_size * batch_size`` one process draws at that step (the
padding `DistributedSampler` adds when a set's size is not a multiple of the process count aside). Its `state_dict`
(epoch, passes begun, batches served) is kept by Lightning in checkpoints (`CombinedLoader` saves stateful loaders),
so a fit resumed mid-epoch serves the batches the interrupted one would have served next."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class PassSampler(DistributedSampler):
    """This process's share of a fresh permutation per pass; a `DistributedSampler`, so Lightning does not replace it
    under DDP. `ResumableLoader` begins each pass and counts the batches it serves."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.passes = 0  # passes begun in this epoch
        self.pass_index = 0  # the pass being served
        self.skip = 0  # indices to skip at the start of the next pass (a resumed fit)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.passes = self.skip = 0
        super().set_epoch(epoch)

    def begin_pass(self) -> None:
        self.pass_index = self.passes
        self.passes += 1

    def __iter__(self) -> Iterator[int]:
        size = len(self.dataset)  # type: ignore[arg-type]
        seed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + self.pass_index
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed % 2**63)).tolist()
        padding = self.total_size - size
        order += (order * math.ceil(padding / max(size, 1)))[:padding]
        share = order[self.rank : self.total_size : self.num_replicas]
        skip, self.skip = self.skip, 0
        return iter(share[skip:])


class ResumableLoader(DataLoader):
    """Shuffled training batches of `batch_size` items per process that resume where a checkpoint left them.

    Args:
        dataset: the items.
        batch_size: items per batch of this process.
        seed: seed of the permutations.
        rank: this process's global rank.
        world_size: the number of processes.
        drop_last: drop each pass's last, incomplete batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, num_workers: int = 0) -> None:
        # the loader's own generator seeds its workers: creating an iterator leaves the global random state alone
        super().__init__(dataset, batch_size=batch_size, sampler=PassSampler(dataset, world_size, rank, seed),
                         drop_last=drop_last, num_workers=num_workers, persistent_workers=num_workers > 0,
                         generator=torch.Generator().manual_seed(seed))
        self.served = 0  # batches of the current pass handed out

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler: PassSampler = self.sampler  # type: ignore[assignment]
        sampler.begin_pass()
        self.served = sampler.skip // self.batch_size  # type: ignore[operator]
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler: PassSampler = self.sampler  # type: ignore[assignment]
        return {"epoch": sampler.epoch, "passes": sampler.passes, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume the pass that was being served: the next pass begun is that pass, less its served batches."""
        sampler: PassSampler = self.sampler  # type: ignore[assignment]
        sampler.epoch = state["epoch"]
        sampler.passes = max(state["passes"] - 1, 0)
        sampler.skip = state["served"] * self.batch_size  # type: ignore[operator]
        self.served = state["served"]
