"""Evidence that the toy world makes unlearning measurable: per-artist recognition of real tracks and of each model's
generations, by three judges, with their agreement and each artist's FAD.

The judges: the toy CLAP zero-shot over the prompts "a piece by <artist>"; a linear probe on the toy CLAP's audio
embeddings (`lightning_modules.metrics.probe`, fitted on the real training tracks: the CLAP's audio tower without its
text tower); and the feature tagger (`lightning_modules.metrics.feature_tagger`: logistic regression on hand-crafted
spectral and rhythmic features, fitted on the real training tracks; it shares nothing with the CLAP). The toy model is
conditioned on the toy CLAP's text tower, so where the zero-shot judge and the probe disagree on a model's
generations, the text side of the CLAP is what differs. Each model generates `--generations` clips per
artist twice, at fixed seeds: from captions of the artist's held-out tracks (which describe the music and name the
artist; cycled, each with its own seed) and from the name alone ("a piece by <artist>"), which separates what a model
learned of the name from what the description carries. FAD (toy-CLAP embeddings) compares each artist's name-only
generations with all of that artist's real tracks; the "real" row of FAD is the artist's held-out tracks against its
training tracks, the floor at this sample size. Writes a JSON and a Markdown table.

A model folder is the toy diffusion model's or a MusicGen folder (the toy MusicGen's); with ``--codec`` the held-out
tracks are also coded and decoded by that EnCodec folder and judged, with the log-mel distance of each reconstruction
to its track beside that of two different tracks of one artist, and so are hybrids of each track and its
reconstruction (`codec_hybrids`: which part of the codec's error the judges hear).

    python scripts/toy_recognition.py --out reports/toy_recognition
    python scripts/toy_recognition.py --out reports/toy_musicgen_recognition --codec checkpoints/toy/encodec \
        --models base=checkpoints/toy/musicgen oracle=checkpoints/toy/musicgen_oracle
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torchaudio
from transformers import EncodecModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import ToyCorpus, read_manifest  # noqa: E402
from datamodules.audio import AudioTextDataset  # noqa: E402
from lightning_modules.io import write_json_atomic, write_text_atomic  # noqa: E402
from lightning_modules.metrics import ClapEmbedder, ZeroShotTagger  # noqa: E402
from lightning_modules.metrics.feature_tagger import FeatureTagger  # noqa: E402
from lightning_modules.metrics.functional import bootstrap, frechet_distance, gaussian_statistics  # noqa: E402
from lightning_modules.metrics.probe import EmbeddingProbe  # noqa: E402
from lightning_modules.models import MusicGen, TextToMusicModel, ToyTextToMusic  # noqa: E402

log = logging.getLogger("toy_recognition")
JUDGES = ("clap", "probe", "features")  # a report written before the probe existed names ("clap", "features")


def load_clips(manifest: Path, sample_rate: int, num_samples: int) -> tuple[torch.Tensor, list]:
    items = read_manifest(manifest)
    dataset = AudioTextDataset(items, sample_rate, num_samples)
    return torch.stack([dataset[i]["audio"] for i in range(len(dataset))]), items


def load_model(folder: str, duration: float) -> TextToMusicModel:
    """The toy diffusion model's folder (it has ``toy_ttm.json``) or a MusicGen folder, at the corpus's clip length."""
    if (Path(folder) / "toy_ttm.json").is_file():
        return ToyTextToMusic.from_pretrained(folder)
    return MusicGen.from_pretrained(folder, duration=duration)


def log_mel_distance(a: torch.Tensor, b: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Per clip, the mean absolute difference of two `(n, samples)` batches' log mel spectrograms (1024-sample windows,
    64 bands, floored at 1e-5): 0 for identical clips."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=64, power=1.0)
    return (mel(a).clamp_min(1e-5).log() - mel(b).clamp_min(1e-5).log()).abs().mean((1, 2))


QUIET_DB = 40  # `codec_hybrids`: a bin this far below its clip's loudest bin is quiet (92 % of the held-out tracks')


def codec_hybrids(tracks: torch.Tensor, rebuilt: torch.Tensor, quiet_db: float = QUIET_DB,
                  n_fft: int = 1024) -> dict[str, torch.Tensor]:
    """Which part of a codec's error the judges hear: `(n, samples)` clips made from the STFTs (window `n_fft`, hop a
    fourth) of the tracks and of their reconstructions `rebuilt`, one part from each: the magnitudes of one with the
    phases of the other, and the bins at least `quiet_db` below the track's loudest bin from one, the others from the
    other. A hybrid the judges recognise as well as the tracks has the codec's error only where they do not listen."""
    window = torch.hann_window(n_fft)
    track, codec = (torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True) for x in (tracks, rebuilt))
    peak = track.abs().amax((1, 2), keepdim=True)
    quiet = track.abs() < peak * 10 ** (-quiet_db / 20)
    parts = {"track's magnitudes, codec's phases": track.abs() * torch.exp(1j * codec.angle()),
             "codec's magnitudes, track's phases": codec.abs() * torch.exp(1j * track.angle()),
             f"track in the bins {quiet_db:g} dB below its peak, codec elsewhere": torch.where(quiet, track, codec),
             f"codec in the bins {quiet_db:g} dB below the track's peak, track elsewhere": torch.where(quiet, codec,
                                                                                                        track)}
    return {name: torch.istft(spectrum, n_fft, n_fft // 4, window=window, length=tracks.shape[-1])
            for name, spectrum in parts.items()}


@torch.no_grad()
def reconstruct(folder: str, audio: torch.Tensor) -> torch.Tensor:
    """`(n, samples)` clips coded and decoded by the EnCodec in `folder` (transformers' `EncodecModel`)."""
    codec = EncodecModel.from_pretrained(folder).eval()
    codes = codec.encode(audio[:, None]).audio_codes
    return codec.decode(codes, [None]).audio_values[:, 0, : audio.shape[-1]]


def fad(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """FAD between two sets of embeddings `(n, dim)`."""
    stats = [gaussian_statistics(e.double().sum(0), e.double().T @ e.double(), len(e)) for e in (reference, generated)]
    return frechet_distance(*stats[0], *stats[1]).item()


def percussion_bands(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Shares of each clip's STFT power below 120 Hz (the toy corpus's kick) and above 4 kHz (its hats) `(n, 2)`: a
    check of what a clip contains that needs no judge, since the corpus knows each artist's percussion."""
    power = torch.stft(audio, 1024, 256, window=torch.hann_window(1024), return_complex=True).abs().pow(2)
    freqs = torch.linspace(0, sample_rate / 2, power.shape[1])
    total = power.sum((1, 2)).clamp_min(1e-12)
    return torch.stack([power[:, freqs < 120].sum((1, 2)), power[:, freqs > 4000].sum((1, 2))], 1) / total[:, None]


JUDGE_NAMES = {"clap": "toy CLAP zero-shot", "probe": "probe on toy-CLAP audio embeddings",
               "features": "feature tagger"}


def spread(column: dict, a: int) -> float:
    """The largest difference between two judges' recognition of artist `a` in a column."""
    values = [column[j][a] for j in JUDGES if j in column]
    return max(values) - min(values)


def markdown(report: dict) -> str:
    """The evidence table of a report (the JSON this script writes): a row per artist, a column per set of clips."""
    artists, columns, fads = report["artists"], report["columns"], report["fad"]
    judges = report.get("judges", ["clap", "features"])
    names = list(columns)
    lines = ["| artist | " + " | ".join(names) + " | " + " | ".join(f"FAD {f}" for f in fads) + " |",
             "|---|" + "---|" * (len(names) + len(fads))]
    for a, artist in enumerate(artists):
        cells = [" / ".join(f"{columns[c][j][a]:.2f}" for j in judges) for c in names]
        lines.append(f"| {artist} | " + " | ".join(cells) + " | " + " | ".join(f"{fads[f][a]:.3f}" for f in fads)
                     + " |")
    means = [" / ".join(f"{sum(columns[c][j]) / len(artists):.2f}" for j in judges) for c in names]
    worst = [" / ".join(f"{min(columns[c][j]):.2f}" for j in judges) for c in names]
    agreement = [f"{sum(columns[c]['agreement']) / len(artists):.2f}" for c in names]
    gap = [f"{max(spread(columns[c], a) for a in range(len(artists))):.2f}" for c in names]
    for label, cells in (("**mean**", means), ("worst artist", worst), ("clips all judges agree on", agreement),
                         ("largest judge gap (one artist)", gap)):
        lines.append(f"| {label} | " + " | ".join(cells) + " |" + " |" * len(fads))
    seeds = f"{report['seed']}..{report['seed'] + len(artists) * report['generations'] - 1}"
    real = columns["held-out tracks"]

    def bands(column: dict, a: int) -> str:
        return "{:.4f} / {:.3f}".format(*column["bands"][a])

    def disagreement(c: str, a: int) -> str:
        named = columns[c]["confusions"]
        labels = list(dict.fromkeys(label for judge in judges for label in named[judge][a]))
        return (f"- {c}, {artists[a]}: " + "; ".join(
            f"{judge} {', '.join(f'{label} {n}' for label, n in named[judge][a].items())}" for judge in judges)
            + (f". Kick / hats band: these clips {bands(columns[c], a)}; real "
               + ", ".join(f"{label} {bands(real, artists.index(label))}" for label in labels)
               if "bands" in columns[c] else ""))

    disagreements = [disagreement(c, a) for c in names for a in range(len(artists))
                     if spread(columns[c], a) >= 0.25 and "confusions" in columns[c]]
    return "\n".join(lines) + (
        f"\n\nEach cell: {' / '.join(JUDGE_NAMES[j] for j in judges)}. Chance: {1 / len(artists):.2f}. "
        f"{report['heldout_per_artist']} held-out tracks and {report['generations']} generations per artist and column "
        f"({report['steps']} DDIM steps for a diffusion model, each model's guidance, seeds {seeds}). FAD: toy-CLAP "
        "embeddings of the "
        f"name-only generations against the artist's {report['real_per_artist']} real tracks; 'real' is its held-out "
        "tracks against its training tracks.\n") + (
        "\nCodec {folder}: log-mel distance of a reconstruction to its held-out track {r[value]:.3f} [{r[low]:.3f}, "
        "{r[high]:.3f}] (n = {r[n]}); of two different held-out tracks of one artist {p[value]:.3f} [{p[low]:.3f}, "
        "{p[high]:.3f}] (n = {p[n]}).\n".format(folder=report["codec"]["folder"],
                                                r=report["codec"]["log_mel_distance"]["reconstruction"],
                                                p=report["codec"]["log_mel_distance"]["two tracks of one artist"])
        if report.get("codec") else "") + (
        "\nWhere two judges differ by 0.25 or more, what each judge named the clips (counts), and the median share of "
        "the clips' power below 120 Hz (the corpus's kick) and above 4 kHz (its hats) beside the real tracks' of each "
        "artist named (`percussion_bands`):\n\n"
        + "\n".join(disagreements) + "\n" if disagreements else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/toy")
    parser.add_argument("--clap", default="checkpoints/toy/clap")
    parser.add_argument("--judge", default="checkpoints/toy/judge", help="feature tagger folder (fitted if missing)")
    parser.add_argument("--models", nargs="*", default=["base=checkpoints/toy/base", "oracle=checkpoints/toy/oracle",
                                                        "oracle_aurora_vale=checkpoints/toy/oracle_aurora_vale"])
    parser.add_argument("--generations", type=int, default=32, help="generations per artist and prompt kind")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per generation")
    parser.add_argument("--batch", type=int, default=64, help="prompts per generation call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports/toy_recognition")
    parser.add_argument("--codec", help="an EnCodec folder whose reconstructions of the held-out tracks are judged")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    corpus = ToyCorpus.existing(args.corpus) if Path(args.corpus).is_dir() else ToyCorpus(args.corpus)
    corpus.prepare()
    rate, length = corpus.settings["sample_rate"], round(corpus.settings["duration"] * corpus.settings["sample_rate"])
    heldout, heldout_items = load_clips(corpus.heldout_manifest, rate, length)
    train, train_items = load_clips(corpus.train_manifest, rate, length)
    artists = sorted({item.group for item in heldout_items})
    if not (Path(args.judge) / "feature_tagger.json").is_file():
        log.info("Fitting the feature tagger on %d training tracks into %s", len(train), args.judge)
        FeatureTagger.fit(train, [item.group for item in train_items], rate, args.judge)
    clap = ClapEmbedder(args.clap)
    taggers = {"clap": ZeroShotTagger(clap, artists), "features": FeatureTagger(args.judge)}
    if taggers["features"].labels != artists:
        raise ValueError(f"The feature tagger in {args.judge} knows {taggers['features'].labels}, the corpus "
                         f"{artists}: delete {args.judge} to fit it again.")

    def embed(audio: torch.Tensor) -> torch.Tensor:
        return torch.cat([clap(chunk, rate) for chunk in audio.split(args.batch)])

    def judge(audio: torch.Tensor, groups: list[str], embeddings: torch.Tensor) -> dict:
        """Per-artist recognition by each judge (the CLAP's from the clips' `embeddings`), the share of clips on
        which the judges agree, and what each judge named each artist's clips (label: count)."""
        logits = {"clap": taggers["clap"].logits(embeddings), "probe": taggers["probe"].logits(embeddings),
                  "features": torch.cat([taggers["features"](chunk, rate) for chunk in audio.split(args.batch)])}
        predicted = {name: [taggers[name].labels[i] for i in logits[name].argmax(-1).tolist()] for name in JUDGES}
        result = {name: [sum(p == g for p, g in zip(predicted[name], groups, strict=True) if g == a) / groups.count(a)
                         for a in artists] for name in JUDGES}
        result["agreement"] = [sum(len(set(named)) == 1 for *named, g in zip(*predicted.values(), groups, strict=True)
                                   if g == a) / groups.count(a) for a in artists]
        result["confusions"] = {name: [dict(Counter(p for p, g in zip(predicted[name], groups, strict=True) if g == a)
                                            .most_common()) for a in artists] for name in JUDGES}
        bands = percussion_bands(audio, rate)
        result["bands"] = [bands[[g == a for g in groups]].median(0).values.tolist() for a in artists]
        return result

    train_groups = [item.group for item in train_items]
    heldout_groups = [item.group for item in heldout_items]
    train_embeddings, heldout_embeddings = embed(train), embed(heldout)
    taggers["probe"] = EmbeddingProbe.fit(clap, train_embeddings, train_groups)
    columns = {"held-out tracks": judge(heldout, heldout_groups, heldout_embeddings)}
    codec = None
    if args.codec:
        rebuilt = reconstruct(args.codec, heldout)
        columns["codec (held-out reconstructions)"] = judge(rebuilt, heldout_groups, embed(rebuilt))
        for name, hybrid in codec_hybrids(heldout, rebuilt).items():
            columns[f"hybrid: {name}"] = judge(hybrid, heldout_groups, embed(hybrid))
        same_artist = [(i, j) for i in range(len(heldout_items)) for j in range(i + 1, len(heldout_items))
                       if heldout_groups[i] == heldout_groups[j]]
        pairs = torch.tensor(same_artist)
        distances = {"reconstruction": log_mel_distance(rebuilt, heldout, rate),
                     "two tracks of one artist": log_mel_distance(heldout[pairs[:, 0]], heldout[pairs[:, 1]], rate)}
        codec = {"folder": args.codec, "log_mel_distance": {  # the mean, its 95 % bootstrap interval over the clips
            name: bootstrap(lambda clips: clips["d"].mean(-1), [{"d": values}], batched=True).as_dict()
            for name, values in distances.items()}}
    reference = {a: torch.cat([train_embeddings[[g == a for g in train_groups]],
                               heldout_embeddings[[g == a for g in heldout_groups]]]) for a in artists}
    fads = {"real": [fad(heldout_embeddings[[g == a for g in heldout_groups]],
                         train_embeddings[[g == a for g in train_groups]]) for a in artists]}

    groups = [a for a in artists for _ in range(args.generations)]
    captions_by_artist = {a: [item.caption for item in heldout_items if item.group == a] for a in artists}
    prompt_kinds = {
        "captions": [captions_by_artist[a][k % len(captions_by_artist[a])] for a in artists
                     for k in range(args.generations)],
        "name only": [f"a piece by {a}" for a in groups],
    }
    seeds = [args.seed + i for i in range(len(groups))]
    timings = {}
    for spec in args.models:
        name, folder = spec.split("=", 1)
        model = load_model(folder, corpus.settings["duration"]).eval()
        started = time.perf_counter()
        for kind, prompts in prompt_kinds.items():
            audio = torch.cat([model.generate(prompts[i:i + args.batch], seed=seeds[i:i + args.batch],
                                              num_inference_steps=args.steps)[:, 0]
                               for i in range(0, len(prompts), args.batch)])
            embeddings = embed(audio)  # once per clip: recognition and FAD
            columns[f"{name} ({kind})"] = judge(audio, groups, embeddings)
            if kind == "name only":
                fads[name] = [fad(embeddings[[g == a for g in groups]], reference[a]) for a in artists]
        timings[name] = time.perf_counter() - started
        log.info("%s: %d generations in %.0f s", name, 2 * len(groups), timings[name])

    report = {"artists": artists, "judges": list(JUDGES), "columns": columns, "fad": fads,
              "generations": args.generations, "steps": args.steps, "seed": args.seed,
              "heldout_per_artist": len(heldout_items) // len(artists),
              "real_per_artist": (len(train_items) + len(heldout_items)) // len(artists), "seconds": timings,
              "codec": codec}
    table = markdown(report)
    log.info("%s", table)
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), report)
    write_text_atomic(out.with_suffix(".md"), table)


if __name__ == "__main__":
    main()
