"""`ForgetRetainDataModule` (forget / retain / held-out sets and their loaders) and `AudioTextDataModule`."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.utilities import CombinedLoader
from safetensors.torch import load_file

from datamodules import AudioTextDataModule, ForgetRetainDataModule, ManifestItem, ToyCorpus, read_manifest
from datamodules.base import per_process_batch
from datamodules.manifest import write_manifest
from datamodules.sampler import ResumableLoader
from lightning_modules.unlearning.base import UnlearningModule
from tests.conftest import REPO, write_config

AURORA, COPPER, KESTREL = "Aurora Vale", "Copper Lanterns", "Kestrel Drive"
TINY = {"num_artists": 3, "tracks_per_artist": 4, "heldout_per_artist": 1, "duration": 0.25}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A read-only toy corpus: 3 artists x (3 members + 1 held-out) tracks of 0.25 s."""
    root = tmp_path_factory.mktemp("corpus") / "toy"
    ToyCorpus(root=str(root), **TINY).prepare()
    return root


@pytest.fixture
def corpus_copy(corpus, tmp_path) -> Path:
    """A copy of the corpus that a test may damage."""
    return Path(shutil.copytree(corpus, tmp_path / "toy"))


def make_dm(root: Path, **kwargs) -> ForgetRetainDataModule:
    if not {"forget_groups", "forget_ids", "forget_manifest"} & set(kwargs):
        kwargs["forget_groups"] = [AURORA]
    kwargs = {"manifest": str(root / "train.jsonl"), "heldout_manifest": str(root / "heldout.jsonl"),
              "sample_rate": 16000, "num_samples": 4000, "batch_size": 2, **kwargs}
    return ForgetRetainDataModule(**kwargs)


def ready(dm: ForgetRetainDataModule) -> ForgetRetainDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def ids(items) -> set[str]:
    return {item.id for item in items}


def members(root: Path, group: str | None = None) -> list[ManifestItem]:
    return [item for item in read_manifest(root / "train.jsonl") if group is None or item.group == group]


def test_forget_group_splits_members_into_forget_and_retain(corpus):
    dm = ready(make_dm(corpus))

    forget, retain, heldout = dm.sets["forget"], dm.sets["retain"], dm.sets["heldout"]
    assert ids(forget) == {"aurora_vale-000", "aurora_vale-001", "aurora_vale-002"}
    assert ids(forget) == ids(members(corpus, AURORA))
    assert ids(retain) == ids(members(corpus)) - ids(forget) and len(retain) == 6
    assert not ids(forget) & ids(retain)
    assert ids(heldout) == ids(read_manifest(corpus / "heldout.jsonl")) and len(heldout) == 3


def test_train_dataloader_yields_forget_and_retain_batches(corpus):
    loader = ready(make_dm(corpus)).train_dataloader()
    assert isinstance(loader, CombinedLoader)

    # Iterated directly, Lightning 2.x's CombinedLoader yields (batch, batch_idx, dataloader_idx).
    steps = list(iter(loader))

    assert len(steps) == 3  # max_size_cycle: 6 retain items in batches of 2; the 3 forget items are cycled
    batch, batch_idx, dataloader_idx = steps[0]
    assert (batch_idx, dataloader_idx) == (0, 0)
    assert set(batch) == {"forget", "retain"}
    for split, want in (("forget", {AURORA}), ("retain", {COPPER, KESTREL})):
        part = batch[split]
        assert part["audio"].shape == part["mask"].shape == (2, 4000)
        assert part["split"] == [split, split]
        assert set(part["group"]) <= want
    retain_seen = [item_id for step in steps for item_id in step[0]["retain"]["id"]]
    assert sorted(retain_seen) == sorted(ids(members(corpus)) - ids(members(corpus, AURORA)))


def test_eval_datasets_are_named_stable_and_capped(corpus):
    dm = ready(make_dm(corpus))

    datasets = dm.eval_datasets()

    assert list(datasets) == ["forget", "retain", "heldout"]
    for split, dataset in datasets.items():
        assert dataset.split == split and dataset[0]["split"] == split
        assert [item.id for item in dataset.items] == sorted(ids(dm.sets[split]))  # every set, in id order
    assert [ds.items for ds in dm.eval_datasets().values()] == [ds.items for ds in datasets.values()]

    capped = ready(make_dm(corpus, max_eval_items=2, seed=7))
    first = {split: [item.id for item in ds.items] for split, ds in capped.eval_datasets().items()}
    assert {split: len(items) for split, items in first.items()} == {"forget": 2, "retain": 2, "heldout": 2}
    for split, items in first.items():
        assert set(items) <= ids(capped.sets[split]) and items == sorted(items)
    again = ready(make_dm(corpus, max_eval_items=2, seed=7))  # another process or run
    assert {split: [item.id for item in ds.items] for split, ds in again.eval_datasets().items()} == first
    assert [len(loader.dataset) for loader in capped.val_dataloader()] == [2, 2, 2]


