"""Evidence that the toy world makes unlearning measurable: per-artist zero-shot recognition by the toy CLAP.

For each artist, the share of held-out real tracks, and of each model's generations, that the toy CLAP assigns to
that artist, zero-shot over the prompts "a piece by <artist>". Each model generates twice per held-out item, at
fixed seeds: from the item's caption (which describes the music and names the artist) and from the artist's name
alone ("a piece by <artist>"), which separates what a model learned of the name from what the description carries.
Writes a JSON and a Markdown table.

    python scripts/toy_recognition.py --out reports/toy_recognition
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import ToyCorpus, read_manifest  # noqa: E402
from datamodules.audio import AudioTextDataset  # noqa: E402
from lightning_modules.io import write_json_atomic, write_text_atomic  # noqa: E402
from lightning_modules.metrics import ClapEmbedder  # noqa: E402
from lightning_modules.metrics.functional import per_class_accuracy, zero_shot_predictions  # noqa: E402
from lightning_modules.models import ToyTextToMusic  # noqa: E402

log = logging.getLogger("toy_recognition")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/toy")
    parser.add_argument("--clap", default="checkpoints/toy/clap")
    parser.add_argument("--models", nargs="*", default=["base=checkpoints/toy/base", "oracle=checkpoints/toy/oracle"])
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per generation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports/toy_recognition")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    corpus = ToyCorpus(args.corpus)
    corpus.prepare()
    items = read_manifest(Path(args.corpus) / "heldout.jsonl")
    artists = sorted({item.group for item in items})
    targets = torch.tensor([artists.index(item.group) for item in items])
    clap = ClapEmbedder(args.clap)
    classes = clap.embed_text([f"a piece by {artist}" for artist in artists])

    def accuracy(audio: torch.Tensor, sample_rate: int) -> list[float]:
        predictions = zero_shot_predictions(clap(audio, sample_rate), classes)
        return per_class_accuracy(predictions, targets, len(artists)).tolist()

    dataset = AudioTextDataset(items, clap.sample_rate, round(corpus.settings["duration"] * clap.sample_rate))
    results = {"held-out tracks": accuracy(torch.stack([dataset[i]["audio"] for i in range(len(dataset))]),
                                           clap.sample_rate)}
    for spec in args.models:
        name, folder = spec.split("=", 1)
        model = ToyTextToMusic.from_pretrained(folder).eval()
        started = time.perf_counter()
        for prompt_kind, prompts in (("captions", [item.caption for item in items]),
                                     ("name only", [f"a piece by {item.group}" for item in items])):
            audio = model.generate(prompts, seed=args.seed, num_inference_steps=args.steps)
            results[f"{name} ({prompt_kind})"] = accuracy(audio, model.sample_rate)
        log.info("%s: %d generations in %.1f s", name, 2 * len(items), time.perf_counter() - started)

    columns = list(results)
    lines = ["| artist | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for a, artist in enumerate(artists):
        lines.append(f"| {artist} | " + " | ".join(f"{results[c][a]:.2f}" for c in columns) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{sum(results[c]) / len(artists):.2f}**" for c in columns) + " |")
    table = "\n".join(lines) + f"\n\nChance: {1 / len(artists):.2f}. {len(items) // len(artists)} items per artist.\n"
    log.info("%s", table)
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), {"artists": artists, **results})
    write_text_atomic(out.with_suffix(".md"), table)


if __name__ == "__main__":
    main()
