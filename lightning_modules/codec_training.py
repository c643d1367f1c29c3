"""`CodecTraining`: trains the toy world's EnCodec (Défossez et al., 2022) as a quantised autoencoder.

The objective is the squared error of the waveform plus the commitment loss of every residual quantiser, with the
straight-through estimator across quantisation; EnCodec's multi-scale mel distance (magnitudes and their logarithms,
windows of 2^8 .. 2^11 samples here) is logged, and added with `mel_weight`. Measured on the toy corpus (random
half-second crops, batch 16, Adam 1e-3): the waveform's squared error alone brought the held-out clips' error from
0.080 to 0.016 in 200 steps (their power 0.053), while with the mel terms at weight 1 (and an L1 waveform term) the
error stayed at the clips' power, the codec's output no closer to them than silence. The commitment loss is weighed
at 0.01 (EnCodec's is 1, beside reconstruction losses of order 1): at 1, beside a squared error of order 0.01, the
encoder made it vanish within 500 steps by emitting one constant frame (the frames' standard deviation over time
fell to 0.014 and every clip decoded to silence). For its first `quantize_after`
steps the codec trains as a plain autoencoder, so that the codebooks start from latent frames that carry the music,
not from a random encoder's. The codebooks are not trained by gradient: they are initialised by residual k-means on the
latent frames of the last `kmeans_batches` batches before quantisation starts, then each code follows the
exponential moving average of the frames assigned to it, and a code left unused (its average count below
`dead_code_threshold`) is moved onto a frame of the batch (van den Oord et al., 2017; Zeghidour et al., 2021). Those
are the buffers transformers' `EncodecModel` keeps, so the folder `save_pretrained` writes loads with
``EncodecModel.from_pretrained`` and codes the same. In a distributed run the codebook statistics are summed over
the ranks and rank 0's codebooks are broadcast, so every rank keeps the same codebooks.

Clips are cut to random crops of `crop_samples` (half a second by default; EnCodec trains on 1 s crops), a fourth of a
full clip's cost.
"""

from __future__ import annotations

import os

import lightning as L
import torch
import torch.nn.functional as F
import torchaudio
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_modules.models.toy_musicgen import build_toy_encodec
from lightning_modules.module import stepped_schedule
from lightning_modules.passes import check_finite_terms


class MultiScaleMel(nn.Module):
    """A multi-scale reconstruction loss in frequency, at windows ``2^i`` for i in `scales` (hop a fourth of the
    window): the L1 distance of the mel spectrograms' magnitudes plus that of their logarithms (floored at `floor`),
    which weighs the quiet partials that make a timbre; averaged over the scales."""

    def __init__(self, sample_rate: int, scales: range = range(8, 12), n_mels: int = 64, floor: float = 1e-5) -> None:
        super().__init__()
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=2**i, win_length=2**i, hop_length=2**i // 4,
                                                 n_mels=min(n_mels, 2 ** (i - 3)), normalized=True, power=1.0)
            for i in scales
        )
        self.floor = floor

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        total = output.new_zeros(())
        for mel in self.mels:
            a, b = mel(output), mel(target)
            total = total + F.l1_loss(a, b) + F.l1_loss(a.clamp_min(self.floor).log(), b.clamp_min(self.floor).log())
        return total / len(self.mels)