def test_forget_ids_select_the_forget_set(corpus):
    dm = ready(make_dm(corpus, forget_ids=["kestrel_drive-001", "aurora_vale-000", "kestrel_drive-001"]))

    assert [item.id for item in dm.sets["forget"]] == ["kestrel_drive-001", "aurora_vale-000"]
    assert len(dm.sets["retain"]) == 7 and not ids(dm.sets["retain"]) & ids(dm.sets["forget"])


def test_forget_manifest_selects_the_forget_set(corpus, tmp_path):
    forget_manifest = tmp_path / "forget.jsonl"
    write_manifest(members(corpus, COPPER), forget_manifest)

    dm = ready(make_dm(corpus, forget_manifest=str(forget_manifest)))

    assert ids(dm.sets["forget"]) == ids(members(corpus, COPPER))
    assert {item.group for item in dm.sets["retain"]} == {AURORA, KESTREL}


def test_retain_manifest_replaces_the_default_retain_set(corpus, tmp_path):
    retain_manifest = tmp_path / "retain.jsonl"
    write_manifest(members(corpus, KESTREL), retain_manifest)

    dm = ready(make_dm(corpus, retain_manifest=str(retain_manifest)))

    assert ids(dm.sets["retain"]) == ids(members(corpus, KESTREL))


def test_near_groups_split_the_evaluated_retain_set_but_not_the_training_one(corpus):
    dm = ready(make_dm(corpus, forget_groups=[KESTREL], near_groups=[COPPER], max_eval_items=None))

    evaluated = {split: ids(dataset.items) for split, dataset in dm.eval_datasets().items()}
    assert list(evaluated) == ["forget", "near", "retain", "heldout"]
    assert evaluated["near"] == ids(members(corpus, COPPER)) and evaluated["retain"] == ids(members(corpus, AURORA))
    assert ids(dm.split_dataset("retain").items) == ids(members(corpus, COPPER) + members(corpus, AURORA))
    assert list(ready(make_dm(corpus, forget_groups=[KESTREL])).eval_datasets()) == ["forget", "retain", "heldout"]


@pytest.mark.parametrize(("near", "message"), [([KESTREL], "not groups of the retain set"),
                                               ([COPPER, AURORA], "no far group is left")])
def test_near_groups_must_be_some_of_the_retained_groups(corpus, near, message):
    with pytest.raises(ValueError, match=message):
        ready(make_dm(corpus, forget_groups=[KESTREL], near_groups=near))


def test_unknown_group_lists_the_known_groups(corpus):
    dm = make_dm(corpus, forget_groups=["Nobody Famous"])

    with pytest.raises(ValueError, match=r"\['Nobody Famous'\] are not groups of .*train\.jsonl; its groups: "
                                         r"\['Aurora Vale', 'Copper Lanterns', 'Kestrel Drive'\]"):
        dm.setup("fit")


def test_unknown_forget_id_is_named(corpus):
    with pytest.raises(ValueError, match=r"1 id\(s\) of forget_ids are not in .*\['no-such-track'\]"):
        make_dm(corpus, forget_ids=["aurora_vale-000", "no-such-track"]).setup("fit")


def test_forget_manifest_of_non_members_is_refused(corpus):
    heldout = str(corpus / "heldout.jsonl")

    with pytest.raises(ValueError, match=rf"3 id\(s\) of {re.escape(heldout)} are not in .*'aurora_vale-003'"):
        make_dm(corpus, forget_manifest=heldout).setup("fit")


@pytest.mark.parametrize("selection", [
    {},
    {"forget_groups": [AURORA], "forget_ids": ["aurora_vale-000"]},
    {"forget_ids": ["aurora_vale-000"], "forget_manifest": "forget.jsonl"},
    {"forget_groups": [AURORA], "forget_ids": ["aurora_vale-000"], "forget_manifest": "forget.jsonl"},
])
def test_exactly_one_forget_selection_is_required(tmp_path, selection):
    expected = re.escape(str(list(selection) or "none"))
    with pytest.raises(ValueError, match=rf"exactly one of forget_groups, forget_ids or forget_manifest; "
                                         rf"got {expected}"):
        ForgetRetainDataModule(manifest=str(tmp_path / "train.jsonl"), **selection)


def test_empty_forget_manifest_is_an_error(corpus, tmp_path):
    empty = tmp_path / "forget.jsonl"
    empty.write_text("")

    with pytest.raises(ValueError, match=r"The forget set is empty: no item of .*train\.jsonl"):
        make_dm(corpus, forget_manifest=str(empty)).setup("fit")


