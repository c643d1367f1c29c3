"""`FeatureTagger`: a supervised classifier on hand-crafted spectral and rhythmic features, a judge that shares nothing
with CLAP (no learned audio tower, no text), for checking CLAP's zero-shot recognition on generated audio.

Each clip becomes a fixed vector (`clip_features`): the mean and spread over time of its log-mel spectrum in 48 bands
(timbre, register), the autocorrelation of its onset envelope (tempo, rhythm), the transposition-invariant magnitudes
of the DFT of its chroma (mode), and its spectral flatness and loudness contour (tonal or noisy, dense or sparse).
A multinomial logistic regression on the standardised vectors is fitted on labelled real tracks (`fit`), each also
seen with white noise at a random SNR so a noise floor does not decide the class. The classic music-classification
recipe (Tzanetakis & Cook, "Musical genre classification of audio signals", 2002), with logistic regression in place
of their Gaussian classifiers. Saved as ``feature_tagger.safetensors`` plus ``feature_tagger.json`` (labels, settings).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio
from safetensors.torch import load_file, save_file
from torch import Tensor

from lightning_modules.io import atomic_directory
from lightning_modules.metrics.embedder import AudioTagger, as_mono_batch

WEIGHTS, CONFIG = "feature_tagger.safetensors", "feature_tagger.json"
N_FFT, HOP, N_MELS, MAX_LAG_S = 1024, 256, 48, 1.0


def clip_features(waveform: Tensor, sample_rate: int) -> Tensor:
    """Hand-crafted features of mono clips `(batch, samples)` -> `(batch, features)` (float32, scale-free)."""
    spectrum = torch.stft(waveform, N_FFT, HOP, window=torch.hann_window(N_FFT, device=waveform.device),
                          return_complex=True).abs()  # (batch, bins, frames)
    mel_scale = torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, 30.0, sample_rate / 2, N_MELS, sample_rate)
    mel = (spectrum.transpose(1, 2) @ mel_scale.to(spectrum)).transpose(1, 2)  # (batch, mels, frames)
    peak = mel.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    log_mel = (mel / peak).clamp_min(1e-4).log10()  # dB / 20 below the clip's loudest bin: gain-free
    timbre = torch.cat([log_mel.mean(-1), log_mel.std(-1)], dim=1)

    flux = (log_mel.diff(dim=-1).clamp_min(0)).mean(1)  # onset envelope (batch, frames - 1)
    flux = flux - flux.mean(-1, keepdim=True)
    max_lag = min(flux.shape[-1] - 1, round(MAX_LAG_S * sample_rate / HOP))
    spectrum_f = torch.fft.rfft(flux, n=2 * flux.shape[-1])
    autocorr = torch.fft.irfft(spectrum_f.abs() ** 2)[..., : max_lag + 1]
    rhythm = autocorr[..., 1:] / autocorr[..., :1].clamp_min(1e-8)

    freqs = torch.linspace(0, sample_rate / 2, N_FFT // 2 + 1, device=waveform.device)
    audible = (freqs > 60) & (freqs < 5000)
    pitch_class = (12 * torch.log2(freqs[audible] / 440.0)).round().remainder(12).long()
    energy = spectrum[:, audible].pow(2).sum(-1)  # (batch, audible bins)
    chroma = torch.zeros(waveform.shape[0], 12, device=waveform.device).index_add_(1, pitch_class, energy)
    chroma = chroma / chroma.sum(-1, keepdim=True).clamp_min(1e-8)
    mode = torch.fft.rfft(chroma).abs()[:, 1:]  # rotation (transposition) invariant

    power = spectrum.pow(2).clamp_min(1e-10)
    flatness = (power.log().mean(1).exp() / power.mean(1)).clamp_min(1e-6).log10()  # (batch, frames)
    loudness = log_mel.exp().mean(1).clamp_min(1e-6).log10()  # (batch, frames)
    loudness = loudness - loudness.amax(-1, keepdim=True)
    contour = torch.stack([flatness.mean(-1), flatness.std(-1), loudness.mean(-1), loudness.std(-1),
                           (loudness < -1.5).float().mean(-1)], dim=1)
    return torch.cat([timbre, rhythm, mode, contour], dim=1).float()


def add_white_noise(waveform: Tensor, snr_db: tuple[float, float], generator: torch.Generator | None = None) -> Tensor:
    """`(batch, samples)` clips plus white noise at a signal-to-noise ratio drawn uniformly from `snr_db` per clip."""
    snr = torch.empty(waveform.shape[0], 1).uniform_(*snr_db, generator=generator).to(waveform)
    signal = waveform.pow(2).mean(-1, keepdim=True)
    noise = torch.randn(waveform.shape, generator=generator).to(waveform)
    return waveform + noise * (signal / 10 ** (snr / 10)).sqrt()


def fit_logistic(features: Tensor, targets: Tensor, num_classes: int, weight_decay: float,
                 what: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A multinomial logistic regression on standardised `features` `(n, dim)` with class indices `targets`, fitted by
    L-BFGS in float64 with an L2 penalty `weight_decay`: ``(mean, scale, weight, bias)`` in float32, the logits of
    `x` being ``((x - mean) / scale) @ weight.T + bias``. Deterministic.

    Raises:
        ValueError: the fit diverged (named by `what`).
    """
    features = features.double()
    mean, scale = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / scale
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, targets) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    if not all(math.isfinite(v) for v in (weight.sum().item(), bias.sum().item())):
        raise ValueError(f"The {what}'s fit diverged (non-finite weights); check the clips for silence.")
    return mean.float(), scale.float(), weight.detach().float(), bias.detach().float()


