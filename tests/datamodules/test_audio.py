"""Audio loading (crop, pad, downmix, resample, offset and duration) and the audio-text dataset."""

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from datamodules.audio import AudioTextDataset, load_audio
from datamodules.manifest import ManifestItem


def wav(path: Path, data: np.ndarray, sample_rate: int = 16000) -> ManifestItem:
    """Write `data` as a float WAV (exact sample values) and return an item pointing at it."""
    sf.write(path, data.astype(np.float32), sample_rate, subtype="FLOAT")
    return ManifestItem(path.stem, path, f"caption of {path.stem}", group="g")


def ramp(num_frames: int) -> np.ndarray:
    return np.arange(num_frames) / 100_000  # sample n has value n / 1e5


def test_longer_audio_is_cropped_with_an_all_true_mask(tmp_path):
    item = wav(tmp_path / "long.wav", ramp(16000))

    audio, mask = load_audio(item, sample_rate=16000, num_samples=8000)

    assert audio.shape == mask.shape == (8000,)
    assert audio.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.all()
    torch.testing.assert_close(audio, torch.from_numpy(ramp(8000)).float())


def test_shorter_audio_is_zero_padded_and_masked(tmp_path):
    item = wav(tmp_path / "short.wav", 0.5 + ramp(3000))

    audio, mask = load_audio(item, sample_rate=16000, num_samples=8000)

    assert audio.shape == (8000,)
    assert int(mask.sum()) == 3000 and mask[:3000].all() and not mask[3000:].any()
    torch.testing.assert_close(audio[:3000], torch.from_numpy(0.5 + ramp(3000)).float())
    assert torch.count_nonzero(audio[3000:]) == 0


def test_stereo_is_downmixed_to_the_channel_mean(tmp_path):
    left, right = ramp(4000), np.full(4000, -0.2)
    item = wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1))

    audio, mask = load_audio(item, sample_rate=16000, num_samples=4000)

    assert audio.shape == (4000,) and mask.all()
    torch.testing.assert_close(audio, torch.from_numpy((left + right) / 2).float())


def test_audio_is_resampled_to_the_model_rate(tmp_path):
    t = np.arange(4000) / 8000
    item = wav(tmp_path / "8k.wav", 0.5 * np.sin(2 * np.pi * 440 * t), sample_rate=8000)  # 0.5 s at 8 kHz

    audio, mask = load_audio(item, sample_rate=16000, num_samples=16000)

    assert audio.shape == (16000,)
    assert abs(int(mask.sum()) - 2 * 4000) <= 2
    assert torch.count_nonzero(audio[~mask]) == 0
    # Still a 440 Hz tone: the spectral peak of the valid part is at 440 Hz at the new rate.
    valid = audio[mask].numpy()
    peak_hz = np.argmax(np.abs(np.fft.rfft(valid))) * 16000 / valid.size
    assert peak_hz == pytest.approx(440, abs=4)


def test_long_audio_at_a_lower_rate_fills_the_clip(tmp_path):
    item = wav(tmp_path / "8k_long.wav", np.full(16000, 0.25), sample_rate=8000)  # 2 s at 8 kHz

    audio, mask = load_audio(item, sample_rate=16000, num_samples=16000)

    assert audio.shape == (16000,) and mask.all()


def test_offset_and_duration_select_the_clip(tmp_path):
    item = wav(tmp_path / "ramp.wav", ramp(16000))
    clip = ManifestItem(item.id, item.path, item.caption, offset=0.25, duration=0.1)

    audio, mask = load_audio(clip, sample_rate=16000, num_samples=8000)

    assert audio[0].item() == pytest.approx(4000 / 100_000)  # first sample is frame 0.25 s * 16000
    assert audio[1599].item() == pytest.approx(5599 / 100_000)
    assert int(mask.sum()) == 1600 and not mask[1600:].any()  # 0.1 s, then padding


def test_offset_without_duration_reads_to_the_clip_length(tmp_path):
    item = wav(tmp_path / "ramp.wav", ramp(16000))
    clip = ManifestItem(item.id, item.path, item.caption, offset=0.5)

    audio, mask = load_audio(clip, sample_rate=16000, num_samples=12000)

    assert audio[0].item() == pytest.approx(8000 / 100_000)
    assert int(mask.sum()) == 8000  # only 0.5 s remain after the offset


def test_undecodable_file_raises_value_error_naming_it(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"\x00garbage" * 64)

    with pytest.raises(ValueError, match=r"Cannot decode .*bad\.wav \(item 'x'\)"):
        load_audio(ManifestItem("x", bad, "c"), sample_rate=16000, num_samples=100)


def test_dataset_items_and_default_collate(tmp_path):
    items = [wav(tmp_path / f"t{k}.wav", np.full(1000 * (k + 1), 0.1 * (k + 1))) for k in range(3)]
    dataset = AudioTextDataset(items, sample_rate=16000, num_samples=2000, split="forget")

    assert len(dataset) == 3
    sample = dataset[0]
    assert set(sample) == {"id", "caption", "group", "split", "audio", "mask"}
    assert (sample["id"], sample["caption"], sample["group"], sample["split"]) == ("t0", "caption of t0", "g", "forget")
    assert int(sample["mask"].sum()) == 1000

    batch = next(iter(DataLoader(dataset, batch_size=2, shuffle=False)))

    assert batch["id"] == ["t0", "t1"]
    assert batch["caption"] == ["caption of t0", "caption of t1"]
    assert batch["split"] == ["forget", "forget"] and batch["group"] == ["g", "g"]
    assert batch["audio"].shape == (2, 2000) and batch["audio"].dtype == torch.float32
    assert batch["mask"].shape == (2, 2000) and batch["mask"].dtype == torch.bool
    assert batch["mask"].sum(dim=1).tolist() == [1000, 2000]
    torch.testing.assert_close(batch["audio"][1], torch.full((2000,), 0.2))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_sample_is_refused_naming_file_item_and_position(tmp_path, value):
    data = np.zeros((16000, 2), dtype=np.float32)
    data[6000, 1] = value
    item = wav(tmp_path / "bad.wav", data)

    with pytest.raises(ValueError, match=rf"{re.escape(str(item.path))} \(item 'bad'\) holds a non-finite sample "
                                         rf"\({value}\) at frame 6000 \(0\.375 s\), channel 1"):
        load_audio(item, sample_rate=16000, num_samples=8000)


def test_the_position_of_a_non_finite_sample_counts_from_the_start_of_the_file(tmp_path):
    data = np.zeros(16000, dtype=np.float32)
    data[5000] = np.nan
    item = wav(tmp_path / "bad.wav", data)

    with pytest.raises(ValueError, match=r"at frame 5000 \(0\.312 s\), channel 0"):
        load_audio(ManifestItem(item.id, item.path, item.caption, offset=0.25), sample_rate=16000, num_samples=8000)
    # outside the clip it is never read
    audio, mask = load_audio(ManifestItem(item.id, item.path, item.caption, offset=0.5), 16000, 8000)
    assert mask.all() and torch.isfinite(audio).all()
