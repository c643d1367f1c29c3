"""What a model was trained on, kept in its folder, and the check that an oracle is the oracle of a run's forget set.

An oracle (the model retrained without the forget set, the reference of every unlearning result: Thudi et al., 2022;
open-unlearning's "retain model") is only the oracle of one forget set. Nothing in its weights says which, so a run
could compare itself with the wrong one and print a plausible column. `TrainingRecord` is the model folder's account of
its training data, ``training_data.json`` (written with a digest by `callbacks.SavePretrained` when the DataModule
implements `RecordsTrainingData`): the manifest, the digest of the trained ids, and what was left out of the manifest.
`check_oracle` holds it against a run: the oracle must have trained on exactly the run's training manifest without
exactly its forget set. The record says what this training saw, not what the weights it started from saw: a model
fine-tuned from a checkpoint that heard the forget set is no oracle, whatever its record. A frozen component trained on
the same corpus (the toy model's text encoder is the toy CLAP's text tower) keeps its own record in its subfolder
(``text_encoder/training_data.json``), and `check_oracle` holds each such record against the forget set too: an
oracle conditioned by a text encoder that learned the forgotten artist from its tracks has not forgotten it.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from datamodules.manifest import ManifestItem
from lightning_modules.io import read_json_verified, write_json_verified

RECORD_FILE = "training_data.json"
RECORD_FORMAT = 1
RECORD_REMEDY = ("retrain the model, or write its record again with `python scripts/record_training_data.py "
                 "--config <its training config>`")


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 of the sorted, distinct `ids` (one per line): the same set gives the same digest in any order."""
    return hashlib.sha256("\n".join(sorted(set(ids))).encode()).hexdigest()


def _groups(items: Sequence[ManifestItem]) -> dict[str, int]:
    return dict(sorted(Counter(item.group for item in items).items()))


@dataclass(frozen=True)
class TrainingRecord:
    """A model's training data.

    Args:
        manifest: the training manifest, as the config named it.
        items: how many items were trained on.
        ids_sha256: `ids_digest` of the trained items' ids.
        groups: trained items per group ("" for items without one).
        excluded_groups: the groups left out of the manifest.
        excluded_ids: the ids of every item of the manifest that was left out, sorted.
    """

    manifest: str
    items: int
    ids_sha256: str
    groups: dict[str, int]
    excluded_groups: list[str]
    excluded_ids: list[str]

    @classmethod
    def of(cls, manifest: str, trained: Sequence[ManifestItem], excluded: Sequence[ManifestItem],
           excluded_groups: Sequence[str] = ()) -> TrainingRecord:
        """The record of training on `trained`, the items of `manifest` less `excluded`."""
        return cls(manifest=str(manifest), items=len(trained), ids_sha256=ids_digest([item.id for item in trained]),
                   groups=_groups(trained), excluded_groups=sorted(excluded_groups),
                   excluded_ids=sorted({item.id for item in excluded}))

    def write(self, folder: str | os.PathLike) -> None:
        """``<folder>/training_data.json`` and its digest, each atomically."""
        write_json_verified(Path(folder) / RECORD_FILE, {"format": RECORD_FORMAT, **asdict(self)})

    @classmethod
    def read(cls, folder: str | os.PathLike) -> TrainingRecord | None:
        """The record in `folder`, verified; None when the folder has none.

        Raises:
            CorruptFileError: the record or its digest is damaged.
            ValueError: the record has another format or other fields.
        """
        path = Path(folder) / RECORD_FILE
        if not path.exists():
            return None
        data = read_json_verified(path, "the record of the model's training data", RECORD_REMEDY)
        if data.pop("format", None) != RECORD_FORMAT or set(data) != set(cls.__dataclass_fields__):
            raise ValueError(f"{path} is not a training record of format {RECORD_FORMAT} (fields "
                             f"{sorted(cls.__dataclass_fields__)}); {RECORD_REMEDY}.")
        return cls(**data)

    def describe(self) -> str:
        """One line: what was trained on and what was left out."""
        left_out = (f"without {self.excluded_groups}" if self.excluded_groups else "with nothing left out"
                    if not self.excluded_ids else f"without {len(self.excluded_ids)} listed item(s)")
        return f"{self.items} items of {self.manifest}, {left_out}"


def component_records(folder: str | os.PathLike) -> dict[str, TrainingRecord]:
    """The records of the components saved in `folder`'s subfolders (``<component>/training_data.json``), verified."""
    return {path.parent.name: TrainingRecord.read(path.parent)
            for path in sorted(Path(folder).glob(f"*/{RECORD_FILE}"))}


def check_components(folder: str | os.PathLike, manifest: str, forget: Sequence[ManifestItem]) -> None:
    """Refuse an oracle one of whose components was trained on items of the `forget` set of `manifest`.

    A component's record on another manifest cannot name the forget items and is not held against them.

    Raises:
        ValueError: naming the component, the forget items it trained on, and how to train it without them.
    """
    forget_ids = {item.id for item in forget}
    for component, record in component_records(folder).items():
        heard = sorted(forget_ids - set(record.excluded_ids))
        if Path(record.manifest).resolve() == Path(manifest).resolve() and heard:
            raise ValueError(
                f"The oracle {folder} is not the oracle of this run's forget set: its {component} was trained on "
                f"{record.describe()}, {len(heard)} of this run's forget item(s) among them (e.g. {heard[:5]}), so "
                f"the oracle is conditioned on what it should never have heard. Train the {component} without the "
                f"forget set too (on the toy world: configs/toy/clap_oracle.yaml), then the oracle on it.")


def check_oracle(folder: str | os.PathLike, record: TrainingRecord, manifest: str,
                 trained: Sequence[ManifestItem], forget: Sequence[ManifestItem]) -> None:
    """Refuse an oracle whose `record` is not training on `trained`: the run's `manifest` without its `forget` set,
    or one of whose components (`check_components`) trained on the forget set.

    Raises:
        ValueError: naming what the oracle left out, what the run forgets, and how to train the right oracle.
    """
    if record.ids_sha256 == ids_digest([item.id for item in trained]):
        check_components(folder, manifest, forget)
        return
    forget_groups = sorted({item.group for item in forget})
    forget_ids = {item.id for item in forget}
    excluded = set(record.excluded_ids)
    if excluded == forget_ids:
        problem = (f"it left out this run's forget set, but trained on other data ({record.items} items of "
                   f"{record.manifest}; this run's oracle trains on {len(trained)} items of {manifest})")
    else:
        seen = sorted(forget_ids - excluded)
        problem = (f"it was trained on {record.describe()}, while this run forgets {len(forget)} item(s) of "
                   f"{manifest} (groups {forget_groups})" + (f", {len(seen)} of which the oracle trained on (e.g. "
                                                              f"{seen[:5]})" if seen else ""))
    whole_groups = all(forget_groups) and not {item.group for item in trained} & set(forget_groups)
    leave_out = (f"data.init_args.exclude_groups: {forget_groups}" if whole_groups else
                 "data.init_args.exclude_manifest: a manifest of the forget set's items")
    raise ValueError(
        f"The oracle {folder} is not the oracle of this run's forget set: {problem}. Its column would compare the "
        f"run with a model that did not forget what this run forgets. Train this forget set's oracle: a copy of its "
        f"training config (configs/toy/oracle.yaml on the toy world, about 24 min on 2 CPU cores, after its text "
        f"encoder, configs/toy/clap_oracle.yaml, 11 min, trained the same way) with data.init_args.manifest: "
        f"{manifest}, {leave_out}, and the SavePretrained dirpath set to a new folder; then pass that folder as the "
        f"evaluation's oracle.")

