"""What a model was trained on (`TrainingRecord`), as `AudioTextDataModule` records it and `SavePretrained` keeps it,
and the check that refuses an oracle of another forget set (`check_oracle`)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from callbacks import SavePretrained
from datamodules import AudioTextDataModule, ForgetRetainDataModule, ToyCorpus
from datamodules.manifest import write_manifest
from datamodules.provenance import RECORD_FILE, TrainingRecord, check_oracle, ids_digest
from lightning_modules.io import CorruptFileError

AURORA, COPPER, KESTREL = "Aurora Vale", "Copper Lanterns", "Kestrel Drive"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3 artists x 3 member tracks (+ 1 held-out each) of 0.25 s."""
    root = tmp_path_factory.mktemp("corpus") / "toy"
    ToyCorpus(root=str(root), num_artists=3, tracks_per_artist=4, heldout_per_artist=1, duration=0.25).prepare()
    return root


def oracle_record(corpus: Path, **exclude) -> TrainingRecord:
    dm = AudioTextDataModule(manifest=str(corpus / "train.jsonl"), num_samples=4000, **exclude)
    dm.setup("fit")
    return dm.training_record()


def forget_run(corpus: Path, **forget) -> ForgetRetainDataModule:
    dm = ForgetRetainDataModule(manifest=str(corpus / "train.jsonl"), heldout_manifest=str(corpus / "heldout.jsonl"),
                                num_samples=4000, **forget)
    dm.setup("validate")
    return dm


def test_the_record_says_what_was_trained_and_what_was_left_out(corpus):
    record = oracle_record(corpus, exclude_groups=[KESTREL])

    assert record.items == 6 and record.groups == {AURORA: 3, COPPER: 3}
    assert record.excluded_groups == [KESTREL] and record.excluded_ids == ["kestrel_drive-000", "kestrel_drive-001",
                                                                            "kestrel_drive-002"]
    assert record.describe() == f"6 items of {corpus / 'train.jsonl'}, without ['Kestrel Drive']"
    assert ids_digest(["b", "a", "a"]) == ids_digest(["a", "b"]) != ids_digest(["a"])  # a set, in any order


def test_exclude_ids_and_exclude_manifest_leave_out_tracks(corpus, tmp_path):
    by_ids = oracle_record(corpus, exclude_ids=["aurora_vale-001", "copper_lanterns-002"])
    write_manifest([item for item in forget_run(corpus, forget_groups=[AURORA]).sets["forget"]
                    if item.id == "aurora_vale-001"], tmp_path / "leave_out.jsonl")
    by_manifest = oracle_record(corpus, exclude_manifest=str(tmp_path / "leave_out.jsonl"),
                                exclude_ids=["copper_lanterns-002"])

    assert by_ids == by_manifest and by_ids.items == 7 and by_ids.excluded_groups == []
    assert by_ids.excluded_ids == ["aurora_vale-001", "copper_lanterns-002"]
    with pytest.raises(ValueError, match=r"1 id\(s\) of exclude_ids are not in .*train.jsonl: \['nobody-000'\]"):
        oracle_record(corpus, exclude_ids=["nobody-000"])


def test_the_record_round_trips_verified(corpus, tmp_path):
    record = oracle_record(corpus, exclude_groups=[AURORA])
    record.write(tmp_path)

    assert TrainingRecord.read(tmp_path) == record
    assert TrainingRecord.read(tmp_path / "elsewhere") is None  # no record: the caller decides
    path = tmp_path / RECORD_FILE
    path.write_text(path.read_text().replace('"items": 6', '"items": 5'))
    with pytest.raises(CorruptFileError, match="training data"):
        TrainingRecord.read(tmp_path)


def test_the_right_oracle_passes_and_any_other_is_refused_naming_both(corpus):
    run = forget_run(corpus, forget_groups=[KESTREL])
    manifest = str(corpus / "train.jsonl")
    check_oracle("oracle", oracle_record(corpus, exclude_groups=[KESTREL]), manifest, *run.oracle_training_set())
    # the same items left out by id is the same oracle
    ids = [item.id for item in run.sets["forget"]]
    check_oracle("oracle", oracle_record(corpus, exclude_ids=ids), manifest, *run.oracle_training_set())

    with pytest.raises(ValueError, match=r"The oracle other is not the oracle of this run's forget set: it was "
                                         r"trained on 6 items of .*, without \['Aurora Vale'\], while this run "
                                         r"forgets 3 item\(s\) of .* \(groups \['Kestrel Drive'\]\), 3 of which the "
                                         r"oracle trained on .*exclude_groups: \['Kestrel Drive'\]"):
        check_oracle("other", oracle_record(corpus, exclude_groups=[AURORA]), manifest, *run.oracle_training_set())
    # an oracle trained without *more* than the forget set is not its oracle either
    with pytest.raises(ValueError, match="not the oracle of this run's forget set"):
        check_oracle("o", oracle_record(corpus, exclude_groups=[KESTREL, AURORA]), manifest, *run.oracle_training_set())
    # a forget set of some tracks: the remedy leaves out those tracks, not their artist
    some = forget_run(corpus, forget_ids=ids[:2])
    with pytest.raises(ValueError, match="exclude_manifest: a manifest of the forget set's items"):
        check_oracle("o", oracle_record(corpus, exclude_groups=[KESTREL]), manifest, *some.oracle_training_set())


