"""Generated pieces to attribute in the toy world, with ground truth.

- `ToyQueries`: the shipped toy model prompted with "a piece by <artist>" for each artist, written as WAV files and a
  manifest whose ``group`` is the prompted artist, so an attribution can be checked against the artist it should point
  to (precision@k; no published music work has such ground truth).
- `ToyLdsQueries`: the queries of the toy world's linear datamodeling benchmark (`scripts/lds.py`): per artist,
  pieces prompted by its name, pieces generated from a description of its music that does not name it, and real
  held-out tracks, each assigned to the validation or the test half (``split.json``).
"""

from __future__ import annotations

import json
import logging
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from datamodules.manifest import ManifestItem, read_manifest, write_manifest
from datamodules.source import DataSource
from datamodules.toy_corpus import ARTISTS, description_of
from lightning_modules.io import atomic_directory, read_json_verified, write_json_verified
from lightning_modules.models.base import TextToMusicModel

log = logging.getLogger(__name__)

PROMPT = "a piece by {artist}"


def slug(artist: str) -> str:
    return artist.lower().replace(" ", "_")


def query_id(artist: str, index: int, kind: str = "prompted") -> str:
    """The id of the `index`-th query of `kind` of `artist`: ``<artist slug>-<kind>-<index>``."""
    return f"{slug(artist)}-{kind}-{index:02d}"


class _GeneratedQueries(DataSource, ABC):
    """Queries written once under `root` by a text-to-music model (``queries.jsonl``, WAV files and ``queries.json``,
    the settings); reused when present with the same settings, an error when made with others.

    Args:
        backend: the model class that loads `model` (`lightning_modules.models.toy.ToyTextToMusic` in the toy
            world); passed in, so the data side depends on the model contract only.
        root: folder of the queries.
        settings: everything the queries depend on (the model's folder first).
    """

    def __init__(self, backend: type[TextToMusicModel], root: str, settings: dict[str, Any]) -> None:
        if not (isinstance(backend, type) and issubclass(backend, TextToMusicModel)):
            raise TypeError(f"backend must be a TextToMusicModel class such as "
                            f"lightning_modules.models.toy.ToyTextToMusic, got {backend!r}.")
        self.root = Path(root)
        self.backend = backend
        self.settings = settings

    @property
    def manifest(self) -> Path:
        return self.root / "queries.jsonl"

    def prepare(self) -> None:
        """Generate the queries unless identical ones are already there."""
        settings_file = self.root / "queries.json"
        if settings_file.is_file():
            existing = json.loads(settings_file.read_text())
            if existing != self.settings:
                raise ValueError(f"{self.root} holds toy queries made with {existing}, not {self.settings}: delete "
                                 "the folder or choose another `root`.")
            return
        if self.root.exists():
            raise FileExistsError(f"{self.root} exists and holds no toy queries: choose another `root`.")
        model = self.backend.from_pretrained(self.settings["model"]).eval()
        with atomic_directory(self.root, overwrite=False) as tmp:
            items = self._write(model, tmp)
            write_manifest(items, tmp / "queries.jsonl")
            (tmp / "queries.json").write_text(json.dumps(self.settings, indent=1))
        log.info("Generated %d toy queries into %s.", len(items), self.root)

    @abstractmethod
    def _write(self, model: TextToMusicModel, folder: Path) -> list[ManifestItem]:
        """Write the queries' audio (and any other file) into `folder`; return their manifest items."""

    def _generated(self, model: TextToMusicModel, folder: Path, queries: list[tuple[str, str, str]],
                   subtype: str = "FLOAT") -> list[ManifestItem]:
        """Generate (id, prompt, group) `queries` in one call (query i from seed ``settings["seed"] + i``) and write
        them as WAV files of `subtype`."""
        s = self.settings
        with torch.no_grad():
            audio = model.generate([prompt for _, prompt, _ in queries], seed=s["seed"],
                                   num_inference_steps=s["num_inference_steps"], guidance_scale=s["guidance_scale"])
        items = []
        for (name, prompt, group), waveform in zip(queries, audio, strict=True):
            path = folder / f"{name}.wav"
            sf.write(path, waveform[0].cpu().numpy(), model.sample_rate, subtype=subtype)
            items.append(ManifestItem(name, path, prompt, group))
        return items


