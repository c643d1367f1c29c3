"""Benchmark: a loss pass over a dataset reading cached targets against the same pass decoding and encoding audio,
side by side in one process.

For each model it times (a) the loss of every item at fixed timesteps and noise from the audio files (decode,
resample, `encode_audio`, denoiser), (b) the encoding pass that fills the cache once, and (c) the same loss pass
from the cache (load, denoiser). It checks that (a) and (c) give the same losses, and reports the speedup a / c of
every later pass (Fisher, loss sweeps, evaluation losses) and the number of passes after which the cache has paid for
itself. Models: the shipped toy model (an exact mel front end, the cheapest possible encoder), and AudioLDM with the
VAE of the released checkpoint's size (random weights: the cost does not depend on them) on 10.24 s clips, once with
a tiny UNet (the data side alone) and once with a UNet of the released size (a whole pass).

    python benchmarks/target_cache.py        # writes benchmarks/results/target_cache.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from datamodules.audio import AudioTextDataset  # noqa: E402
from datamodules.manifest import ManifestItem  # noqa: E402
from datamodules.target_cache import TargetCache  # noqa: E402
from lightning_modules.io import write_json_atomic  # noqa: E402
from lightning_modules.models import TextToMusicModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_items(folder: Path, count: int, seconds: float, rate: int = 44100) -> list[ManifestItem]:
    """`count` stereo noise files at 44.1 kHz (as a user's collection would be: resampled and downmixed on load)."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(count):
        path = folder / f"track{i:03d}.wav"
        sf.write(path, (0.1 * rng.standard_normal((int(seconds * rate), 2))).astype(np.float32), rate)
        items.append(ManifestItem(id=f"track{i:03d}", path=path, caption=f"a piece number {i}"))
    return items


@torch.no_grad()
def loss_pass(model: TextToMusicModel, dataset: AudioTextDataset, batch_size: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    losses = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        losses.append(model.loss(batch, **model.fixed_loss_inputs(batch["id"])))
    return time.perf_counter() - start, torch.cat(losses)


@torch.no_grad()
def encoding_pass(model: TextToMusicModel, dataset: AudioTextDataset, cache: TargetCache, batch_size: int) -> float:
    start = time.perf_counter()
    for batch in DataLoader(dataset, batch_size=batch_size):
        targets = model.encode_audio(batch["audio"], batch["mask"])
        for item_id, target, mask in zip(batch["id"], targets, batch["mask"], strict=True):
            cache.save(item_id, target, int(mask.sum()))
    return time.perf_counter() - start


def measure(name: str, model: TextToMusicModel, items: list[ManifestItem], cache_root: Path, batch_size: int) -> dict:
    model.eval()
    plain = AudioTextDataset(items, model.sample_rate, model.num_samples)
    cache = TargetCache(cache_root, model.targets_key())
    loss_pass(model, AudioTextDataset(items[:batch_size], model.sample_rate, model.num_samples), batch_size)  # warm
    from_audio, losses_audio = loss_pass(model, plain, batch_size)
    encode = encoding_pass(model, plain, cache, batch_size)
    cached = AudioTextDataset(items, model.sample_rate, model.num_samples, cache=cache, with_audio=False)
    from_cache, losses_cache = loss_pass(model, cached, batch_size)
    row = {
        "model": name, "items": len(items), "clip_s": model.num_samples / model.sample_rate,
        "target_shape": list(cached[0]["targets"].shape),
        "from_audio_s": from_audio, "encoding_pass_s": encode, "from_cache_s": from_cache,
        "speedup": from_audio / from_cache,
        "break_even_passes": encode / max(from_audio - from_cache, 1e-9),
        "max_abs_loss_difference": (losses_audio - losses_cache).abs().max().item(),
    }
    print(f"{name}: from audio {from_audio:.2f} s, from cache {from_cache:.2f} s ({row['speedup']:.1f}x), "
          f"encoding pass {encode:.2f} s, |loss difference| {row['max_abs_loss_difference']:.2e}")
    return row


def audioldm_with_released_vae(folder: Path, released_unet: bool) -> TextToMusicModel:
    """AudioLDM with the VAE of cvssp/audioldm-s-full-v2 (its configuration, random weights) and either the tiny
    test UNet or one of the released UNet's configuration (185M parameters)."""
    from diffusers import AudioLDMPipeline, AutoencoderKL, UNet2DConditionModel
    from transformers import ClapTextModelWithProjection

    from lightning_modules.models import AudioLDM
    from tests.tiny import audioldm as tiny

    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(128, 256, 512),
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=0.9227)
    unet_config = {**tiny.film_unet().config, "in_channels": 8, "out_channels": 8}
    if released_unet:
        unet_config.update(block_out_channels=(128, 256, 384, 640), layers_per_block=2, attention_head_dim=8,
                           cross_attention_dim=(128, 256, 384, 640), norm_num_groups=32,
                           down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
                           up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",))
    tokenizer = tiny.roberta_tokenizer()
    AudioLDMPipeline(vae=vae, text_encoder=ClapTextModelWithProjection(tiny.clap_text_config(len(tokenizer))),
                     tokenizer=tokenizer, unet=UNet2DConditionModel.from_config(unet_config),
                     scheduler=tiny.scheduler(), vocoder=tiny.vocoder()).save_pretrained(folder)
    return AudioLDM(pretrained=str(folder), duration=10.24)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "target_cache.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from lightning_modules.models import ToyTextToMusic

        toy = ToyTextToMusic.from_pretrained(REPO / "checkpoints" / "toy" / "base")
        rows.append(measure("toy (shipped)", toy, write_items(tmp, args.items, 2.1), tmp / "cache", args.batch_size))
        (tmp / "long").mkdir()
        long_items = write_items(tmp / "long", args.items, 10.24)
        for released_unet in (False, True):
            model = audioldm_with_released_vae(tmp / f"audioldm{int(released_unet)}", released_unet)
            unet = "released-size UNet (185M)" if released_unet else "tiny UNet"
            rows.append(measure(f"audioldm (released VAE, {unet})", model, long_items, tmp / "cache",
                                args.batch_size))
    write_json_atomic(args.out, {"benchmark": "target_cache", "torch_threads": torch.get_num_threads(),
                                 "batch_size": args.batch_size, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