def test_forgetting_everything_leaves_an_empty_retain_set(corpus):
    with pytest.raises(ValueError, match="The retain set is empty"):
        make_dm(corpus, forget_groups=[AURORA, COPPER, KESTREL]).setup("fit")


def test_retain_manifest_overlapping_the_forget_set_is_refused(corpus, tmp_path):
    retain_manifest = tmp_path / "retain.jsonl"
    write_manifest(members(corpus, COPPER) + members(corpus, AURORA)[1:2], retain_manifest)

    with pytest.raises(ValueError, match=r"1 item\(s\) are in both the forget set and .*retain\.jsonl: "
                                         r"\['aurora_vale-001'\]"):
        make_dm(corpus, retain_manifest=str(retain_manifest)).setup("fit")


def test_heldout_items_that_are_members_are_refused(corpus, tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    write_manifest(read_manifest(corpus / "heldout.jsonl") + members(corpus, KESTREL)[:1], heldout)

    with pytest.raises(ValueError, match=r"1 held-out item\(s\) of .*heldout\.jsonl are also in "
                                         r".*\['kestrel_drive-000'\]"):
        make_dm(corpus, heldout_manifest=str(heldout)).setup("fit")


def test_missing_audio_files_are_listed_before_training(corpus_copy):
    gone = [corpus_copy / "audio" / "copper_lanterns-001.wav", corpus_copy / "audio" / "kestrel_drive-002.wav"]
    for path in gone:
        path.unlink()

    with pytest.raises(FileNotFoundError, match=r"2 audio file\(s\) of the retain set are missing") as info:
        make_dm(corpus_copy).setup("fit")
    assert all(str(path) in str(info.value) for path in gone)


def test_undecodable_audio_file_is_named_before_training(corpus_copy):
    bad = corpus_copy / "audio" / "aurora_vale-002.wav"
    bad.write_bytes(b"not audio at all" * 32)

    with pytest.raises(ValueError, match=rf"Cannot decode {re.escape(str(bad))} \(item 'aurora_vale-002' of the "
                                         r"forget set\)"):
        make_dm(corpus_copy).setup("fit")


def test_source_is_prepared_by_prepare_data(tmp_path):
    root = tmp_path / "generated"
    dm = make_dm(root, source=ToyCorpus(root=str(root), **TINY))
    assert not root.exists()

    ready(dm)

    assert len(dm.sets["forget"]) == 3 and len(dm.sets["heldout"]) == 3


def test_audio_text_module_excludes_groups(corpus):
    dm = AudioTextDataModule(manifest=str(corpus / "train.jsonl"), val_manifest=str(corpus / "heldout.jsonl"),
                             exclude_groups=[AURORA], batch_size=2, sample_rate=16000, num_samples=4000)
    dm.setup("fit")

    assert {item.group for item in dm.train_set.items} == {COPPER, KESTREL} and len(dm.train_set) == 6
    assert {item.group for item in dm.val_set.items} == {COPPER, KESTREL} and len(dm.val_set) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (2, 4000) and AURORA not in batch["group"]
    assert len(dm.train_dataloader()) == 3 and len(dm.val_dataloader()) == 1


def test_audio_text_module_without_val_manifest_has_no_val_loader(corpus):
    dm = AudioTextDataModule(manifest=str(corpus / "train.jsonl"), num_samples=4000)
    dm.setup("fit")

    assert len(dm.train_set) == 9 and dm.val_set is None and dm.val_dataloader() == []


def test_audio_text_module_refuses_an_unknown_exclude_group(corpus):
    dm = AudioTextDataModule(manifest=str(corpus / "train.jsonl"), exclude_groups=["Nobody Famous"])

    with pytest.raises(ValueError, match=r"exclude_groups \['Nobody Famous'\] are not groups of .*its groups: "
                                         r"\['Aurora Vale', 'Copper Lanterns', 'Kestrel Drive'\]"):
        dm.setup("fit")


def test_audio_text_module_refuses_excluding_everything(corpus):
    dm = AudioTextDataModule(manifest=str(corpus / "train.jsonl"), exclude_groups=[AURORA, COPPER, KESTREL])

    with pytest.raises(ValueError, match="No item of .*train.jsonl is left after excluding"):
        dm.setup("fit")


def test_audio_text_module_prepares_its_source(tmp_path):
    root = tmp_path / "generated"
    dm = AudioTextDataModule(manifest=str(root / "train.jsonl"), num_samples=4000,
                             source=ToyCorpus(root=str(root), **TINY))

    dm.prepare_data()
    dm.setup("fit")

    assert (root / "corpus.json").is_file() and len(dm.train_set) == 9


# ------------------------------------------------------------------------------------------ global batch, resuming
def test_global_batch_size_is_split_over_the_processes_or_refused():
    assert per_process_batch(None, None, 4, default=8) == 8
    assert per_process_batch(3, None, 4, default=8) == 3  # per process: the global batch is 12
    assert per_process_batch(None, 8, 4, default=8) == 2
    assert per_process_batch(2, 8, 4, default=8) == 2  # both given, consistent
    with pytest.raises(ValueError, match=r"global_batch_size=8 does not divide evenly over 3 processes"):
        per_process_batch(None, 8, 3, default=8)
    with pytest.raises(ValueError, match=r"batch_size=4 \(per process\) and global_batch_size=8 disagree on 4"):
        per_process_batch(4, 8, 4, default=8)
    with pytest.raises(ValueError, match="global_batch_size must be at least 1, got 0"):
        ForgetRetainDataModule(manifest="m.jsonl", forget_groups=[AURORA], global_batch_size=0)


def test_processes_share_each_step_of_the_single_process_order_and_resume_mid_pass():
    items = list(range(12))
    single = [batch.tolist() for batch in ResumableLoader(items, 4, seed=3)]
    ranks = [[batch.tolist() for batch in ResumableLoader(items, 2, seed=3, rank=rank, world_size=2)]
             for rank in range(2)]
    assert [sorted(a + b) for a, b in zip(*ranks, strict=True)] == [sorted(batch) for batch in single]
    assert single != [items[i:i + 4] for i in range(0, 12, 4)]  # shuffled

    loader = ResumableLoader(items, 5, seed=3)
    first_pass = iter(loader)
    next(first_pass)
    state = loader.state_dict()
    rest = [batch.tolist() for batch in first_pass] + [batch.tolist() for batch in loader]  # and a second pass
    resumed = ResumableLoader(items, 5, seed=3)
    resumed.load_state_dict(state)
    assert [batch.tolist() for batch in resumed] + [batch.tolist() for batch in resumed] == rest
    assert rest[2:] != rest[:2]  # each pass its own permutation


class FixedNoiseDifference(UnlearningModule):
    """Gradient Difference at timesteps and noise fixed by item id and step, not drawn from each process's random
    state: what remains to compare between one process and two is the data order and the gradient averaging."""

    def objective(self, forget: dict, retain: dict) -> dict:
        forget_loss, retain_loss = (self.model.loss(batch, **self.model.fixed_loss_inputs(batch["id"],
                                                                                          self.global_step)).mean()
                                    for batch in (forget, retain))
        return {"loss": retain_loss - forget_loss, "forget_loss": forget_loss.detach(),
                "retain_loss": retain_loss.detach()}


def _weights(folder: Path) -> dict:
    return {key: value for file in sorted(folder.rglob("*.safetensors")) for key, value in load_file(file).items()}


@pytest.mark.ddp
def test_two_processes_at_the_same_global_batch_train_what_one_does(tmp_path, tiny_corpus, tiny_model_dir):
    """2 forget + 2 retain items per step, 3 steps of SGD: one process takes 2 of each, each of two DDP processes 1."""
    weights = {}
    for name, flags in (("single", ()), ("ddp", ("--trainer.strategy=ddp", "--trainer.devices=2"))):
        config = write_config(tmp_path / name, tiny_corpus, tiny_model_dir, limit_val_batches=0,
                              num_sanity_val_steps=0)
        settings = yaml.safe_load(config.read_text())
        settings["trainer"]["callbacks"] = [{"class_path": "callbacks.SavePretrained"}]
        settings["model"]["class_path"] = "tests.datamodules.test_forget_retain.FixedNoiseDifference"
        settings["data"]["init_args"]["global_batch_size"] = settings["data"]["init_args"].pop("batch_size")
        config.write_text(yaml.safe_dump(settings))
        command = [sys.executable, "train.py", "fit", "--config", str(config), "--run_name", name, *flags]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        world = 2 if flags else 1
        share = 2 // world
        assert (f"Training batches: {share} forget + {share} retain items per process x {world} process(es) = 2 + 2 "
                "per optimizer step.") in result.stderr
        weights[name] = _weights(tmp_path / name / "logs" / "lightning_logs" / name / "pretrained")
    base = _weights(tiny_model_dir)
    moved = max((weights["single"][key] - base[key]).abs().max().item() for key in base)
    gap = max((weights["ddp"][key] - weights["single"][key]).abs().max().item() for key in base)
    assert moved > 1e-4  # training moved the weights (measured: 7.1e-3)
    # measured: 6.0e-8 (about one float32 rounding): gloo averages two half-batch gradients, one process sums the batch
    assert gap < 1e-6