class FeatureTagger(AudioTagger):
    """Artist (or any label) classifier on `clip_features`: logits `(batch, len(labels))`.

    Args:
        pretrained: a folder written by `save_pretrained`.
    """

    def __init__(self, pretrained: str | os.PathLike) -> None:
        super().__init__()
        folder = Path(pretrained)
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(f"{folder} holds no feature tagger ({CONFIG} and {WEIGHTS}); fit one with "
                                    "`FeatureTagger.fit` (`python scripts/toy_recognition.py --judge <folder>` fits "
                                    "the toy world's on its training tracks when the folder is missing).")
        config = json.loads((folder / CONFIG).read_text())
        self.pretrained = str(folder)
        self.labels = list(config["labels"])
        self.sample_rate = int(config["sample_rate"])
        tensors = load_file(folder / WEIGHTS)
        for name in ("mean", "scale", "weight", "bias"):
            self.register_buffer(name, tensors[name])
        if self.weight.shape[0] != len(self.labels):
            raise ValueError(f"{folder / WEIGHTS}: {self.weight.shape[0]} classes but {len(self.labels)} labels in "
                             f"{folder / CONFIG}; fit the tagger again.")

    @property
    def name(self) -> str:
        return f"feature-tagger:{Path(self.pretrained).resolve()}"

    def embed(self, waveform: Tensor) -> Tensor:
        features = (clip_features(waveform, self.sample_rate) - self.mean) / self.scale
        return features @ self.weight.T + self.bias

    @staticmethod
    def fit(waveforms: Tensor, labels: Sequence[str], sample_rate: int, folder: str | os.PathLike, *,
            seed: int = 0, noisy_copies: int = 2, snr_db: tuple[float, float] = (5.0, 30.0),
            weight_decay: float = 1e-2) -> FeatureTagger:
        """Fit on labelled clips `(batch, samples)` at `sample_rate` (and `noisy_copies` noisy copies of each), write
        the tagger to `folder` and load it back. Deterministic for a given `seed`."""
        waveforms = as_mono_batch(waveforms)
        names = sorted(set(labels))
        if len(names) < 2:
            raise ValueError(f"A tagger needs at least two labels, got {names}.")
        targets = torch.tensor([names.index(label) for label in labels])
        generator = torch.Generator().manual_seed(seed)
        copies = [waveforms] + [add_white_noise(waveforms, snr_db, generator) for _ in range(noisy_copies)]
        features = torch.cat([clip_features(w, sample_rate) for w in copies])
        mean, scale, weight, bias = fit_logistic(features, targets.repeat(len(copies)), len(names), weight_decay,
                                                 "feature tagger")
        with atomic_directory(folder) as tmp:
            save_file({"mean": mean, "scale": scale, "weight": weight, "bias": bias}, tmp / WEIGHTS)
            (tmp / CONFIG).write_text(json.dumps({"labels": names, "sample_rate": sample_rate, "seed": seed,
                                                  "noisy_copies": noisy_copies, "snr_db": list(snr_db),
                                                  "weight_decay": weight_decay}, indent=1) + "\n")
        return FeatureTagger(folder)
