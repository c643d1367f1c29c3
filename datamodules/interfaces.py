"""What the LightningModules and callbacks need from a DataModule, declared as `typing.Protocol`s and checked once, at
set-up, with `require`: a wrong ``data.class_path`` fails before any data is read, with a message naming what is
missing and a DataModule that has it.

- `HasItems` (``all_items()``): `FisherEstimation`; every DataModule of the package has it.
- `HasQueries` (and ``query_items()``, ``query_dataloader()``): `SimilarityRanking`; `ItemsDataModule`.
- `HasSplits` (``split_dataset(split)``): `UnlearningModule`; `ForgetRetainDataModule`.
- `HasEvalSets` (``eval_datasets()``): `UnlearningEvaluation`, `UnlearningGuard`; `ForgetRetainDataModule`.
- `ShardWork` (``missing_files()``): `SweepWriter`; `SweepDataModule`, `QueryDataModule`.
- `SweepWork` (and ``sweep``, ``recipe()``): `LossSweep`, `FeatureStorePass`; `SweepDataModule`,
  `FeatureStoreDataModule`.
- `QueryWork` (and ``before``, ``store``, ``query_set``, ``query_items()``, ``missing_work()``, ``measured()``,
  ``recipe_of()``): `QueryAttribution`; `QueryDataModule`.
- `RecordsTrainingData` (``training_record()``): `SavePretrained`, where the DataModule has it; `AudioTextDataModule`.
- `DefinesOracle` (``manifest``, ``oracle_training_set()``): `UnlearningEvaluation` with an oracle;
  `ForgetRetainDataModule`.

Paths: a DataModule owns the folders whose contents decide what is left to compute, since it serves only that work
(``sweep_dir``; ``before_dir`` and ``out_dir`` of `QueryDataModule`); the LightningModule owns every other file it
reads or writes whole (``fisher_path``, ``delta_path``, ``pretrained_delta``, `SimilarityRanking`'s ``out_dir``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    from torch.utils.data import DataLoader, Dataset

    from datamodules.attribution_store import AttributionStore, Sweep
    from datamodules.manifest import ManifestItem
    from datamodules.provenance import TrainingRecord


@runtime_checkable
class HasItems(Protocol):
    """A DataModule over a list of items (after ``setup``)."""

    def all_items(self) -> list[ManifestItem]:
        """Every item the DataModule serves, in a fixed order."""
        ...


@runtime_checkable
class HasQueries(HasItems, Protocol):
    """Training items and the generated queries to attribute to them."""

    def query_items(self) -> list[ManifestItem]:
        """The queries, in manifest order."""
        ...

    def query_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """The queries of rank `rank` out of `world_size`, in manifest order."""
        ...


@runtime_checkable
class HasSplits(Protocol):
    """The sets of an unlearning run ("forget", "retain"), whole."""

    def split_dataset(self, split: str, with_audio: bool = False) -> Dataset:
        """Every item of `split`."""
        ...


@runtime_checkable
class HasEvalSets(Protocol):
    """The sets an unlearning run is evaluated on."""

    def eval_datasets(self) -> dict[str, Dataset]:
        """Name -> dataset of each evaluated set."""
        ...


@runtime_checkable
class ShardWork(Protocol):
    """Prediction steps that each write one shard file of a sweep."""

    def missing_files(self) -> list[Path]:
        """The shard files still to write (missing, or failing verification)."""
        ...


@runtime_checkable
class SweepWork(ShardWork, HasItems, Protocol):
    """The shards of one loss sweep still to compute."""

    sweep: Sweep

    def recipe(self) -> dict:
        """What the sweep's losses depend on besides the model: the items and their sharding."""
        ...


@runtime_checkable
class QueryWork(ShardWork, HasItems, Protocol):
    """The (query, shard) steps of attribution by unlearning still to compute."""

    before: Sweep
    store: AttributionStore
    query_set: Dataset

    def recipe(self) -> dict:
        """What the sweeps' losses depend on besides the model: the items and their sharding."""
        ...

    def query_items(self) -> list[ManifestItem]:
        """The queries, in manifest order."""
        ...

    def missing_work(self) -> list[tuple[int, int]]:
        """The (query index, shard index) pairs without a good shard file yet."""
        ...

    def measured(self, query: int) -> list[int]:
        """The indices (into the sorted items) of the tracks query `query`'s "after" sweep measures."""
        ...

    def recipe_of(self, query: int) -> dict:
        """What query `query`'s "after" sweep depends on besides the model: its items and their sharding."""
        ...


@runtime_checkable
class RecordsTrainingData(Protocol):
    """A DataModule that can say what a model trained on it saw (`callbacks.SavePretrained` writes it)."""

    def training_record(self) -> TrainingRecord:
        """The manifest, the digest of the trained ids and what was left out."""
        ...


@runtime_checkable
class DefinesOracle(Protocol):
    """A DataModule of unlearning runs that can say what their oracle trains on."""

    manifest: str

    def oracle_training_set(self) -> tuple[list[ManifestItem], list[ManifestItem]]:
        """(the items an oracle of this forget set trains on, the forget set)."""
        ...


def _members(interface: type) -> list[str]:
    names = set()
    for cls in interface.__mro__:
        if cls in (Protocol, object) or not getattr(cls, "_is_protocol", False):
            continue
        names.update(name for name in vars(cls) if not name.startswith("_"))
        names.update(getattr(cls, "__annotations__", {}))
    return sorted(names)


def require(datamodule: Any, interface: type, user: str, example: str) -> None:
    """Check that `datamodule` implements `interface`, for `user` (a class name).

    Raises:
        TypeError: naming the members `datamodule` lacks and `example`, a DataModule that has them.
    """
    if isinstance(datamodule, interface):
        return
    missing = [name for name in _members(interface) if not hasattr(datamodule, name)]
    raise TypeError(f"{user} needs a DataModule with {', '.join(_members(interface))} ({interface.__name__}, "
                    f"datamodules.interfaces), such as {example}; got {type(datamodule).__name__}, which lacks "
                    f"{', '.join(missing)}.")