class ToyQueries(_GeneratedQueries):
    """Writes ``queries.jsonl`` and its WAV files under `root` when missing (an existing set made with other
    settings is an error).

    Args:
        backend: the model class that loads `model`.
        root: folder of the queries.
        model: the folder of the text-to-music model that generates them.
        per_artist: pieces per artist; piece i of artist a uses seed ``seed + a * per_artist + i``.
        num_artists: how many of the toy world's artists (in corpus order) to prompt.
        seed: seed of the first piece.
        num_inference_steps: DDIM steps.
        guidance_scale: classifier-free guidance; None keeps the model's default.
    """

    def __init__(self, backend: type[TextToMusicModel], root: str = "data/toy_queries",
                 model: str = "checkpoints/toy/base", per_artist: int = 1, num_artists: int = 10, seed: int = 0,
                 num_inference_steps: int = 25, guidance_scale: float | None = None) -> None:
        if per_artist < 1 or not 1 <= num_artists <= len(ARTISTS):
            raise ValueError(f"per_artist must be at least 1 and num_artists in [1, {len(ARTISTS)}], got "
                             f"{per_artist} and {num_artists}.")
        super().__init__(backend, root, {"model": model, "per_artist": per_artist, "num_artists": num_artists,
                                         "seed": seed, "num_inference_steps": num_inference_steps,
                                         "guidance_scale": guidance_scale})

    def _write(self, model: TextToMusicModel, folder: Path) -> list[ManifestItem]:
        s = self.settings
        artists = [style.name for style in ARTISTS[: s["num_artists"]]]
        return self._generated(model, folder, [(query_id(artist, index), PROMPT.format(artist=artist), artist)
                                               for artist in artists for index in range(s["per_artist"])])


class ToyLdsQueries(_GeneratedQueries):
    """The toy world's LDS queries, for each of its artists (in corpus order): `prompted` pieces from "a piece by
    <artist>", `described` pieces from `description_of` its music (which does not name it), and the first `heldout`
    of its real tracks in the corpus's held-out manifest (copied, with their captions); generated pieces are written
    as 16-bit WAV (the benchmark ships them). ``split.json`` gives each query its half: query j of a kind of artist a
    is validation when ``a + j + offset`` is even (offset 1 for held-out tracks, 0 otherwise), so each half holds
    every artist and, for even counts, half of each kind. Generated query i uses seed ``seed + i``, in the order
    prompted then described, artist by artist.

    Args:
        backend: the model class that loads `model`.
        root: folder of the queries.
        model: the folder of the model whose attribution the benchmark measures (it generates the pieces).
        corpus: the toy corpus's folder (``heldout.jsonl``).
        prompted, described, heldout: queries of each kind per artist.
        num_artists: how many of the toy world's artists (in corpus order) to query.
        seed, num_inference_steps, guidance_scale: as in `ToyQueries`.
    """

    SPLIT = "split.json"
    KINDS = ("prompted", "described", "heldout")

    def __init__(self, backend: type[TextToMusicModel], root: str = "checkpoints/toy/lds/queries",
                 model: str = "checkpoints/toy/lds_base", corpus: str = "data/toy", prompted: int = 2,
                 described: int = 1, heldout: int = 1, num_artists: int = len(ARTISTS), seed: int = 0,
                 num_inference_steps: int = 25, guidance_scale: float | None = None) -> None:
        if min(prompted, described, heldout) < 0 or prompted + described + heldout < 1:
            raise ValueError(f"prompted, described and heldout count queries per artist: none negative and at least "
                             f"one in all, got {prompted}, {described} and {heldout}.")
        if not 1 <= num_artists <= len(ARTISTS):
            raise ValueError(f"num_artists must lie in [1, {len(ARTISTS)}], got {num_artists}.")
        super().__init__(backend, root, {"model": model, "corpus": corpus, "num_artists": num_artists,
                                         "prompted": prompted,
                                         "described": described, "heldout": heldout, "seed": seed,
                                         "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale})

    def split(self) -> dict[str, str]:
        """Query id -> "validation" or "test", verified."""
        return read_json_verified(self.root / self.SPLIT, "LDS query split", f"delete {self.root} and generate the "
                                  "queries again")

    def _write(self, model: TextToMusicModel, folder: Path) -> list[ManifestItem]:
        s = self.settings
        heldout = read_manifest(Path(s["corpus"]) / "heldout.jsonl")
        generated: list[tuple[str, str, str]] = []  # (id, prompt, artist)
        real: list[ManifestItem] = []
        split: dict[str, str] = {}
        for a, style in enumerate(ARTISTS[: s["num_artists"]]):
            tracks = [item for item in heldout if item.group == style.name]
            if len(tracks) < s["heldout"]:
                raise ValueError(f"{s['corpus']}/heldout.jsonl has {len(tracks)} tracks of {style.name}, fewer than "
                                 f"heldout={s['heldout']}.")
            for kind in self.KINDS:
                for j in range(s[kind]):
                    name = query_id(style.name, j, kind)
                    split[name] = "validation" if (a + j + (kind == "heldout")) % 2 == 0 else "test"
                    if kind == "heldout":
                        shutil.copyfile(tracks[j].path, folder / f"{name}.wav")
                        real.append(ManifestItem(name, folder / f"{name}.wav", tracks[j].caption, style.name))
                    else:
                        prompt = PROMPT.format(artist=style.name) if kind == "prompted" else description_of(style)
                        generated.append((name, prompt, style.name))
        items = [*self._generated(model, folder, generated, subtype="PCM_16"), *real] if generated else real
        write_json_verified(folder / self.SPLIT, split)
        order = {name: i for i, name in enumerate(split)}  # artist by artist, kind by kind
        return sorted(items, key=lambda item: order[item.id])
