r"""A stand-in for "your own collection": a folder of audio files and a captions CSV, as a user brings them.

Renders the tracks of one new fictional artist, Saffron Reef, whom no shipped toy model has heard, as 44.1 kHz stereo
WAV files (another rate and channel count than the toy corpus, so loading resamples and downmixes), one folder per
album, with ``tracks.csv`` (the tracks to train on) and ``heldout.csv`` (tracks kept out of training, non-members for
membership inference). Columns: ``track_id``, ``caption``, ``artist``. The README's own-data walk-through starts here:

    python scripts/toy_collection.py --out my_music
    python scripts/make_manifest.py --captions my_music/tracks.csv --audio-dir my_music --id-column track_id \
        --group-column artist --merge-with data/toy/train.jsonl --out data/mine/train.jsonl

The captions use only words the toy CLAP's tokenizer knows, except the artist's name, as a real caption would name
an artist a small model has never read.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.toy_corpus import ArtistStyle, caption_for, synthesize_track  # noqa: E402
from lightning_modules.io import atomic_directory  # noqa: E402

# Glass bells like Nine Ohm Tides, but fast, dorian and with claps: new to the toy world, described in its words.
SAFFRON_REEF = ArtistStyle("Saffron Reef", "glass bells", (1.0, 0.5, 0.3), (1.0, 2.76, 5.4), "dorian",
                           (0, 2, 3, 5, 7, 9, 10), 74, "high", 132, (0.5, 0.5, 1.0), (2, -1, 1, -3), "claps", 0.002,
                           5.0, 0.0, ("bright", "playful", "warm"))


def write_collection(out: Path, tracks: int = 48, heldout: int = 8, sample_rate: int = 44100, duration: float = 3.0,
                     seed: int = 0) -> None:
    """Write `tracks` tracks under `out` (atomically: a half-written collection never stays), the last `heldout` of
    them listed in ``heldout.csv`` rather than ``tracks.csv``."""
    if not 0 <= heldout < tracks:
        raise ValueError(f"--heldout {heldout} must be in [0, --tracks {tracks}).")
    rows: dict[str, list[dict]] = {"tracks": [], "heldout": []}
    with atomic_directory(out, overwrite=False) as folder:
        for k in range(tracks):
            rng = np.random.default_rng([seed, k])
            mono = synthesize_track(SAFFRON_REEF, rng, round(duration * sample_rate), sample_rate)
            pan = rng.uniform(0.35, 0.65)
            album = folder / f"album_{k // 16 + 1}"
            album.mkdir(exist_ok=True)
            track_id = f"sr{k:04d}"
            sf.write(album / f"{track_id}.wav", np.stack([mono * (1 - pan), mono * pan], axis=1) * 1.6, sample_rate,
                     subtype="PCM_16")
            split = "heldout" if k >= tracks - heldout else "tracks"
            rows[split].append({"track_id": track_id, "caption": caption_for(SAFFRON_REEF, rng),
                                "artist": SAFFRON_REEF.name})
        for split, split_rows in rows.items():
            with open(folder / f"{split}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["track_id", "caption", "artist"])
                writer.writeheader()
                writer.writerows(split_rows)
    print(f"Wrote {tracks} tracks of {SAFFRON_REEF.name} ({sample_rate} Hz stereo, {duration:g} s) under {out}: "
          f"{out / 'tracks.csv'} ({tracks - heldout} to train on), {out / 'heldout.csv'} ({heldout} held out).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist)")
    parser.add_argument("--tracks", type=int, default=48)
    parser.add_argument("--heldout", type=int, default=8, help="tracks listed in heldout.csv, not tracks.csv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_collection(args.out, args.tracks, args.heldout, seed=args.seed)


if __name__ == "__main__":
    main()
