"""Sources: objects a DataModule asks, in ``prepare_data``, to put its data in place (generate or download)."""

from __future__ import annotations

from abc import ABC, abstractmethod


class DataSource(ABC):
    """Puts a corpus and its manifests on disk; `prepare()` does nothing when they are already there."""

    @abstractmethod
    def prepare(self) -> None:
        """Write the data if missing. Called on one process per node, before `setup`."""
