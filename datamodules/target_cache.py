"""`TargetCache`: the outputs of a model's `encode_audio` (VAE latents, mel patches, codec codes), one file per item,
so a dataset is encoded once and every later unlearning or attribution pass skips the encoder.

Files live under ``<root>/<targets key>/``: the key (`TextToMusicModel.targets_key`) names the backend, its audio format
and a digest of its encoder's weights, so a model only ever reads targets it would have computed itself. Each file
holds the item's targets and the number of real (unpadded) samples, written atomically with its digest
(`lightning_modules.io.save_verified`); an interrupted encoding pass resumes where it stopped, and encodes again any
file that fails verification (changed, truncated, or written before files carried a digest).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from lightning_modules.io import CorruptFileError, TensorField, load_verified, reusable, save_verified

WHAT = "cached targets of one item"
REMEDY = ("run the encoding pass again (`python train.py predict --config configs/encode.yaml ...` with the same "
          "model, data and cache_dir): it encodes every missing or bad item again")
STRUCTURE = {"id": str, "targets": TensorField(finite=True), "num_valid": int}


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
        """The ids of `ids` without a cached file, in order (files are verified when loaded, see `to_encode`)."""
        return [item_id for item_id in ids if item_id not in self]

    def to_encode(self, ids: Sequence[str]) -> list[str]:
        """The ids of `ids` without a good cached file, in order: missing, or failing verification (each such file
        is logged with a warning and encoded again)."""
        return [item_id for item_id in ids
                if not reusable(self.path(item_id), lambda _, item_id=item_id: self.load(item_id))]

    def save(self, item_id: str, targets: Tensor, num_valid: int) -> None:
        """Write one item's `targets` (any shape, stored on the CPU) and its number of real samples atomically."""
        save_verified({"id": item_id, "targets": targets.detach().cpu().clone(), "num_valid": int(num_valid)},
                      self.path(item_id))

    def load(self, item_id: str) -> tuple[Tensor, int]:
        """The item's targets and number of real samples.

        Raises:
            FileNotFoundError: the item was never encoded for this model.
            CorruptFileError: the file fails verification (digest, structure, finiteness) or belongs to another id (a
                digest collision or a copied file); the message names it.
        """
        path = self.path(item_id)
        if not path.is_file():
            raise FileNotFoundError(f"Item {item_id!r} has no cached targets in {self.folder}; run the encoding pass "
                                    "(`python train.py predict --config configs/encode.yaml ...`) first.")
        record = load_verified(path, WHAT, REMEDY, STRUCTURE)
        if record["id"] != item_id:
            raise CorruptFileError(path, WHAT, f"holds item {record['id']!r}, not {item_id!r}", REMEDY)
        return record["targets"], record["num_valid"]
