"""`UnlearningEvaluation`: the unlearning report, measured before training, every N steps and at the end, beside the
oracle retrained without the forget set.

For each evaluation set of the DataModule (forget, retain, held-out) it measures the per-item loss at timesteps and
noise fixed per item id and the loss-based membership-inference AUC against the held-out non-members; and, given a
CLAP, it generates from a fixed subset of the set's captions with fixed per-prompt seeds and measures FAD against the
set's audio (FAD and KAD), CLAP score, recognition of each prompt's group (the forgotten artist), memorization of
forget-set tracks and the KL divergence of tag distributions. Every number keeps its per-item values (losses, clips'
embeddings, recognition outcomes, similarities), gathered from all processes in item order, so every number comes with
a seeded percentile bootstrap interval, and the differences after − before and after − oracle with paired ones (the
same items, prompts and seeds, drawn together); none of it depends on the number of devices. The methodology follows
the opt-out study on MusicGen and the evaluation of unlearning against an oracle (see ../shared/reference/papers.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from callbacks.html_report import write_html_report
from callbacks.measuring import fixed_losses, fixed_noise_seed, measuring_precision, per_item_values
from callbacks.oracle_scores import Replicates, scores_against_oracle
from callbacks.plots import mel_png, metric_bars, png_array, tradeoff_figure
from callbacks.report import (
    describe_items,
    describe_model,
    describe_weights,
    gap_to_oracle,
    markdown_table,
    run_hyperparameters,
)
from datamodules.interfaces import DefinesOracle, HasEvalSets, require
from datamodules.provenance import RECORD_FILE, TrainingRecord, check_oracle
from lightning_modules.io import (
    CorruptFileError,
    TensorField,
    cache_key,
    default_cache_dir,
    load_verified,
    reusable,
    save_verified,
    write_json_atomic,
    write_text_atomic,
)
from lightning_modules.metrics import (
    AudioEmbedder,
    AudioTagger,
    CLAPScore,
    FrechetAudioDistance,
    KernelAudioDistance,
    Memorization,
    Recognition,
    TagKLDivergence,
    TextAudioEmbedder,
    ZeroShotTagger,
)
from lightning_modules.metrics.fad import reference_key, reference_statistics
from lightning_modules.metrics.functional import (
    Samples,
    bootstrap_replicates,
    centred,
    pairwise_membership_auc,
    percentile_interval,
)
from lightning_modules.models.base import TextToMusicModel
from lightning_modules.passes import measuring, progress, timed

log = logging.getLogger(__name__)

MEASUREMENT_FORMAT = 3  # what a cached measurement holds; raise it when that changes, so old caches are not read
Results = dict[str, dict[str, float]]  # split -> metric -> value
PerItem = dict[str, dict[str, list[Samples]]]  # split -> measure -> its groups of per-item values (`bootstrap`)
Intervals = dict[str, dict[str, dict[str, float]]]  # split -> metric -> value, low, high, n


class Estimator(NamedTuple):
    """A measure's statistic of its groups of per-item values, and how to bootstrap it: in one call for a batch of
    resamples (`batched`), with the replicates centred on the value and clamped at `minimum` (`centred`: resampling
    itself biases the statistic, as it does FAD)."""

    statistic: Callable[..., Any]
    batched: bool = False
    centred: bool = False
    minimum: float | None = None


@dataclass
class Measurement:
    """One model's numbers, the per-item values they are statistics of, and per set the first `log_audio` generations
    of the first process, as (prompt, `(channels, samples)` audio) pairs: what TensorBoard and the report play."""

    results: Results
    samples: PerItem = field(default_factory=dict)
    clips: dict[str, list[tuple[str, Tensor]]] = field(default_factory=dict)


class UnlearningEvaluation(Callback):
    """Evaluates the model at fit start ("before"), every `every_n_train_steps` and at fit end ("after"), and in
    ``validate`` / ``test`` ("model"); writes ``results.json`` and ``results.md`` into the run's log dir, every number
    with its bootstrap interval.

    Args:
        clap: a CLAP embedder; enables generation and the CLAP score, recognition, memorization and (without a
            `tagger`) KL metrics. Without it only losses and membership inference are measured.
        fad_embedder: the embedder of FAD (e.g. VGGish, PANN); default `clap`.
        tagger: the classifier of the KL metric (e.g. `PANNTagger`); default the CLAP zero-shot tagger over the
            DataModule's groups.
        recognition_template: the zero-shot prompt of a group, with ``{}`` for its name.
        judge: a second classifier over the groups that shares nothing with the CLAP (e.g. the toy world's
            `FeatureTagger`); adds ``recognition_judge``, so recognition never rests on one judge.
        num_prompts: generations per set, from captions evenly spaced over the set's evaluation items; more than the set
            has items cycles through them, each generation with its own seed.
        every_n_train_steps: also evaluate every this many optimizer steps; 0 for start and end only.
        seed: generation uses seed ``seed + i`` for prompt ``i``; losses use it for their timesteps and noise, and the
            bootstrap for its resamples; default the module's ``eval_seed``.
        num_inference_steps: sampling steps; default the model's.
        guidance_scale: classifier-free guidance; default the model's.
        batch_size: prompts or items per batch.
        memorization_threshold: highest CLAP similarity to a forget track above which a generation counts as a copy.
        oracle: folder of the oracle (the same backend retrained without the forget set); evaluated once and cached.
            Its record of its training data (``training_data.json``, see `datamodules.provenance`) must show it trained
            on the run's training manifest without exactly the run's forget set, or the run stops before training.
        oracle_unchecked: accept an oracle that has no such record (one trained before records existed, or
            elsewhere); the report then says its provenance is unchecked. A record that contradicts the forget set
            is refused either way.
        base: folder of the model before unlearning, for the "before" column of ``validate`` / ``test`` runs.
        log_audio: clips per set (of the first process) logged to TensorBoard with their mel spectrograms.
        cache_dir: cache of reference embeddings and oracle results; default ``$TTM_UNLEARNING_CACHE`` or
            ``~/.cache/ttm_unlearning``.
        resamples: bootstrap resamples of every interval (items, prompts or clips drawn with replacement).
        confidence: level of the percentile intervals.
        cache_before: read "before" from the cache when a run started from the same model at the same settings (every
            method and seed from one base model measures it once); the model is described by what its
            ``save_pretrained`` writes, into a temporary folder (``$TMPDIR``: as much disk as the weights, seconds for a
            billion parameters). False measures "before" in every fit.
    """

    def __init__(
        self,
        clap: TextAudioEmbedder | None = None,
        fad_embedder: AudioEmbedder | None = None,
        tagger: AudioTagger | None = None,
        recognition_template: str = "a piece by {}",
        judge: AudioTagger | None = None,
        num_prompts: int = 16,
        every_n_train_steps: int = 0,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        batch_size: int = 16,
        memorization_threshold: float = 0.9,
        oracle: str | None = None,
        oracle_unchecked: bool = False,
        base: str | None = None,
        log_audio: int = 2,
        cache_dir: str | None = None,
        resamples: int = 1000,
        confidence: float = 0.95,
        cache_before: bool = True,
    ) -> None:
        for name, value in (("num_prompts", num_prompts), ("batch_size", batch_size), ("resamples", resamples)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence}.")
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be 0 (off) or positive, got {every_n_train_steps}.")
        for name, path in (("oracle", oracle), ("base", base)):
            if path is not None and not Path(path).is_dir():
                raise FileNotFoundError(f"{name} folder {path} not found; give the folder the model was saved to.")
        if (fad_embedder is not None or tagger is not None or judge is not None) and clap is None:
            raise ValueError("fad_embedder, tagger and judge measure generations, which need a `clap` embedder as "
                             "well.")
        self.clap = clap
        self.fad_embedder = fad_embedder or clap
        self.tagger = tagger
        self.recognition_template = recognition_template
        self.judge = judge
        self.num_prompts = num_prompts
        self.every_n_train_steps = every_n_train_steps
        self.seed = seed
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size
        self.memorization_threshold = memorization_threshold
        self.oracle = oracle
        self.oracle_unchecked = oracle_unchecked
        self.oracle_provenance: str | None = None  # what the oracle's record says, once `setup` checked it
        self.base = base
        self.log_audio = log_audio
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.resamples = resamples
        self.confidence = confidence
        self.cache_before = cache_before
        self.columns: dict[str, Results] = {}
        self.samples: dict[str, PerItem] = {}  # column -> its per-item values
        self.clips: dict[str, dict[str, list[tuple[str, Tensor]]]] = {}  # column -> set -> (prompt, audio) pairs
        self.mels: dict[str, dict[str, list[bytes]]] = {}  # column -> set -> each clip's mel spectrogram (PNG)
        self._latest: tuple[int, Measurement] | None = None  # the last evaluation during training, with its step
        self.history: list[dict[str, Any]] = []
        self.timing: dict[str, Any] = {}
        self.items_per_step: dict[str, int] = {}  # training items per optimizer step over all processes, per set
        # training time and first step of the fit, carried through checkpoints so a resumed fit reports its whole cost
        self._clock: dict[str, float] = {"start": time.perf_counter(), "evaluating": 0.0, "carried": 0.0,
                                         "start_step": 0}
        self.metrics: dict[str, dict[str, Any]] = {}
        self._references_ready = False

    # ----------------------------------------------------------------------------------------------------- set-up
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        require(datamodule, HasEvalSets, "UnlearningEvaluation", "datamodules.ForgetRetainDataModule")
        self.datasets = datamodule.eval_datasets()
        if self.oracle is not None:
            self.oracle_provenance = self._check_oracle(datamodule)
        if self.clap is not None:
            self._set_up_metrics(datamodule)

    def _set_up_metrics(self, datamodule: Any) -> None:
        """The CLAP's metrics per evaluated set, after checking the groups recognition needs."""
        groups = sorted({item.group for items in datamodule.sets.values() for item in items if item.group})
        ungrouped = [item.id for items in datamodule.sets.values() for item in items if not item.group]
        if groups and ungrouped:
            raise ValueError(f"Recognition needs a group for every item, but {len(ungrouped)} item(s) have none, e.g. "
                             f"{ungrouped[:5]}; give every manifest line a 'group' or none of them.")
        recognizer = ZeroShotTagger(self.clap, groups, self.recognition_template) if groups else None
        if recognizer is not None and recognizer.unreadable_labels():
            log.warning("Recognition by the CLAP (%s) cannot name %s: its tokenizer does not know the words %s, so "
                        "those labels reduce to unknown tokens and their recognition says nothing about the audio. Use "
                        "a CLAP that reads them (LAION's reads any text), or judge recognition with a `judge` trained "
                        "on your groups.", self.clap.name,
                        sorted(recognizer.unreadable_labels()), recognizer.unreadable_labels())
        small = {split: min(self.num_prompts, len(dataset)) for split, dataset in self.datasets.items()
                 if min(self.num_prompts, len(dataset)) < self.fad_embedder.dim}
        if small:
            log.warning("FAD compares fewer clips than its embeddings have dimensions (%d) in %s: its covariances "
                        "are then rank-deficient and FAD is biased upward (README, 'How many generations'); compare "
                        "FADs at one n only, and read KAD, which is unbiased.", self.fad_embedder.dim,
                        ", ".join(f"{split} ({n} clips)" for split, n in small.items()))
        kl_tagger = self.tagger or recognizer
        self.recognizer = recognizer
        for split in self.datasets:
            metrics: dict[str, Any] = {"fad": FrechetAudioDistance(self.fad_embedder),
                                       "kad": KernelAudioDistance(self.fad_embedder),
                                       "clap_score": CLAPScore(self.clap)}
            if recognizer is not None:
                metrics["recognition"] = Recognition(recognizer)
                if self.judge is not None:
                    metrics["recognition_judge"] = Recognition(self.judge)
            if kl_tagger is not None:
                metrics["kl"] = TagKLDivergence(kl_tagger)
            if split == "forget":
                metrics["memorization"] = Memorization(self.clap, self.memorization_threshold)
            self.metrics[split] = metrics
        self._references_ready = False

    def _check_oracle(self, datamodule: Any) -> str:
        """What the oracle was trained on, after checking it is this run's forget set's oracle."""
        record = TrainingRecord.read(self.oracle)
        if record is None:
            if not self.oracle_unchecked:
                raise ValueError(
                    f"The oracle {self.oracle} has no {RECORD_FILE}: nothing says which forget set it was trained "
                    f"without, so its column could belong to another one. Models trained with `SavePretrained` on an "
                    f"`AudioTextDataModule` keep this record; for a model trained before, write it with `python "
                    f"scripts/record_training_data.py --config <its training config>`, or accept the oracle as it is "
                    f"with oracle_unchecked: true.")
            log.warning("The oracle %s has no record of its training data: it is used unchecked (oracle_unchecked).",
                        self.oracle)
            return "unchecked: the oracle has no record of its training data"
        if not isinstance(datamodule, DefinesOracle):
            raise TypeError(f"Checking the oracle {self.oracle} needs a DataModule that says what its oracle trains on "
                            f"(`oracle_training_set()`, as ForgetRetainDataModule does); "
                            f"{type(datamodule).__name__} does not.")
        check_oracle(self.oracle, record, datamodule.manifest, *datamodule.oracle_training_set())
        return f"checked: trained on {record.describe()}"

    def _prepare_references(self, trainer: L.Trainer, sample_rate: int) -> None:
        """Each set's audio embedded by the FAD embedder (read from the cache, or embedded once and cached): FAD's
        reference statistics, KAD's reference, and (with the CLAP) the forget tracks' embeddings for memorization."""
        if self._references_ready or self.clap is None:
            return
        device = trainer.strategy.root_device
        for split, dataset in self.datasets.items():
            embeddings = self._reference_embeddings(trainer, split, dataset, sample_rate)
            self.metrics[split]["fad"].to(device).set_reference(reference_statistics(embeddings))
            self.metrics[split]["kad"].to(device).set_reference(embeddings)
            if split == "forget":
                if self.fad_embedder is not self.clap:
                    embeddings = per_item_values(trainer, dataset, self.batch_size,
                                                 lambda batch: self.clap(batch["audio"], sample_rate),
                                                 what=f"Embedding the {split} set's audio (CLAP)")
                self.metrics[split]["memorization"].to(device).set_reference(embeddings)
        self._references_ready = True

    def _reference_embeddings(self, trainer: L.Trainer, split: str, dataset: Any, sample_rate: int) -> Tensor:
        key = reference_key(self.fad_embedder, sample_rate, describe_items(dataset.items, dataset.num_samples))
        path = self.cache_dir / "reference_embeddings" / f"{key}.pt"
        read = lambda path: read_reference_embeddings(path, self.fad_embedder.name)  # noqa: E731
        if trainer.strategy.broadcast(reusable(path, read)):  # rank 0 verified it
            log.info("Reference embeddings of the %s set read from %s", split, path)
            return read(path).to(trainer.strategy.root_device)
        embeddings = per_item_values(trainer, dataset, self.batch_size,
                                     lambda batch: self.fad_embedder(batch["audio"], sample_rate).double(),
                                     what=f"Embedding the {split} set's audio")
        if trainer.is_global_zero:
            save_verified({"embeddings": embeddings.cpu(), "embedder": self.fad_embedder.name}, path)
        return embeddings

    def _prompt_loader(self, trainer: L.Trainer, dataset: Any) -> DataLoader:
        """This process's share of the generations (`prompt_indices`): every `world_size`-th, no padding; each item
        carries its generation's id as ``index`` (its seed offset and its place in the per-item values)."""
        indices = self.prompt_indices(dataset)
        generations = [(index, index + len(dataset) * (k // len(dataset))) for k, index in enumerate(indices)]
        return DataLoader(_Indexed(dataset, generations[trainer.global_rank::trainer.world_size]), self.batch_size)

    # ------------------------------------------------------------------------------------------------ measuring
    def evaluate(self, trainer: L.Trainer, model: TextToMusicModel, what: str = "the model") -> Measurement:
        """Every configured metric of every evaluation set for `model`, and the per-item values they come from;
        identical on every process. `what` names the model in the progress bars and the log line of its time.

        The global random state and the modules' train / eval modes are restored afterwards, so training is the same
        whether an evaluation ran, read its references from the cache or was switched off.
        """
        with measuring(model, trainer.strategy.root_device), timed(trainer, f"Evaluating {what}"):
            return self._evaluate(trainer, model, what)

    def _evaluate(self, trainer: L.Trainer, model: TextToMusicModel, what: str) -> Measurement:
        self._prepare_references(trainer, model.sample_rate)
        samples: PerItem = {split: {} for split in self.datasets}
        losses = {split: fixed_losses(trainer, model, dataset, self.seed, self.batch_size,
                                      what=f"Evaluating {what}: {split} losses")
                  for split, dataset in self.datasets.items()}
        for split, values in losses.items():
            samples[split]["loss"] = [{"loss": values.double()}]
        if "heldout" in losses:
            for split in ("forget", "near", "retain"):
                if split in losses:
                    samples[split]["mia_auc"] = [{"loss": losses[split]}, {"loss": losses["heldout"]}]
        clips = {}
        if self.clap is not None:
            for split, dataset in self.datasets.items():
                generated, clips[split] = self._generation_samples(trainer, model, split, dataset, what)
                samples[split].update(generated)
        return Measurement(self.results_of(samples), samples, clips)

    def prompt_indices(self, dataset: Any) -> list[int]:
        """The evaluation items whose captions are generated from, one generation each: `num_prompts` evenly spaced
        ones; past the set's size, every item once per round, round after round (each generation with its own seed:
        item index + set size x round)."""
        if self.num_prompts <= len(dataset):
            return torch.linspace(0, len(dataset) - 1, self.num_prompts).round().long().unique().tolist()
        return [k % len(dataset) for k in range(self.num_prompts)]

    def _generation_samples(self, trainer: L.Trainer, model: TextToMusicModel, split: str, dataset: Any, what: str
                            ) -> tuple[dict[str, list[Samples]], list[tuple[str, Tensor]]]:
        device = trainer.strategy.root_device
        metrics = self.metrics[split]
        for metric in metrics.values():
            metric.to(device).reset()
        clips: list[tuple[str, Tensor]] = []
        loader = self._prompt_loader(trainer, dataset)
        for batch in progress(trainer, loader, f"Evaluating {what}: {split} generations", len(loader)):
            seeds = [self.seed + index for index in batch["index"].tolist()]
            with measuring_precision(trainer):
                # the clips' length, not the loaded model's default: an oracle loaded from its folder has the
                # backend's (MusicGen's 30 s), not the run's
                audio = model.generate(list(batch["caption"]), seed=seeds,
                                       num_inference_steps=self.num_inference_steps,
                                       guidance_scale=self.guidance_scale,
                                       duration=dataset.num_samples / model.sample_rate).float()
            self._update(metrics, audio, batch, model.sample_rate, device)
            keep = max(0, self.log_audio - len(clips)) if trainer.is_global_zero else 0
            clips.extend(zip(batch["caption"][:keep], audio[:keep].cpu(), strict=True))
        return {name: [metric.samples()] for name, metric in metrics.items()}, clips

    def _update(self, metrics: dict, audio: Tensor, batch: dict, sample_rate: int, device: torch.device) -> None:
        index = batch["index"]  # the prompt's place in the set: the per-item values come back in this order
        embeddings = self.clap(audio, sample_rate)
        metrics["clap_score"].update(prompts=list(batch["caption"]), embeddings=embeddings, index=index)
        fad_embeddings = embeddings if self.fad_embedder is self.clap else self.fad_embedder(audio, sample_rate)
        metrics["fad"].update(embeddings=fad_embeddings, index=index)
        metrics["kad"].update(embeddings=fad_embeddings, index=index)
        if "recognition" in metrics:
            metrics["recognition"].update(targets=list(batch["group"]), logits=self.recognizer.logits(embeddings),
                                          index=index)
        if "recognition_judge" in metrics:
            metrics["recognition_judge"].update(audio, sample_rate, targets=list(batch["group"]), index=index)
        if "memorization" in metrics:
            metrics["memorization"].update(embeddings=embeddings, index=index)
        if "kl" in metrics:
            reference = batch["audio"].to(device)
            if self.tagger is None:
                metrics["kl"].update(generated_logits=self.recognizer.logits(embeddings),
                                     reference_logits=self.recognizer.logits(self.clap(reference, sample_rate)),
                                     index=index)
            else:
                metrics["kl"].update(audio, reference, sample_rate, index=index)

    # ------------------------------------------------------------------------------------------------ statistics
    def estimator(self, split: str, measure: str) -> Estimator:
        """How `measure` on `split` is computed from its groups of per-item values and bootstrapped."""
        if measure == "loss":
            return Estimator(lambda items: items["loss"].double().mean(-1), batched=True)
        if measure == "mia_auc":
            return Estimator(lambda members, nonmembers: pairwise_membership_auc(members["loss"], nonmembers["loss"]),
                             batched=True)
        metric = self.metrics[split][measure]
        return Estimator(metric.statistic, metric.batched_statistic, metric.biased_under_resampling, metric.minimum)

    def results_of(self, samples: PerItem) -> Results:
        """Every metric's value from the per-item values."""
        results: Results = {}
        for split, measures in samples.items():
            results[split] = {}
            for measure, groups in measures.items():
                results[split].update(_named(measure, self.estimator(split, measure).statistic(*groups)))
        return results

    def replicates(self, samples: PerItem) -> Replicates:
        """Per set and metric: the value, its bootstrap replicates and the number of items. The draws depend only on
        the seed and the items, so models measured on the same items are resampled alike (paired). The replicates of
        a statistic that resampling biases (FAD) are centred on its value."""
        out: Replicates = {}
        for split, measures in samples.items():
            out[split] = {}
            for measure, groups in measures.items():
                estimator = self.estimator(split, measure)
                value, replicates = bootstrap_replicates(estimator.statistic, groups, self.resamples, self.seed,
                                                         estimator.batched)
                n = min(len(next(iter(group.values()))) for group in groups)
                values, draws = _named(measure, value), _named(measure, replicates)
                if estimator.centred:
                    draws = {name: centred(values[name], draws[name], estimator.minimum) for name in draws}
                out[split].update({name: (values[name], draws[name], n) for name in values})
        return out

    def intervals(self, replicates: Replicates) -> Intervals:
        return {split: {name: percentile_interval(value, draws, self.confidence, n).as_dict()
                        for name, (value, draws, n) in metrics.items()} for split, metrics in replicates.items()}

    def differences(self, first: dict, second: dict) -> Intervals:
        """`first` − `second` per set and metric, with the paired interval (the replicates' differences) and whether
        it excludes 0."""
        out: Intervals = {}
        for split, metrics in first.items():
            out[split] = {}
            for name, (value, draws, n) in metrics.items():
                if name not in second.get(split, {}):
                    continue
                other_value, other_draws, other_n = second[split][name]
                if other_n != n:
                    raise ValueError(f"The {split} set's {name} was measured on {n} and {other_n} items; a paired "
                                     "difference needs the same items (a stale cache? delete it).")
                interval = percentile_interval(value - other_value, draws - other_draws, self.confidence, n)
                out[split][name] = {**interval.as_dict(), "excludes_zero": interval.excludes(0.0)}
        return out

    def _log_clips(self, trainer: L.Trainer, column: str, measurement: Measurement, sample_rate: int) -> None:
        """On rank zero, each kept generation's mel spectrogram rendered once (for TensorBoard and ``report.html``),
        and in TensorBoard under ``clips/<set>/<i>/<column>`` (audio, and its mel under ``.../mel``), so before, after
        and oracle sit side by side under one prompt (``clips/<set>/<i>/prompt``)."""
        if not trainer.is_global_zero:
            return
        self.mels[column] = {split: [mel_png(clip, sample_rate) for _, clip in clips]
                             for split, clips in measurement.clips.items()}
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            for split, clips in measurement.clips.items():
                for i, (caption, clip) in enumerate(clips):
                    tag = f"clips/{split}/{i}"
                    mono = clip.mean(0, keepdim=True).clamp(-1, 1)
                    logger.experiment.add_audio(f"{tag}/{column}", mono, trainer.global_step, sample_rate)
                    logger.experiment.add_image(f"{tag}/{column}/mel", png_array(self.mels[column][split][i]),
                                                trainer.global_step, dataformats="HWC")
                    logger.experiment.add_text(f"{tag}/prompt", caption, trainer.global_step)

    # ------------------------------------------------------------------------------------------------- references
    def evaluate_pretrained(self, trainer: L.Trainer, model: TextToMusicModel, folder: str, what: str) -> Measurement:
        """The measurement of the model saved in `folder` (same backend as `model`), cached with its per-item values
        by its files and the settings."""
        def measure() -> Measurement:  # the loaded model is freed once measured
            return self.evaluate(trainer, type(model).from_pretrained(folder).to(trainer.strategy.root_device), what)

        return self._cached(trainer, model, describe_model(folder), str(folder), measure)

    def evaluate_before(self, trainer: L.Trainer, model: TextToMusicModel) -> Measurement:
        """The measurement of `model` as the fit starts, cached by what it would save (`describe_weights`): every
        run from one base model at one evaluation's settings (each method, each seed) measures "before" once."""
        if not self.cache_before:
            return self.evaluate(trainer, model, "before")
        weights = trainer.strategy.broadcast(describe_weights(model) if trainer.is_global_zero else None)
        return self._cached(trainer, model, weights, f"the model at fit start (weights {weights[:16]})",
                            lambda: self.evaluate(trainer, model, "before"))

    def _cached(self, trainer: L.Trainer, model: TextToMusicModel, described: Any, what: str,
                measure: Callable[[], Measurement]) -> Measurement:
        """`measure()`'s measurement of the model `described` describes (of `model`'s backend), read from the cache
        when there (verified, with its per-item values), measured and written there otherwise."""
        path = self.cache_dir / "evaluation" / f"{cache_key(described, self.settings(trainer, model))}.pt"
        if trainer.strategy.broadcast(reusable(path, read_cached_measurement)):  # rank 0 verified it
            log.info("Results of %s read from the cache %s (delete it to measure again)", what, path)
            return read_cached_measurement(path)
        measurement = measure()
        if trainer.is_global_zero:
            save_verified({"model": what, "results": measurement.results,
                           "samples": _to_cpu(measurement.samples), "clips": measurement.clips}, path)
        return measurement

    def settings(self, trainer: L.Trainer, model: TextToMusicModel) -> dict[str, Any]:
        """Everything the numbers depend on besides the model's weights."""
        return {
            "measurement": MEASUREMENT_FORMAT,
            "datasets": {split: describe_items(dataset.items, dataset.num_samples)
                         for split, dataset in self.datasets.items()},
            "clap": self.clap.name if self.clap else None,
            "fad": self.fad_embedder.name if self.fad_embedder else None,
            "tagger": self.tagger.name if self.tagger else None,
            "recognition_template": self.recognition_template, "num_prompts": self.num_prompts, "seed": self.seed,
            "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
            "batch_size": self.batch_size, "memorization_threshold": self.memorization_threshold,
            "judge": self.judge.name if self.judge else None,
            "sample_rate": model.sample_rate, "precision": str(trainer.precision),
        }

    # ----------------------------------------------------------------------------------------------------- hooks
    def _record(self, trainer: L.Trainer, column: str, measurement: Measurement, sample_rate: int,
                scalars: bool = True) -> None:
        """Keep `column`'s measurement and log it: its scalars at this step (unless `scalars` is False: the step's
        evaluation already logged them) and its clips."""
        self.columns[column] = measurement.results
        self.samples[column] = measurement.samples
        self.clips[column] = measurement.clips
        self.history.append({"step": trainer.global_step, "column": column, "results": measurement.results})
        if trainer.logger is not None and scalars:
            trainer.logger.log_metrics({f"{_prefix(column)}/{split}/{name}": value
                                        for split, values in measurement.results.items()
                                        for name, value in values.items()}, step=trainer.global_step)
        self._log_clips(trainer, column, measurement, sample_rate)

    def _log_reference_lines(self, trainer: L.Trainer, oracle: Measurement) -> None:
        """The oracle's scalars at the first and the last step of the run, so each draws a flat reference line
        (``eval_oracle/<set>/<metric>``), and a custom-scalars layout that puts each metric's model curve and oracle
        line, each with its interval bounds, on one chart (TensorBoard's "Custom Scalars" tab)."""
        if trainer.logger is None:
            return
        values = {f"eval_oracle/{split}/{name}": value for split, metrics in oracle.results.items()
                  for name, value in metrics.items()}
        for step in sorted({self._clock["start_step"], trainer.global_step}):
            trainer.logger.log_metrics(values, step=step)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                charts = {split: {name: ["Multiline", [rf"^{prefix}/{split}/{name}(_low|_high)?$"  # regexes
                                                       for prefix in ("eval", "eval_oracle")]]
                                  for name in metrics} for split, metrics in oracle.results.items()}
                logger.experiment.add_custom_scalars({f"model and oracle: {split}": chart
                                                      for split, chart in charts.items()})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seed = fixed_noise_seed(self.seed, pl_module, "UnlearningEvaluation")
        if "before" not in self.columns:  # a resumed run keeps the "before" of its start, restored from the checkpoint
            self._record(trainer, "before", self.evaluate_before(trainer, pl_module.model),
                         pl_module.model.sample_rate)
            self._clock["carried"] = 0.0
            self._clock["start_step"] = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # here, not in on_fit_start: a resumed fit has restored its step count and this callback's state by now
        self._clock.update(start=time.perf_counter(), evaluating=0.0)

    def _train_seconds(self) -> float:
        """Seconds of training of this fit so far, earlier segments of a resumed fit included, evaluations excluded."""
        return self._clock["carried"] + time.perf_counter() - self._clock["start"] - self._clock["evaluating"]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        if not self.items_per_step:  # what one optimizer step saw: it grows with the device count (README, Scale)
            sets = batch if all(isinstance(value, dict) for value in batch.values()) else {"train": batch}
            scale = trainer.world_size * trainer.accumulate_grad_batches
            self.items_per_step = {name: len(items["id"]) * scale for name, items in sets.items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_train_steps and step % self.every_n_train_steps == 0:
            started = time.perf_counter()
            measurement = self.evaluate(trainer, pl_module.model, f"step {step}")
            self._latest = (step, measurement)
            self._record(trainer, "step", measurement, pl_module.model.sample_rate)
            self._clock["evaluating"] += time.perf_counter() - started

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # what unlearning cost: this fit's time after the "before" evaluation, less the evaluations during training
        self.timing = {"train_seconds": self._train_seconds(), "steps": trainer.global_step - self._clock["start_step"],
                       "processes": trainer.world_size, "items_per_step": self.items_per_step}
        evaluated_now = self._latest is not None and self._latest[0] == trainer.global_step
        after = self._latest[1] if evaluated_now else self.evaluate(trainer, pl_module.model, "after")
        self._record(trainer, "after", after, pl_module.model.sample_rate, scalars=not evaluated_now)
        self._report(trainer, pl_module, "after")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._evaluate_stage(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate_stage(trainer, pl_module)

    def _evaluate_stage(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seed = fixed_noise_seed(self.seed, pl_module, "UnlearningEvaluation")
        if "before" not in self.columns and self.base is not None:
            base = self.evaluate_pretrained(trainer, pl_module.model, self.base, "before (the base model)")
            self.columns["before"], self.samples["before"] = base.results, base.samples
            self.clips["before"] = base.clips
        model = self.evaluate(trainer, pl_module.model, "the model")
        self._record(trainer, "model", model, pl_module.model.sample_rate)
        self._report(trainer, pl_module, "model")

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, column: str) -> None:
        if self.oracle is not None:
            oracle = self.evaluate_pretrained(trainer, pl_module.model, self.oracle, "the oracle")
            self._record(trainer, "oracle", oracle, pl_module.model.sample_rate, scalars=False)
            self._log_reference_lines(trainer, oracle)
        names = [name for name in ("before", column, "oracle") if name in self.columns]
        columns = {name: self.columns[name] for name in names}
        started = time.perf_counter()
        replicates = {name: self.replicates(self.samples[name]) for name in names}
        intervals = {name: self.intervals(replicates[name]) for name in names}
        differences = {f"{column} − {other}": self.differences(replicates[column], replicates[other])
                       for other in ("before", "oracle") if other in replicates}
        scores = (scores_against_oracle({name: self.samples[name] for name in names}, replicates, column,
                                        self.confidence) if "oracle" in names else {})
        bootstrap_seconds = time.perf_counter() - started
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # every rank: log_dir is a collective under DDP
        if not trainer.is_global_zero:
            return
        table = markdown_table(columns, column, intervals, differences, self.confidence) + oracle_summary(scores)
        if "oracle" in names:
            table += f"\n\nThe oracle, {self.oracle}, {self.oracle_provenance}."
        if column == "after" and self.items_per_step:
            sizes = " + ".join(f"{count} {name}" for name, count in self.items_per_step.items())
            table += (f"\n\nTrained {self.timing['steps']} steps on {trainer.world_size} process(es), {sizes} items "
                      "per optimizer step (it follows the device count unless the data sets a global_batch_size).")
        log.info("Unlearning evaluation (%s):\n%s", type(pl_module).__name__, table)
        write_json_atomic(folder / "results.json", {
            "columns": columns, "intervals": intervals, "differences": differences, "against_oracle": scores,
            "bootstrap": {"resamples": self.resamples, "confidence": self.confidence, "seed": self.seed,
                          "seconds": bootstrap_seconds},
            "gap_to_oracle": gap_to_oracle(columns, column), "history": self.history,
            "timing": self.timing if column == "after" else {}, "oracle_provenance": self.oracle_provenance,
            "settings": self.settings(trainer, pl_module.model)})
        write_text_atomic(folder / "results.md", table + "\n")
        figures = {"tradeoff": tradeoff_figure(intervals), "metrics": metric_bars(intervals)}
        self._write_html(folder, pl_module, names, table, figures)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                self._log_report(trainer, pl_module, logger, columns[column], intervals, figures, folder)

    def _write_html(self, folder: Path, pl_module: L.LightningModule, names: list[str], table: str,
                    figures: dict[str, Any]) -> None:
        """``report.html``: `table`, the `figures`, and the clips of the columns `names` side by side."""
        sample_rate = pl_module.model.sample_rate
        for name in names:  # clips restored from a checkpoint or read for `base` were not rendered yet
            if name in self.clips and name not in self.mels:
                self.mels[name] = {split: [mel_png(clip, sample_rate) for _, clip in clips]
                                   for split, clips in self.clips[name].items()}
        shown = [name for name in names if name in self.mels]
        write_html_report(folder, f"{type(pl_module).__name__}: {folder.name}", table,
                          {name: self.clips[name] for name in shown}, {name: self.mels[name] for name in shown},
                          sample_rate, figures)

    def _log_report(self, trainer: L.Trainer, pl_module: L.LightningModule, logger: TensorBoardLogger,
                    final: Results, intervals: dict[str, Intervals], figures: dict[str, Any], folder: Path) -> None:
        """The report in TensorBoard: each column's interval at the step it was measured at, beside its value
        (before and after share the eval/ tags; the oracle's bounds draw lines like its value), the figures, and
        the hparams with the `final` values under their own tags (under eval/... they would add a second point at
        the last step)."""
        steps = {"before": [self._clock["start_step"]], "oracle": sorted({self._clock["start_step"],
                                                                          trainer.global_step})}
        for name, column_intervals in intervals.items():
            bounds = {f"{_prefix(name)}/{split}/{metric}_{end}": interval[end]
                      for split, metrics in column_intervals.items()
                      for metric, interval in metrics.items() for end in ("low", "high")}
            for step in steps.get(name, [trainer.global_step]):
                logger.log_metrics(bounds, step=step)
        for name, figure in figures.items():
            logger.experiment.add_figure(f"report/{name}", figure, trainer.global_step, close=False)
        params = run_hyperparameters(folder / "config.yaml", {"method": type(pl_module).__name__,
                                                              **dict(pl_module.hparams)})
        logger.log_hyperparams(params, step=trainer.global_step, metrics={
            f"final/{split}/{name}": value for split, values in final.items() for name, value in values.items()})
        # Lightning writes hparams.yaml once, early (still empty), and never again: write what was logged
        write_text_atomic(Path(logger.log_dir) / logger.NAME_HPARAMS_FILE,
                          yaml.safe_dump(dict(logger.hparams), sort_keys=False))

    # ------------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "history": self.history, "samples": _to_cpu(self.samples.get("before", {})),
                "clips": self.clips.get("before", {}),
                "clock": {"carried": self._train_seconds(), "start_step": self._clock["start_step"]}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.columns = {k: v for k, v in state_dict["columns"].items() if k == "before"}
        self.samples = {"before": state_dict["samples"]} if "before" in self.columns else {}
        self.clips = {"before": state_dict.get("clips", {})} if "before" in self.columns else {}
        self.history = state_dict["history"]
        self._clock.update(state_dict.get("clock", {}))


def oracle_summary(scores: dict[str, Any]) -> str:
    """The scores against the oracle as Markdown lines under the table (empty without an oracle)."""
    if not scores:
        return ""
    lines = ["", "", "**Against the oracle.**"]
    if "forget_quality" in scores:
        lines.append("- Forget quality (KS-test p-value against the oracle; high is indistinguishable): "
                     + ", ".join(f"{name.replace('_', ' ')} {p:.3g}" for name, p in scores["forget_quality"].items()))
    if "privacy_leakage" in scores:
        leak = scores["privacy_leakage"]
        lines.append(f"- Privacy leakage (membership AUC relative to the oracle's; 0 is ideal): {leak['value']:+.1f} % "
                     f"[{leak['low']:+.1f}, {leak['high']:+.1f}]")
    if "model_utility" in scores:
        utility = scores["model_utility"]
        mine, oracle = (utility[name] for name in utility if name != "measures")
        lines.append(f"- Model utility (harmonic mean of {', '.join(utility['measures'])} over the base model's): "
                     f"{mine['value']:.3f} [{mine['low']:.3f}, {mine['high']:.3f}]; the oracle's {oracle['value']:.3f} "
                     f"[{oracle['low']:.3f}, {oracle['high']:.3f}]")
    if "verdict" in scores:
        lines.append(f"- {scores['verdict']}")
    return "\n".join(lines)


def _prefix(column: str) -> str:
    """TensorBoard prefix of a column: ``eval`` for the model being trained or validated, else ``eval_<column>``."""
    return "eval" if column in ("before", "after", "model", "step") else f"eval_{column}"


def _named(measure: str, value: Any) -> dict[str, Any]:
    """A measure's output under its result names: one value keeps the measure's name; a dict's entries are
    ``<measure>_<key>`` (memorization's ``copies`` keeps its own name)."""
    if not isinstance(value, dict):
        return {measure: value.item() if isinstance(value, Tensor) and value.dim() == 0 else value}
    return {key if key == "copies" else f"{measure}_{key}":
            point.item() if isinstance(point, Tensor) and point.dim() == 0 else point for key, point in value.items()}


def _to_cpu(samples: PerItem) -> PerItem:
    return {split: {measure: [{name: values.cpu() for name, values in group.items()} for group in groups]
                    for measure, groups in measures.items()} for split, measures in samples.items()}


_REFERENCE = "reference embeddings"
_CACHED_RESULTS = "cached evaluation results"
_MEASURE_AGAIN = "delete it: the evaluation measures the model again and rewrites it"


def read_reference_embeddings(path: Path, embedder: str) -> Tensor:
    """A set's embeddings cached by `_reference_embeddings`, verified (digest, finite float64, the same embedder)."""
    remedy = "delete it: the evaluation embeds the set's audio again and rewrites it"
    saved = load_verified(path, _REFERENCE, remedy, {"embeddings": TensorField(dtype=torch.float64, finite=True),
                                                    "embedder": str})
    if saved["embedder"] != embedder:
        raise CorruptFileError(path, _REFERENCE, f"was embedded by {saved['embedder']!r}, not {embedder!r}", remedy)
    return saved["embeddings"]


def read_cached_measurement(path: Path) -> Measurement:
    """The measurement `evaluate_pretrained` cached in `path`, verified (digest, results and per-item values)."""
    saved = load_verified(path, _CACHED_RESULTS, _MEASURE_AGAIN, {"results": dict, "samples": dict, "clips": dict})
    for split, measures in saved["samples"].items():
        for measure, groups in measures.items():
            if not (isinstance(groups, list) and all(isinstance(group, dict) and all(
                    isinstance(values, Tensor) for values in group.values()) for group in groups)):
                raise CorruptFileError(path, _CACHED_RESULTS, f"holds no per-item tensors for {split}/{measure}",
                                       _MEASURE_AGAIN)
    for split, clips in saved["clips"].items():
        if not (isinstance(clips, list) and all(
                isinstance(prompt, str) and isinstance(audio, Tensor) and audio.dim() == 2 for prompt, audio in clips)):
            raise CorruptFileError(path, _CACHED_RESULTS, f"holds no (prompt, audio) clips for {split}", _MEASURE_AGAIN)
    return Measurement(saved["results"], saved["samples"], saved["clips"])


class _Indexed(Dataset):
    """Items of `dataset` by `(index in dataset, generation id)` pairs, each carrying its generation id as ``index``."""

    def __init__(self, dataset: Dataset, generations: list[tuple[int, int]]) -> None:
        self.dataset = dataset
        self.generations = generations

    def __len__(self) -> int:
        return len(self.generations)

    def __getitem__(self, position: int) -> dict:
        index, generation = self.generations[position]
        return {**self.dataset[index], "index": generation}
