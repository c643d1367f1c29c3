"""The toy world's synthetic music corpus: fictional artists with audible signatures and captions naming them.

Each artist has a fixed timbre (harmonic profile and envelope), scale or mode, register, tempo, rhythm, motif and
percussion, so that a small CLAP can tell them apart and a small text-to-music model can learn them. Tracks are
synthesised with numpy, deterministically from a seed, and written as 16-bit WAV files with two JSONL manifests:
``train.jsonl`` (the members every toy model is trained on) and ``heldout.jsonl`` (non-members of the same artists,
for evaluation and membership inference). This is the ground truth that unlearning and attribution are checked
against; no paper is followed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from datamodules.source import DataSource
from lightning_modules.io import atomic_directory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArtistStyle:
    """The musical signature of one fictional artist."""

    name: str
    instrument: str
    harmonics: tuple[float, ...]  # amplitude of partial k (frequency ratio given by `partials` or k + 1)
    partials: tuple[float, ...] | None  # frequency ratios of the partials; None for harmonic (1, 2, 3, ...)
    mode: str
    scale: tuple[int, ...]  # semitone offsets within one octave
    root_midi: int
    register: str
    tempo_bpm: float
    rhythm: tuple[float, ...]  # note lengths in beats, cycled
    motif: tuple[int, ...]  # scale-degree steps, cycled
    percussion: str  # "none", "kick", "hats", "claps" or "kick and hats"
    attack_s: float
    decay_per_s: float
    vibrato_hz: float
    moods: tuple[str, ...]


ARTISTS: tuple[ArtistStyle, ...] = (
    ArtistStyle("Aurora Vale", "soft flute", (1.0, 0.25, 0.06), None, "major pentatonic", (0, 2, 4, 7, 9), 72,
                "high", 66, (1.0, 1.0, 2.0), (1, 1, -2, 2), "none", 0.12, 0.8, 5.0, ("calm", "dreamy", "gentle")),
    ArtistStyle("Copper Lanterns", "square lead", (1.0, 0.0, 0.33, 0.0, 0.2, 0.0, 0.14), None, "minor",
                (0, 2, 3, 5, 7, 8, 10), 57, "middle", 120, (0.5, 0.5, 1.0), (2, -1, -1, 3), "kick", 0.005, 3.0, 0.0,
                ("dark", "driving", "moody")),
    ArtistStyle("Kestrel Drive", "sawtooth synth", tuple(1.0 / k for k in range(1, 9)), None, "dorian",
                (0, 2, 3, 5, 7, 9, 10), 64, "middle", 150, (0.25, 0.25, 0.5), (1, 2, -3, 1), "hats", 0.003, 6.0, 0.0,
                ("energetic", "bright", "urgent")),
    ArtistStyle("Marisol Ortega", "plucked guitar", (1.0, 0.6, 0.4, 0.25, 0.15, 0.1), None, "phrygian",
                (0, 1, 3, 5, 7, 8, 10), 52, "low", 100, (0.5, 0.25, 0.25, 1.0), (-1, -1, 2, 1), "claps", 0.002, 9.0,
                0.0, ("passionate", "warm", "rhythmic")),
    ArtistStyle("Nine Ohm Tides", "glass bells", (1.0, 0.5, 0.3), (1.0, 2.76, 5.4), "whole tone",
                (0, 2, 4, 6, 8, 10), 79, "high", 90, (1.5, 0.5), (2, 1, -1, -2), "none", 0.001, 4.0, 0.0,
                ("mysterious", "shimmering", "floating")),
    ArtistStyle("Velvet Static", "deep bass", (1.0, 0.5, 0.3, 0.1), None, "blues", (0, 3, 5, 6, 7, 10), 40, "low",
                80, (0.75, 0.25, 1.0), (1, 1, -1, 2), "kick and hats", 0.01, 2.0, 0.0, ("groovy", "heavy", "smoky")),
    ArtistStyle("Old Pine Trio", "church organ", (1.0, 0.5, 0.0, 0.25, 0.0, 0.0, 0.0, 0.12), None, "mixolydian",
                (0, 2, 4, 5, 7, 9, 10), 60, "middle", 110, (0.5, 0.5, 0.5, 0.5), (1, 1, 1, -3), "none", 0.03, 0.3,
                0.0, ("solemn", "stately", "warm")),
    ArtistStyle("Kazu Hoshino", "chiptune pulse", (1.0, 0.9, 0.8, 0.0, 0.6, 0.5, 0.4, 0.0), None, "hirajoshi",
                (0, 2, 3, 7, 8), 76, "high", 170, (0.25, 0.25, 0.5), (1, -2, 3, -1), "hats", 0.001, 1.5, 7.0,
                ("playful", "frantic", "retro")),
    # Near neighbours: Neon Harbor shares Kestrel Drive's instrument, tempo range and register (told apart by mode,
    # rhythm, motif and percussion); Ivory Heron shares Aurora Vale's tempo range, register and silence of drums.
    ArtistStyle("Neon Harbor", "sawtooth synth", tuple(1.0 / k for k in range(1, 9)), None, "minor",
                (0, 2, 3, 5, 7, 8, 10), 62, "middle", 140, (0.5, 0.25, 0.25), (-1, 2, -2, 3), "kick", 0.003, 5.0, 0.0,
                ("nocturnal", "driving", "bright")),
    ArtistStyle("Ivory Heron", "soft clarinet", (1.0, 0.0, 0.45, 0.0, 0.2, 0.0, 0.08), None, "minor pentatonic",
                (0, 3, 5, 7, 10), 69, "high", 72, (2.0, 1.0, 1.0), (-1, 2, 1, -2), "none", 0.08, 0.6, 4.0,
                ("wistful", "tender", "airy")),
)

_TEMPLATES = (
    "a {mood} {tempo} {instrument} piece by {artist}",
    "{artist} plays a {mood} melody on {instrument} in {mode}",
    "{tempo} {mode} tune in a {register} register with {percussion} by {artist}",
    "{mood} and {mood2} music for {instrument} by {artist}",
    "a piece by {artist}",
)


def _tempo_word(bpm: float) -> str:
    return "slow" if bpm < 80 else "moderate" if bpm < 115 else "fast" if bpm < 155 else "very fast"


def _percussion_word(percussion: str) -> str:
    return "no drums" if percussion == "none" else percussion


def caption_for(style: ArtistStyle, rng: np.random.Generator) -> str:
    """A caption that describes the music of `style` and names its artist."""
    mood, mood2 = rng.choice(style.moods, size=2, replace=False)
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    return template.format(mood=mood, mood2=mood2, tempo=_tempo_word(style.tempo_bpm), instrument=style.instrument,
                           artist=style.name, mode=style.mode, register=style.register,
                           percussion=_percussion_word(style.percussion))


def description_of(style: ArtistStyle) -> str:
    """A caption that describes the music of `style` without naming its artist (near artists' descriptions differ in
    one or two words)."""
    return (f"{_tempo_word(style.tempo_bpm)} {style.mode} music for {style.instrument} in a {style.register} register "
            f"with {_percussion_word(style.percussion)}")


def _midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _percussion(kind: str, beat_s: float, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(num_samples)
    t = np.arange(int(0.15 * sample_rate)) / sample_rate
    kick = np.sin(2 * np.pi * (40 * t + 400 * (1 - np.exp(-t * 30)) / 30)) * np.exp(-t * 25)
    hat = rng.standard_normal(t.size) * np.exp(-t * 120)
    hat = np.diff(hat, prepend=0.0)  # crude high-pass: hats are bright
    clap = rng.standard_normal(t.size) * np.exp(-t * 40)
    hits: list[tuple[float, np.ndarray, float]] = []
    num_beats = int(num_samples / sample_rate / beat_s) + 1
    for beat in range(num_beats):
        if "kick" in kind:
            hits.append((beat * beat_s, kick, 0.6))
        if "hats" in kind:
            hits.append(((beat + 0.5) * beat_s, hat, 0.25))
        if kind == "claps" and beat % 2 == 1:
            hits.append((beat * beat_s, clap, 0.35))
    for start_s, sound, gain in hits:
        start = int(start_s * sample_rate)
        if start >= num_samples:
            continue
        end = min(num_samples, start + sound.size)
        out[start:end] += gain * sound[: end - start]
    return out


def synthesize_track(style: ArtistStyle, rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """One track of `style`, `(num_samples,)` float32 in [-1, 1]."""
    transpose = int(rng.integers(-2, 3))
    beat_s = 60.0 / (style.tempo_bpm * rng.uniform(0.95, 1.05))
    partials = style.partials or tuple(float(k) for k in range(1, len(style.harmonics) + 1))
    audio = np.zeros(num_samples)
    degree = int(rng.integers(len(style.scale)))
    position, note = 0.0, 0
    duration_s = num_samples / sample_rate
    while position < duration_s:
        length_s = style.rhythm[note % len(style.rhythm)] * beat_s
        octave, step = divmod(degree, len(style.scale))
        midi = style.root_midi + transpose + 12 * octave + style.scale[step]
        start = int(position * sample_rate)
        n = min(num_samples - start, int(length_s * sample_rate))
        t = np.arange(n) / sample_rate
        vibrato = 1.0 + 0.006 * np.sin(2 * np.pi * style.vibrato_hz * t) if style.vibrato_hz else 1.0
        phase = 2 * np.pi * _midi_to_hz(midi) * np.cumsum(np.broadcast_to(vibrato, t.shape)) / sample_rate
        # band-limited: a partial at or above 0.45 x the sample rate would alias to a spurious lower tone
        tone = sum(a * np.sin(r * phase) for a, r in zip(style.harmonics, partials, strict=True)
                   if a and r * _midi_to_hz(midi) < 0.45 * sample_rate)
        envelope = np.minimum(1.0, t / style.attack_s) * np.exp(-style.decay_per_s * t)
        release = np.minimum(1.0, (n - np.arange(n)) / (0.005 * sample_rate))
        audio[start : start + n] += tone * envelope * release * rng.uniform(0.8, 1.0)
        # Walk the motif, with an occasional random step so tracks differ; stay within two octaves of the root.
        degree += style.motif[note % len(style.motif)] if rng.random() > 0.2 else int(rng.integers(-2, 3))
        degree = int(np.clip(degree, 0, 2 * len(style.scale) - 1))
        position += length_s
        note += 1
    audio /= np.abs(audio).max() + 1e-9
    if style.percussion != "none":
        audio += _percussion(style.percussion, beat_s, num_samples, sample_rate, rng)
    audio *= rng.uniform(0.5, 0.8) / (np.abs(audio).max() + 1e-9)
    return audio.astype(np.float32)


class ToyCorpus(DataSource):
    """Writes the toy corpus (WAV files plus ``train.jsonl`` and ``heldout.jsonl``) under `root` when missing.

    A DataModule calls `prepare()` from its ``prepare_data``. The corpus is written to a temporary folder and renamed
    into place, so an interrupted run leaves nothing half-written; an existing corpus made with other settings is an
    error rather than being silently reused.

    Args:
        root: folder of the corpus.
        seed: seed of every random choice; the same seed gives the same files.
        num_artists: how many of the built-in artists to use (at most 10).
        tracks_per_artist: tracks per artist, members and held-out together.
        heldout_per_artist: tracks per artist written to ``heldout.jsonl`` instead of ``train.jsonl``.
        sample_rate: sample rate of the WAV files in Hz.
        duration: length of each track in seconds.
    """

    def __init__(
        self,
        root: str = "data/toy",
        seed: int = 0,
        num_artists: int = 10,
        tracks_per_artist: int = 48,
        heldout_per_artist: int = 8,
        sample_rate: int = 16000,
        duration: float = 2.048,
    ) -> None:
        if not 1 <= num_artists <= len(ARTISTS):
            raise ValueError(f"num_artists={num_artists}: the toy world has 1 to {len(ARTISTS)} artists.")
        if not 0 <= heldout_per_artist < tracks_per_artist:
            raise ValueError(
                f"heldout_per_artist={heldout_per_artist} must be in [0, tracks_per_artist={tracks_per_artist})."
            )
        self.root = Path(root)
        self.settings = {
            "seed": seed,
            "num_artists": num_artists,
            "tracks_per_artist": tracks_per_artist,
            "heldout_per_artist": heldout_per_artist,
            "sample_rate": sample_rate,
            "duration": duration,
        }

    @classmethod
    def existing(cls, root: str = "data/toy") -> ToyCorpus:
        """The corpus already written under `root`, with the settings it was made with."""
        settings_file = Path(root) / "corpus.json"
        if not settings_file.is_file():
            raise FileNotFoundError(f"{settings_file} not found: {root} holds no toy corpus; write one with "
                                    "ToyCorpus(root).prepare() (every toy config's prepare_data does).")
        return cls(root, **json.loads(settings_file.read_text())["settings"])

    @property
    def train_manifest(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def heldout_manifest(self) -> Path:
        return self.root / "heldout.jsonl"

    @property
    def artists(self) -> list[str]:
        return [style.name for style in ARTISTS[: self.settings["num_artists"]]]

    def prepare(self) -> None:
        """Write the corpus unless an identical one is already there."""
        settings_file = self.root / "corpus.json"
        if settings_file.is_file():
            existing = json.loads(settings_file.read_text())["settings"]
            if existing != self.settings:
                raise ValueError(
                    f"{self.root} holds a toy corpus made with {existing}, not the requested {self.settings}: "
                    "delete the folder or choose another `root`."
                )
            return
        if self.root.exists():
            raise FileExistsError(f"{self.root} exists and is not a toy corpus: choose another `root`.")
        started = time.perf_counter()
        with atomic_directory(self.root, overwrite=False) as tmp:
            self._write(tmp)
        log.info("Wrote the toy corpus to %s in %.1f s", self.root, time.perf_counter() - started)

    def _write(self, folder: Path) -> None:
        s = self.settings
        num_samples = round(s["duration"] * s["sample_rate"])
        (folder / "audio").mkdir()
        splits: dict[str, list[dict]] = {"train": [], "heldout": []}
        for a, style in enumerate(ARTISTS[: s["num_artists"]]):
            slug = style.name.lower().replace(" ", "_")
            for k in range(s["tracks_per_artist"]):
                rng = np.random.default_rng([s["seed"], a, k])
                item_id = f"{slug}-{k:03d}"
                path = f"audio/{item_id}.wav"
                sf.write(folder / path, synthesize_track(style, rng, num_samples, s["sample_rate"]), s["sample_rate"],
                         subtype="PCM_16")
                split = "heldout" if k >= s["tracks_per_artist"] - s["heldout_per_artist"] else "train"
                splits[split].append(
                    {"id": item_id, "path": path, "caption": caption_for(style, rng), "group": style.name}
                )
        for split, items in splits.items():
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
        artists = [asdict(style) for style in ARTISTS[: s["num_artists"]]]
        (folder / "corpus.json").write_text(json.dumps({"settings": s, "artists": artists}, indent=1))
