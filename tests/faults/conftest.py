"""Fixtures of the fault-injection suite: a corpus of unusual and broken inputs (audio files in odd formats, NaN and
infinite samples, truncated, empty and corrupt files), written once per session with soundfile and the stdlib."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

RATE = 16000  # the loader's rate in the tests; files at other rates are resampled to it
TEN_MINUTES = 600 * RATE


@dataclass(frozen=True)
class AudioCase:
    """One file of the corpus.

    Args:
        path: the file (absent for the "missing" case).
        expected: `(frames,)` mono audio at `RATE` that the loader should return for the file, computed from the
            signal written (analytically for resampled files); empty for the broken files.
    """

    path: Path
    expected: np.ndarray


def tones(seconds: float, rate: int, *channels: tuple[float, float]) -> np.ndarray:
    """`(frames, channels)` float64 sines, one `(frequency Hz, amplitude)` per channel."""
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * frequency * t) for frequency, amplitude in channels], axis=1)


def _write(folder: Path, name: str, signal: np.ndarray, rate: int = RATE, **kwargs: str) -> AudioCase:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, signal, rate, **kwargs)
    return AudioCase(path, signal.mean(axis=1) if rate == RATE else np.empty(0))


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AudioCase]:
    """The audio corpus by case name; see the comments for what each file holds."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    piano = tones(0.5, RATE, (440, 0.4))
    cases = {
        # valid but unusual
        "pcm_u8": _write(folder, "pcm_u8.wav", piano, subtype="PCM_U8"),
        "pcm_24": _write(folder, "pcm_24.wav", piano, subtype="PCM_24"),
        "flac": _write(folder, "flac.flac", piano, subtype="PCM_16"),
        "vorbis": _write(folder, "vorbis.ogg", tones(1.0, RATE, (440, 0.4)), format="OGG", subtype="VORBIS"),
        "six_channels": _write(folder, "six_channels.wav",
                               tones(0.5, RATE, *((200 + 100 * k, 0.1 * (k + 1)) for k in range(6))), subtype="FLOAT"),
        "unicode": _write(folder, "Ünïcødé 曲 with spaces/♪ naïve piece.wav", piano, subtype="PCM_16"),
    }
    # 48 kHz stereo: resampled to 16 kHz and downmixed; the expected audio is the same sines sampled at 16 kHz
    stereo = _write(folder, "48k_stereo.wav", tones(1.0, 48000, (440, 0.4), (1000, 0.3)), 48000, subtype="FLOAT")
    cases["48k_stereo"] = AudioCase(stereo.path, tones(1.0, RATE, (440, 0.4), (1000, 0.3)).mean(axis=1))
    # ten minutes of float audio, and the same with one NaN 0.1 s before the end (checked block by block)
    long = np.sin(2 * np.pi * 440 * np.arange(TEN_MINUTES, dtype=np.float32) / RATE) * np.float32(0.4)
    sf.write(folder / "ten_minutes.wav", long, RATE, subtype="FLOAT")
    cases["ten_minutes"] = AudioCase(folder / "ten_minutes.wav", long[: 2 * RATE].astype(np.float64))
    long[TEN_MINUTES - RATE // 10] = np.nan
    sf.write(folder / "ten_minutes_nan_at_end.wav", long, RATE, subtype="FLOAT")
    cases["ten_minutes_nan_at_end"] = AudioCase(folder / "ten_minutes_nan_at_end.wav", np.empty(0))
    del long

    # broken
    nan = piano.copy()
    nan[3000, 0] = np.nan  # frame 3000 = 0.1875 s
    cases["nan"] = AudioCase(_write(folder, "nan.wav", nan, subtype="FLOAT").path, np.empty(0))
    inf = tones(0.5, RATE, (440, 0.4), (440, 0.4))
    inf[4000, 1] = np.inf  # frame 4000 = 0.25 s, right channel
    cases["pos_inf"] = AudioCase(_write(folder, "pos_inf.wav", inf, subtype="DOUBLE").path, np.empty(0))
    # a PCM_16 WAV of 1 s whose data chunk is cut after 0.5 s (the header still says 1 s)
    whole = _write(folder, "whole.wav", tones(1.0, RATE, (440, 0.4)), subtype="PCM_16")
    data = whole.path.read_bytes()
    (folder / "truncated.wav").write_bytes(data[: 44 + RATE])  # 44-byte header, then 8000 frames of 2 bytes
    cases["truncated"] = AudioCase(folder / "truncated.wav", whole.expected[: RATE // 2])
    # a FLAC of 1 s cut to its first half: its header still states 1 s
    whole_flac = _write(folder, "whole.flac", tones(1.0, RATE, (440, 0.4)), subtype="PCM_16")
    data_flac = whole_flac.path.read_bytes()
    (folder / "truncated.flac").write_bytes(data_flac[: len(data_flac) // 2])
    cases["truncated_flac"] = AudioCase(folder / "truncated.flac", np.empty(0))
    cases["missing"] = AudioCase(folder / "missing.wav", np.empty(0))
    (folder / "empty.wav").write_bytes(b"")
    cases["empty"] = AudioCase(folder / "empty.wav", np.empty(0))
    cases["zero_frames"] = AudioCase(_write(folder, "zero_frames.wav", np.zeros((0, 1)), subtype="PCM_16").path,
                                     np.empty(0))
    corrupt = bytearray(data)
    corrupt[20:36] = b"\xff" * 16  # the 'fmt ' chunk's fields
    (folder / "corrupt.wav").write_bytes(bytes(corrupt))
    cases["corrupt"] = AudioCase(folder / "corrupt.wav", np.empty(0))
    (folder / "text.wav").write_text("id,path,caption\nthis is a table, not audio\n")
    cases["text"] = AudioCase(folder / "text.wav", np.empty(0))
    return cases
