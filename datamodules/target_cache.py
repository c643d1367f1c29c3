"""`TargetCache`: the outputs of a model's `encode_audio` (VAE latents, mel patches, codec codes), one file per item,
so a dataset is encoded once and every later unlearning or attribution pass skips the encoder.

Files live under ``<root>/<targets key>/``: the key (`TextToMusicModel.targets_key`) names the backend, its audio format
and a digest of its encoder's weights, so a model only ever reads targets it would have computed itself. Each file
holds the item's targets and the number of real (unpadded) samples, written atomically; an interrupted encoding pass
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightning_modules.io import atomic_file


class TargetCache:
    """One model's cached targets under ``root / key``.

    Args:
        root: the cache folder (shared by models; each gets a sub-folder).
        key: the model's `targets_key()`.
    """

    def __init__(self, root: str | os.PathLike, key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.folder = self.root / key

    def path(self, item_id: str) -> Path:
        """The item's file: a readable prefix of the id plus a digest, so any id is a safe, unique file name."""
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", item_id)[:64]
        digest = hashlib.blake2b(item_id.encode(), digest_size=8).hexdigest()
        return self.folder / f"{readable}-{digest}.pt"

    def __contains__(self, item_id: str) -> bool:
        return self.path(item_id).is_file()

    def missing(self, ids: Sequence[str]) -> list[str]:
        """The ids of `ids` without a cached file, in order."""
        return [item_id for item_id in ids if item_id not in self]

    def save(self, item_id: str, targets: Tensor, num_valid: int) -> None:
        """Write one item's `targets` (any shape, stored on the CPU) and its number of real samples atomically."""
        with atomic_file(self.path(item_id)) as tmp:
            torch.save({"id": item_id, "targets": targets.detach().cpu().clone(), "num_valid": int(num_valid)}, tmp)

    def load(self, item_id: str) -> tuple[Tensor, int]:
        """The item's targets and number of real samples.

        Raises:
            FileNotFoundError: the item was never encoded for this model.
            ValueError: the file belongs to another id (a digest collision or a copied file).
        """
        path = self.path(item_id)
        if not path.is_file():
            raise FileNotFoundError(f"Item {item_id!r} has no cached targets in {self.folder}; run the encoding pass "
                                    "(`python train.py predict --config configs/encode.yaml ...`) first.")
        record = torch.load(path, map_location="cpu", weights_only=True)
        if record["id"] != item_id:
            raise ValueError(f"{path} holds item {record['id']!r}, not {item_id!r}; delete it and encode again.")
        return record["targets"], record["num_valid"]
