"""`ToyQueries`: generated pieces to attribute in the toy world, with ground truth: the shipped toy model prompted with
"a piece by <artist>" for each artist, written as WAV files and a manifest whose ``group`` is the prompted artist,
so an attribution can be checked against the artist it should point to (precision@k; no published music work has
such ground truth)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import soundfile as sf
import torch

from datamodules.manifest import ManifestItem, write_manifest
from datamodules.source import DataSource
from datamodules.toy_corpus import ARTISTS
from lightning_modules.io import atomic_directory
from lightning_modules.models.base import TextToMusicModel

log = logging.getLogger(__name__)

PROMPT = "a piece by {artist}"


def query_id(artist: str, index: int) -> str:
    """The id of the `index`-th piece prompted by `artist`: ``<artist slug>-prompted-<index>``."""
    return f"{artist.lower().replace(' ', '_')}-prompted-{index:02d}"


class ToyQueries(DataSource):
    """Writes ``queries.jsonl`` and its WAV files under `root` when missing (an existing set made with other
    settings is an error).

    Args:
        root: folder of the queries.
        backend: the model class that loads `model` (`lightning_modules.models.toy.ToyTextToMusic` in the toy
            world); passed in, so the data side depends on the model contract only.
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
        if not (isinstance(backend, type) and issubclass(backend, TextToMusicModel)):
            raise TypeError(f"backend must be a TextToMusicModel class such as "
                            f"lightning_modules.models.toy.ToyTextToMusic, got {backend!r}.")
        if per_artist < 1 or not 1 <= num_artists <= len(ARTISTS):
            raise ValueError(f"per_artist must be at least 1 and num_artists in [1, {len(ARTISTS)}], got "
                             f"{per_artist} and {num_artists}.")
        self.root = Path(root)
        self.backend = backend
        self.model = model
        self.settings = {"model": model, "per_artist": per_artist, "num_artists": num_artists, "seed": seed,
                         "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}

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
        model = self.backend.from_pretrained(self.model).eval()
        s = self.settings
        artists = [style.name for style in ARTISTS[: s["num_artists"]]]
        prompts = [(artist, index) for artist in artists for index in range(s["per_artist"])]
        with torch.no_grad():
            audio = model.generate([PROMPT.format(artist=artist) for artist, _ in prompts], seed=s["seed"],
                                   num_inference_steps=s["num_inference_steps"], guidance_scale=s["guidance_scale"])
        with atomic_directory(self.root, overwrite=False) as tmp:
            items = []
            for (artist, index), waveform in zip(prompts, audio, strict=True):
                path = tmp / f"{query_id(artist, index)}.wav"
                sf.write(path, waveform[0].cpu().numpy(), model.sample_rate, subtype="FLOAT")
                items.append(ManifestItem(query_id(artist, index), path, PROMPT.format(artist=artist), artist))
            write_manifest(items, tmp / "queries.jsonl")
            (tmp / "queries.json").write_text(json.dumps(self.settings, indent=1))
        log.info("Generated %d toy queries into %s.", len(items), self.root)
