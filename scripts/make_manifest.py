r"""A manifest from a folder of audio and a captions CSV (MusicCaps-style columns), every file checked.

    python scripts/make_manifest.py --captions musiccaps-public.csv --audio-dir musiccaps/ --out data/musiccaps.jsonl
    python scripts/make_manifest.py --captions tracks.csv --audio-dir audio/ --out data/mine.jsonl \
        --id-column track_id --group-column artist --offset-column start_s --end-column end_s
    # your tracks added to a model's training manifest (ids checked for collisions, paths rewritten for --out)
    python scripts/make_manifest.py --captions tracks.csv --audio-dir audio/ --group-column artist \
        --merge-with data/toy/train.jsonl --out data/mine/train.jsonl
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.captions import AUDIO_EXTENSIONS, manifest_from_captions  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", required=True, help="the captions CSV, with a header row")
    parser.add_argument("--audio-dir", required=True, help="folder of audio files named <id>.<ext> (any depth)")
    parser.add_argument("--out", required=True, help="the JSONL manifest to write")
    parser.add_argument("--id-column", default="ytid")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--group-column", help="e.g. the artist, to forget by group")
    parser.add_argument("--offset-column", help="clip start in seconds, when the files are whole recordings")
    parser.add_argument("--end-column", help="clip end in seconds (with --offset-column)")
    parser.add_argument("--extensions", nargs="+", default=list(AUDIO_EXTENSIONS))
    parser.add_argument("--skip-missing", action="store_true", help="leave out rows without an audio file")
    parser.add_argument("--merge-with", help="an existing manifest whose items come first in --out (ids must not "
                        "clash; paths are rewritten relative to --out); --out may be that manifest, to append")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest_from_captions(args.captions, args.audio_dir, args.out, id_column=args.id_column,
                           caption_column=args.caption_column, group_column=args.group_column,
                           offset_column=args.offset_column, end_column=args.end_column,
                           extensions=args.extensions, skip_missing=args.skip_missing, merge_with=args.merge_with)


if __name__ == "__main__":
    main()