class CodecTraining(L.LightningModule):
    """Trains a tiny transformers `EncodecModel` from scratch (`build_toy_encodec`).

    Args:
        sample_rate: audio sample rate in Hz.
        num_samples: clip length in samples, as the DataModule delivers it.
        crop_samples: length of the random crop each training clip is cut to (validation uses whole clips).
        num_filters: channels of the codec's first convolution (doubled at every downsampling).
        hidden_size: size of the latent frames and of the codebook entries.
        codebook_size: codes per codebook (a power of 2).
        waveform_weight: weight of the waveform's squared error.
        mel_weight: weight of the multi-scale mel loss (logged whatever its weight).
        commitment_weight: weight of the commitment loss (summed over the quantisers).
        ema_decay: decay of the codebooks' moving averages.
        dead_code_threshold: a code whose average count per batch falls below this is moved onto a batch frame.
        quantize_after: training steps as a plain autoencoder, before the codebooks are initialised and used.
        kmeans_batches: batches of latent frames (the last ones before quantisation) the k-means initialisation uses;
            they are not checkpointed, so a run resumed just before `quantize_after` clusters those seen since.
        kmeans_iterations: Lloyd iterations of the k-means initialisation.
        optimizer: builds the optimizer.
        lr_scheduler: builds a learning-rate scheduler, stepped every optimizer step; none when not given.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        num_samples: int = 32768,
        crop_samples: int = 8000,
        num_filters: int = 8,
        hidden_size: int = 64,
        codebook_size: int = 256,
        waveform_weight: float = 1.0,
        mel_weight: float = 0.0,
        commitment_weight: float = 0.01,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.5,
        quantize_after: int = 1000,
        kmeans_batches: int = 10,
        kmeans_iterations: int = 20,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if not 0 < crop_samples <= num_samples:
            raise ValueError(f"crop_samples={crop_samples} must be in (0, num_samples={num_samples}].")
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.crop_samples = crop_samples
        self.codec = build_toy_encodec(sample_rate, num_filters=num_filters, hidden_size=hidden_size,
                                       codebook_size=codebook_size)
        for layer in self.codec.quantizer.layers:
            layer.codebook.inited.zero_()  # residual k-means sets it at step `quantize_after`
        self.spectral = MultiScaleMel(sample_rate)
        self.waveform_weight = waveform_weight
        self.mel_weight = mel_weight
        self.commitment_weight = commitment_weight
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self.quantize_after = quantize_after
        self.kmeans_batches = kmeans_batches
        self.kmeans_iterations = kmeans_iterations
        self._recent: list[Tensor] = []  # latent frames of the last batches, until the codebooks are initialised
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    # ------------------------------------------------------------------------------------------ quantisation
    @torch.no_grad()
    def _kmeans(self, frames: Tensor, codes: int) -> Tensor:
        """`codes` centroids of `(n, dim)` frames by Lloyd's algorithm from a random draw of frames."""
        centroids = frames[torch.randint(len(frames), (codes,), device=frames.device)]
        for _ in range(self.kmeans_iterations):
            assignment = torch.cdist(frames, centroids).argmin(1)
            counts = torch.bincount(assignment, minlength=codes).float()
            sums = torch.zeros_like(centroids).index_add_(0, assignment, frames)
            centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
        return centroids

    @torch.no_grad()
    def _update_codebook(self, book: nn.Module, frames: Tensor, assignment: Tensor) -> None:
        """One EMA step of `book` (an `EncodecEuclideanCodebook`) towards the mean of the frames assigned to each
        code, with Laplace smoothing of the counts, then dead codes moved onto random frames."""
        decay, codes = self.ema_decay, book.embed.shape[0]
        counts = torch.bincount(assignment, minlength=codes).to(frames.dtype)
        sums = torch.zeros_like(book.embed).index_add_(0, assignment, frames)
        if _distributed():  # every rank's frames count: the averages are those of the global batch
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        book.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        book.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
        total = book.cluster_size.sum()
        smoothed = (book.cluster_size + 1e-5) / (total + codes * 1e-5) * total
        book.embed.copy_(book.embed_avg / smoothed[:, None])
        dead = book.cluster_size < self.dead_code_threshold
        if dead.any():
            replacement = frames[torch.randint(len(frames), (int(dead.sum()),), device=frames.device)]
            book.embed[dead] = replacement
            book.embed_avg[dead] = replacement
            book.cluster_size[dead] = 1.0
        _broadcast_buffers(book)  # the dead codes' draws are each rank's own: rank 0's win

    @property
    def quantizing(self) -> bool:
        """Whether the codebooks are initialised (and so in use)."""
        return all(layer.codebook.inited.item() for layer in self.codec.quantizer.layers)

    @torch.no_grad()
    def initialise_codebooks(self, frames: Tensor) -> None:
        """Residual k-means: each codebook's codes are the centroids of what the codebooks before it leave of the
        `(n, dim)` latent frames."""
        residual = frames
        for layer in self.codec.quantizer.layers:
            book = layer.codebook
            book.embed.copy_(self._kmeans(residual, book.embed.shape[0]))
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
            _broadcast_buffers(book)
            residual = residual - book.embed[book.quantize(residual)]

    def quantize(self, latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(batch, dim, frames)` latents through every residual quantiser: the quantised latents with the
        straight-through gradient, the summed commitment loss and the codes `(codebooks, batch, frames)`. In training
        the codebooks are updated from these latents."""
        batch, dim, frames = latents.shape
        flat = latents.transpose(1, 2).reshape(-1, dim)
        residual = flat
        quantized = torch.zeros_like(flat)
        commitment = latents.new_zeros(())
        codes = []
        for layer in self.codec.quantizer.layers:
            book = layer.codebook
            detached = residual.detach()
            assignment = book.quantize(detached)
            chosen = book.embed[assignment]
            commitment = commitment + F.mse_loss(residual, chosen)
            if self.training:
                self._update_codebook(book, detached, assignment)
            quantized = quantized + chosen
            residual = residual - chosen
            codes.append(assignment)
        straight_through = flat + (quantized - flat).detach()
        return (straight_through.view(batch, frames, dim).transpose(1, 2), commitment,
                torch.stack(codes).view(-1, batch, frames))

    # --------------------------------------------------------------------------------------------- objective
    def _losses(self, audio: Tensor) -> dict[str, Tensor]:
        waveform = audio.unsqueeze(1)
        latents = self.codec.encoder(waveform)
        if self.training and not self.quantizing:
            self._recent = [*self._recent, latents.detach().transpose(1, 2).flatten(0, 1)][-self.kmeans_batches:]
            if self.global_step >= self.quantize_after:
                self.initialise_codebooks(torch.cat(self._recent))
                self._recent = []
        if self.quantizing:
            quantized, commitment, _ = self.quantize(latents)
        else:  # a plain autoencoder until the codebooks are initialised
            quantized, commitment = latents, latents.new_zeros(())
        output = self.codec.decoder(quantized)[..., : waveform.shape[-1]]
        terms = {"waveform": F.mse_loss(output, waveform), "mel": self.spectral(output, waveform),
                 "commitment": commitment}
        terms["loss"] = (self.waveform_weight * terms["waveform"] + self.mel_weight * terms["mel"]
                         + self.commitment_weight * terms["commitment"])
        return terms

    def _crop(self, audio: Tensor) -> Tensor:
        starts = torch.randint(0, audio.shape[-1] - self.crop_samples + 1, (audio.shape[0],)).tolist()
        return torch.stack([clip[start: start + self.crop_samples] for clip, start in zip(audio, starts, strict=True)])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        terms = self._losses(self._crop(batch["audio"].float()))
        check_finite_terms(terms, {"batch": list(batch["id"])},
                           f"{type(self).__name__} training loss at step {self.global_step}")
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=len(batch["id"]))
        return terms["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self._losses(batch["audio"].float())
        check_finite_terms(terms, {"batch": list(batch["id"])}, f"{type(self).__name__} validation loss")
        self.log_dict({f"val/{name}": value for name, value in terms.items()}, batch_size=len(batch["id"]),
                      sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        return stepped_schedule(self.optimizer(self.codec.parameters()), self.lr_scheduler)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a transformers folder loadable by ``EncodecModel.from_pretrained`` (config and weights, codebooks
        included)."""
        self.codec.save_pretrained(path)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers of `module` (nothing outside a distributed run)."""
    if _distributed():
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)
