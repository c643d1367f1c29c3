"""Audio loading and the audio-text dataset: soundfile decoding, torchaudio resampling, downmix to mono, and crop or
zero-pad to the model's length with a validity mask."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import soundfile as sf
import torch
import torchaudio
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.manifest import ManifestItem, check_finite
from datamodules.target_cache import TargetCache


@functools.lru_cache(maxsize=16)
def _resampler(orig_freq: int, new_freq: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig_freq, new_freq)


def load_audio(item: ManifestItem, sample_rate: int, num_samples: int) -> tuple[Tensor, Tensor]:
    """The item's audio as `(num_samples,)` float32 mono at `sample_rate` and its `(num_samples,)` validity mask.

    The clip starts at the item's offset; longer audio is cropped, shorter audio zero-padded (mask False there).

    Raises:
        ValueError: the file does not decode, or the clip holds a NaN or infinite sample (naming the file, the item
            and the sample's position).
    """
    try:
        with sf.SoundFile(str(item.path)) as f:
            native_rate = f.samplerate
            start = min(f.frames, round(item.offset * native_rate))
            f.seek(start)
            wanted = -1 if item.duration is None else round(item.duration * native_rate)
            max_native = int(num_samples * native_rate / sample_rate) + 1
            frames = max_native if wanted < 0 else min(wanted, max_native)
            data = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"Cannot decode {item.path} (item {item.id!r}): {err}") from err
    check_finite(data, start, native_rate, item)
    audio = torch.from_numpy(data).mean(dim=1)
    if native_rate != sample_rate:
        audio = _resampler(native_rate, sample_rate)(audio)
    audio = audio[:num_samples]
    mask = torch.zeros(num_samples, dtype=torch.bool)
    mask[: audio.shape[0]] = True
    if audio.shape[0] < num_samples:
        audio = torch.nn.functional.pad(audio, (0, num_samples - audio.shape[0]))
    return audio, mask


class AudioTextDataset(Dataset):
    """Items of a manifest as dicts with ``id``, ``caption``, ``group``, ``split``, ``mask`` and ``audio`` and/or
    ``targets``.

    Args:
        items: the manifest items.
        sample_rate: the model's sample rate in Hz.
        num_samples: the model's clip length in samples.
        split: a name carried by every item (``forget``, ``retain``, ...), so evaluation can tell sets apart.
        cache: cached `encode_audio` outputs; each item then carries its ``targets`` and the mask stored with them.
        with_audio: also decode the audio when a cache is given (evaluation compares generations with it); the
            model's losses need only the targets.
    """

    def __init__(self, items: Sequence[ManifestItem], sample_rate: int, num_samples: int, split: str = "",
                 cache: TargetCache | None = None, with_audio: bool = True) -> None:
        self.items = list(items)
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.split = split
        self.cache = cache
        self.with_audio = with_audio or cache is None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        example = {"id": item.id, "caption": item.caption, "group": item.group, "split": self.split}
        if self.cache is not None:
            example["targets"], num_valid = self.cache.load(item.id)
            example["mask"] = torch.arange(self.num_samples) < num_valid
        if self.with_audio:
            example["audio"], example["mask"] = load_audio(item, self.sample_rate, self.num_samples)
        return example


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, drop_last: bool = False
) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
                      persistent_workers=num_workers > 0)