def test_an_oracle_of_other_data_is_refused_although_it_left_out_the_forget_set(corpus, tmp_path):
    run = forget_run(corpus, forget_groups=[KESTREL])
    trained, forget = run.oracle_training_set()
    other = TrainingRecord.of("other.jsonl", trained[:-1], forget, [KESTREL])

    with pytest.raises(ValueError, match=r"left out this run's forget set, but trained on other data \(5 items of "
                                         r"other.jsonl; this run's oracle trains on 6 items"):
        check_oracle("o", other, str(corpus / "train.jsonl"), trained, forget)


def test_save_pretrained_keeps_the_record_beside_the_weights(corpus, tmp_path):
    dm = AudioTextDataModule(manifest=str(corpus / "train.jsonl"), exclude_groups=[COPPER], num_samples=4000)
    dm.setup("fit")
    saved = []
    module = SimpleNamespace(save_pretrained=lambda folder: saved.append((Path(folder) / "weights").write_text("w")))
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=None, is_global_zero=True, datamodule=dm,
                              strategy=SimpleNamespace(barrier=lambda name: None))
    SavePretrained(str(tmp_path / "oracle")).on_fit_end(trainer, module)

    assert (tmp_path / "oracle" / "weights").read_text() == "w"
    assert TrainingRecord.read(tmp_path / "oracle") == dm.training_record()
    # an unlearning run's data keeps no record: its model cannot pass for an oracle
    trainer.datamodule = forget_run(corpus, forget_groups=[COPPER])
    SavePretrained(str(tmp_path / "unlearned")).on_fit_end(trainer, module)
    assert TrainingRecord.read(tmp_path / "unlearned") is None


def test_record_training_data_writes_the_record_a_training_config_implies(tmp_path, tiny_corpus, tiny_model_dir):
    """For a model trained before records existed: the record from its config, into its SavePretrained folder."""
    import yaml

    from scripts.record_training_data import record

    oracle = tmp_path / "oracle"
    oracle.mkdir()
    config = {"trainer": {"callbacks": [{"class_path": "callbacks.SavePretrained",
                                         "init_args": {"dirpath": str(oracle)}}]},
              "model": {"class_path": "lightning_modules.training.TextToMusicTraining",
                        "init_args": {"model": {"class_path": "lightning_modules.models.ToyTextToMusic",
                                                "init_args": {"pretrained": str(tiny_model_dir)}}}},
              "data": {"class_path": "datamodules.AudioTextDataModule",
                       "init_args": {"manifest": str(tiny_corpus.train_manifest),
                                     "exclude_groups": [tiny_corpus.artists[1]]}}}
    path = tmp_path / "oracle.yaml"
    path.write_text(yaml.safe_dump(config))

    assert record(str(path)) == oracle / RECORD_FILE
    written = TrainingRecord.read(oracle)
    assert written.excluded_groups == [tiny_corpus.artists[1]] and list(written.groups) == [tiny_corpus.artists[0]]
    with pytest.raises(SystemExit, match="no such model folder"):
        record(str(path), into=str(tmp_path / "missing"))


def test_an_oracle_whose_text_encoder_heard_the_forget_set_is_refused(corpus, tmp_path):
    """The toy model's text encoder is a CLAP trained on the same corpus: its own record, kept in the oracle's
    ``text_encoder/`` subfolder, is held against the forget set too."""
    run = forget_run(corpus, forget_groups=[KESTREL])
    manifest = str(corpus / "train.jsonl")
    record = oracle_record(corpus, exclude_groups=[KESTREL])
    for name, component in [("heard", oracle_record(corpus)),
                            ("clean", oracle_record(corpus, exclude_groups=[KESTREL])),
                            ("elsewhere", TrainingRecord.of("other.jsonl", run.sets["forget"], []))]:
        record.write(tmp_path / name)
        component.write(tmp_path / name / "text_encoder")

    with pytest.raises(ValueError, match=r"its text_encoder was trained on 9 items of .*train.jsonl, with nothing "
                                         r"left out, 3 of this run's forget item\(s\) among them .*configs/toy/"
                                         r"clap_oracle.yaml"):
        check_oracle(tmp_path / "heard", record, manifest, *run.oracle_training_set())
    check_oracle(tmp_path / "clean", record, manifest, *run.oracle_training_set())
    # a component trained on another manifest cannot name this run's items: not held against them
    check_oracle(tmp_path / "elsewhere", record, manifest, *run.oracle_training_set())


def test_the_toy_model_keeps_its_text_encoders_record(corpus, tmp_path, tiny_clap_dir):
    """A toy model built on a CLAP folder with a record saves that record with its text encoder, and a model loaded
    from that folder saves it again; a CLAP without a record leaves none."""
    import shutil

    from lightning_modules.models import ToyArchitecture, ToyTextToMusic

    clap = tmp_path / "clap"
    shutil.copytree(tiny_clap_dir, clap)
    component = oracle_record(corpus, exclude_groups=[KESTREL])
    component.write(clap)
    architecture = ToyArchitecture(num_samples=4000, n_mels=32, block_out_channels=(8, 16), attention_head_dim=4)

    ToyTextToMusic(text_encoder=str(clap), architecture=architecture).save_pretrained(tmp_path / "oracle")
    assert TrainingRecord.read(tmp_path / "oracle" / "text_encoder") == component
    ToyTextToMusic.from_pretrained(tmp_path / "oracle").save_pretrained(tmp_path / "again")
    assert TrainingRecord.read(tmp_path / "again" / "text_encoder") == component
    ToyTextToMusic(text_encoder=str(tiny_clap_dir), architecture=architecture).save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "text_encoder" / RECORD_FILE).exists()
