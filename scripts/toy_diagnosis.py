"""Where does an artist's signal get lost between a real track and a generation? Per-stage numbers for the toy world.

For every artist, by two independent judges (the toy CLAP zero-shot over "a piece by <artist>", and the feature
tagger of `lightning_modules.metrics.feature_tagger`, fitted on the real training tracks):
- ``real``: held-out real tracks;
- ``resynthesised``: the same tracks through the model's audio path (log-mel patches, then Griffin-Lim);
- ``restored@s``: the same tracks' targets noised to the fraction s of the schedule and denoised by the model from
  their captions (what the model keeps or restores of a real track);
- ``generated (name, g=G, rescale R)``: generations from "a piece by <artist>" at guidance G, rescaled by R;
plus the noise floor itself: the 10th percentile and the median of each set's normalised log-mel values (the
quiet tenth of a real track's spectrogram sits at the floor, about -1.3), and each judge's confusions.

    python scripts/toy_diagnosis.py --model checkpoints/toy/base --out reports/toy_diagnosis
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import ToyCorpus  # noqa: E402
from lightning_modules.io import write_json_atomic, write_text_atomic  # noqa: E402
from lightning_modules.metrics import ClapEmbedder, ZeroShotTagger  # noqa: E402
from lightning_modules.metrics.feature_tagger import FeatureTagger  # noqa: E402
from lightning_modules.models import ToyTextToMusic  # noqa: E402
from scripts.toy_recognition import load_clips  # noqa: E402

log = logging.getLogger("toy_diagnosis")


def per_artist(logits: torch.Tensor, labels: list[str], groups: list[str], artists: list[str]) -> list[float]:
    predicted = [labels[i] for i in logits.argmax(-1).tolist()]
    return [sum(p == g for p, g in zip(predicted, groups, strict=True) if g == a) / groups.count(a) for a in artists]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/toy")
    parser.add_argument("--clap", default="checkpoints/toy/clap")
    parser.add_argument("--judge", default="checkpoints/toy/judge", help="feature tagger folder (fitted if missing)")
    parser.add_argument("--model", default="checkpoints/toy/base")
    parser.add_argument("--generations", type=int, default=32, help="name-only generations per artist")
    parser.add_argument("--guidance", nargs="*", default=["1:0", "3:0", "3:0.7"],
                        help="guidance scale:rescale pairs of the name-only generations")
    parser.add_argument("--strength", type=float, nargs="*", default=[0.5, 0.8])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="reports/toy_diagnosis")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)

    corpus = ToyCorpus.existing(args.corpus) if Path(args.corpus).is_dir() else ToyCorpus(args.corpus)
    corpus.prepare()
    model = ToyTextToMusic.from_pretrained(args.model).eval()
    rate, length = model.sample_rate, model.num_samples
    heldout, items = load_clips(corpus.heldout_manifest, rate, length)
    groups = [item.group for item in items]
    artists = sorted(set(groups))
    if not Path(args.judge).is_dir():
        train, train_items = load_clips(corpus.train_manifest, rate, length)
        FeatureTagger.fit(train, [item.group for item in train_items], rate, args.judge)
    judges = {"clap": ZeroShotTagger(ClapEmbedder(args.clap), artists), "features": FeatureTagger(args.judge)}
    rows: dict[str, dict] = {}

    def judge(stage: str, audio: torch.Tensor, stage_groups: list[str], targets: torch.Tensor) -> None:
        values = targets.flatten(1).float()
        rows[stage] = {"floor": values.quantile(0.1, dim=1).mean().item(), "median": values.median(1).values.mean()
                       .item()}
        for name, tagger in judges.items():
            logits = torch.cat([tagger(chunk, rate) for chunk in audio.split(64)])
            rows[stage][name] = per_artist(logits, tagger.labels, stage_groups, artists)
            predicted = [tagger.labels[i] for i in logits.argmax(-1).tolist()]
            rows[stage][f"{name} confusions"] = {
                a: dict(Counter(p for g, p in zip(stage_groups, predicted, strict=True) if g == a)) for a in artists}
        log.info("%-28s floor %+.2f median %+.2f  clap %.2f  features %.2f", stage, rows[stage]["floor"],
                 rows[stage]["median"], sum(rows[stage]["clap"]) / len(artists),
                 sum(rows[stage]["features"]) / len(artists))

    mask = torch.ones_like(heldout, dtype=torch.bool)
    real_targets = model.encode_audio(heldout, mask)
    judge("real", heldout, groups, real_targets)
    judge("resynthesised", model.decode_targets(real_targets)[:, 0, :length], groups, real_targets)
    captions = [item.caption for item in items]
    for strength in args.strength:
        restored = model.sample_targets(captions, seed=0, num_inference_steps=args.steps, init_targets=real_targets,
                                        strength=strength)
        judge(f"restored@{strength:g}", model.decode_targets(restored)[:, 0, :length], groups, restored)
    gen_groups = [a for a in artists for _ in range(args.generations)]
    prompts = [f"a piece by {a}" for a in gen_groups]
    for setting in args.guidance:
        guidance, rescale = (float(value) for value in setting.split(":"))
        model.architecture.guidance_rescale = rescale
        started = time.perf_counter()
        targets = torch.cat([model.sample_targets(chunk, seed=1000 + 64 * i, num_inference_steps=args.steps,
                                                  guidance_scale=guidance)
                             for i, chunk in enumerate([prompts[j:j + 64] for j in range(0, len(prompts), 64)])])
        log.info("%d generations in %.0f s", len(prompts), time.perf_counter() - started)
        judge(f"generated (name, g={guidance:g}, rescale {rescale:g})", model.decode_targets(targets)[:, 0, :length],
              gen_groups, targets)

    header = "| stage | floor (p10) | median | " + " | ".join(f"{a} clap / feat" for a in artists) + " | mean |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for stage, row in rows.items():
        cells = [f"{c:.2f} / {f:.2f}" for c, f in zip(row["clap"], row["features"], strict=True)]
        mean = f"{sum(row['clap']) / len(artists):.2f} / {sum(row['features']) / len(artists):.2f}"
        lines.append(f"| {stage} | {row['floor']:+.2f} | {row['median']:+.2f} | " + " | ".join(cells)
                     + f" | {mean} |")
    table = "\n".join(lines) + (f"\n\nModel {args.model}; {len(items) // len(artists)} held-out tracks and "
                                f"{args.generations} name-only generations per artist; {args.steps} DDIM steps.\n")
    log.info("%s", table)
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), {"artists": artists, "model": args.model, "stages": rows})
    write_text_atomic(out.with_suffix(".md"), table)


if __name__ == "__main__":
    main()
