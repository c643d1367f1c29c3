"""`ClapTraining`: trains the toy world's CLAP contrastively on the corpus captions and audio.

The tokenizer is built from the caption vocabulary of `caption_manifest` when the model is configured (after the
DataModule has written the corpus); the loss is CLAP's symmetric InfoNCE over the batch (Radford et al., 2021;
Elizalde et al., 2023). A share of each batch is replaced by its magnitude mel spectrogram resynthesised with
Griffin-Lim, and a share gets white noise at a random SNR (random gain too), so that the CLAP judges the music
rather than the phase artefacts and the noise floor of generated audio: trained without noise, the toy CLAP took
the noise floor of early generations for the artists with hi-hats (scripts/toy_diagnosis.py).
"""

from __future__ import annotations

import os

import lightning as L
import torch
import torchaudio
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from datamodules.manifest import read_manifest
from lightning_modules.metrics.feature_tagger import add_white_noise
from lightning_modules.models.toy_clap import build_tokenizer, build_toy_clap
from lightning_modules.module import stepped_schedule
from lightning_modules.passes import check_finite_terms


class ClapTraining(L.LightningModule):
    """Trains a tiny transformers `ClapModel` from scratch.

    Args:
        caption_manifest: manifest whose captions make the tokenizer's vocabulary (the training manifest).
        sample_rate: audio sample rate in Hz.
        num_samples: clip length in samples, as the DataModule delivers it.
        max_length_s: CLAP's input window in whole seconds; shorter clips are repeat-padded.
        hidden_size: width of the audio tower (the text tower has half).
        projection_dim: size of the joint embedding.
        num_text_layers: transformer layers of the text tower.
        num_mel_bins: mel bands of CLAP's front end.
        resynthesis_prob: probability that a training clip is replaced by its Griffin-Lim resynthesis.
        noise_prob: probability that a training clip gets white noise at an SNR drawn from `snr_db`.
        snr_db: range of the signal-to-noise ratio of that noise, in dB.
        optimizer: builds the optimizer.
        lr_scheduler: builds a learning-rate scheduler, stepped every optimizer step; none when not given.
    """

    def __init__(
        self,
        caption_manifest: str,
        sample_rate: int = 16000,
        num_samples: int = 32768,
        max_length_s: int = 3,
        hidden_size: int = 64,
        projection_dim: int = 64,
        num_text_layers: int = 2,
        num_mel_bins: int = 32,
        resynthesis_prob: float = 0.5,
        noise_prob: float = 0.5,
        snr_db: tuple[float, float] = (5.0, 30.0),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.caption_manifest = caption_manifest
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.clap_kwargs = {"sample_rate": sample_rate, "max_length_s": max_length_s, "hidden_size": hidden_size,
                            "projection_dim": projection_dim, "num_text_layers": num_text_layers,
                            "num_mel_bins": num_mel_bins}
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.resynthesis_prob = resynthesis_prob
        self.noise_prob = noise_prob
        self.snr_db = snr_db
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=512, n_mels=64, power=1.0)
        self.inverse_mel = torchaudio.transforms.InverseMelScale(513, 64, sample_rate)
        self.griffin_lim = torchaudio.transforms.GriffinLim(1024, n_iter=16, hop_length=512, power=1.0,
                                                             length=num_samples)
        self.clap = None

    def configure_model(self) -> None:
        if self.clap is not None:
            return
        tokenizer = build_tokenizer(item.caption for item in read_manifest(self.caption_manifest))
        self.clap, self.processor = build_toy_clap(tokenizer, **self.clap_kwargs)

    def _loss(self, batch: dict) -> Tensor:
        features = self.processor.feature_extractor(
            list(batch["audio"].float().cpu().numpy()), sampling_rate=self.sample_rate, return_tensors="pt"
        )
        tokens = self.processor.tokenizer(batch["caption"], padding=True, truncation=True, return_tensors="pt")
        output = self.clap(input_features=features["input_features"].to(self.device), **tokens.to(self.device),
                           return_loss=True)
        return output.loss

    @torch.no_grad()
    def augment(self, audio: Tensor) -> Tensor:
        """Resynthesise a random share of `(batch, samples)` clips from their mel spectrogram, add noise to another
        random share, and vary the gain."""
        chosen = torch.rand(audio.shape[0], device=audio.device) < self.resynthesis_prob
        if chosen.any():
            resynthesised = self.griffin_lim(self.inverse_mel(self.mel(audio[chosen])))
            audio = audio.clone()
            audio[chosen] = resynthesised / resynthesised.abs().amax(dim=-1, keepdim=True).clamp_min(1e-6) * 0.7
        noisy = torch.rand(audio.shape[0], device=audio.device) < self.noise_prob
        if noisy.any():
            audio = audio.clone()
            audio[noisy] = add_white_noise(audio[noisy], self.snr_db)
        return audio * torch.empty(audio.shape[0], 1, device=audio.device).uniform_(0.5, 1.2)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._loss({**batch, "audio": self.augment(batch["audio"])})
        check_finite_terms({"loss": loss}, {"batch": list(batch["id"])},
                           f"{type(self).__name__} contrastive training loss at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["id"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._loss(batch)
        check_finite_terms({"loss": loss}, {"batch": list(batch["id"])}, f"{type(self).__name__} validation loss")
        self.log("val/loss", loss, batch_size=len(batch["id"]), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        return stepped_schedule(self.optimizer(self.clap.parameters()), self.lr_scheduler)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a transformers folder: model, feature extractor and tokenizer, loadable by `ClapModel` /
        `ClapProcessor.from_pretrained`."""
        self.clap.save_pretrained(path)
        self.processor.save_pretrained(path)
