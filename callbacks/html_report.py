"""``report.html``: the page a researcher reads and listens to, written next to ``results.md`` at the end of a run.

The results table with its intervals and the scores against the oracle (``results.md``, rendered); the trade-off and
metric figures; and per evaluation set a row per prompt with the generations of before, after and the oracle side by
side (the same prompt and seed), each a player and its mel spectrogram with axes. Like every demo page of the field,
built for you. Self-contained and offline: the clips (WAV) and images (PNG) sit in ``report_files/`` beside it, the page
loads nothing from the network. A short script marks each player with its duration once loaded (``data-duration``)
and logs a console error for a clip that fails, so a headless browser can check the page.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import soundfile as sf
from matplotlib.figure import Figure
from torch import Tensor

from lightning_modules.io import atomic_directory, write_text_atomic

REPORT_FILE = "report.html"
FILES_FOLDER = "report_files"
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#f3f3f3}.results td{font-family:ui-monospace,monospace;white-space:nowrap}
.clips td{text-align:center}.clips td.prompt{text-align:left;max-width:18em}audio{width:260px}img{display:block}
figure{margin:1em 0}"""
CHECK = """document.querySelectorAll("audio").forEach(function (a) {
  function mark() { a.dataset.duration = String(a.duration); }
  if (a.readyState >= 1) { mark(); } else { a.addEventListener("loadedmetadata", mark); }
  a.addEventListener("error", function () { console.error("clip failed to load: " + a.getAttribute("src")); });
});"""


def write_html_report(folder: str | os.PathLike, title: str, markdown: str,
                      clips: Mapping[str, Mapping[str, Sequence[tuple[str, Tensor]]]],
                      mels: Mapping[str, Mapping[str, Sequence[bytes]]], sample_rate: int,
                      figures: Mapping[str, Figure]) -> Path:
    """Write ``report.html`` and ``report_files/`` into `folder`, each atomically.

    Args:
        folder: the run's log dir.
        title: the page's title (the method and the run).
        markdown: the report as ``results.md`` has it (a table, then lines and bullets).
        clips: column (before, after, oracle, ...) -> set -> (prompt, `(channels, samples)` audio) pairs.
        mels: column -> set -> each clip's mel spectrogram as PNG bytes (`plots.mel_png`).
        sample_rate: the clips' sample rate in Hz.
        figures: name -> figure, shown in this order under the table.
    """
    folder = Path(folder)
    with atomic_directory(folder / FILES_FOLDER) as files:
        for name, figure in figures.items():
            figure.savefig(files / f"{name}.png", format="png", dpi=100)
        for column, sets in clips.items():
            for split, pairs in sets.items():
                for i, (_, audio) in enumerate(pairs):
                    stem = f"{split}_{i}_{column}"
                    sf.write(files / f"{stem}.wav", audio.float().clamp(-1, 1).T.numpy(), sample_rate, subtype="PCM_16")
                    (files / f"{stem}.png").write_bytes(mels[column][split][i])
    body = [f"<h1>{html.escape(title)}</h1>", markdown_to_html(markdown)]
    body += [f'<figure><img src="{FILES_FOLDER}/{name}.png" alt="{html.escape(name)}"></figure>' for name in figures]
    body += [_clips_section(split, clips) for split in _splits(clips)]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body)
            + f"\n<script>{CHECK}</script>\n</body></html>\n")
    write_text_atomic(folder / REPORT_FILE, page)
    return folder / REPORT_FILE


def _splits(clips: Mapping[str, Mapping[str, Sequence]]) -> list[str]:
    return list(dict.fromkeys(split for sets in clips.values() for split in sets))


def _clips_section(split: str, clips: Mapping[str, Mapping[str, Sequence[tuple[str, Tensor]]]]) -> str:
    """The `split` set's generations: a row per prompt, a cell per column that generated it."""
    columns = [column for column, sets in clips.items() if sets.get(split)]
    count = max(len(clips[column][split]) for column in columns)
    rows = ["<tr><th>#</th><th>prompt</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"]
    for i in range(count):
        prompt = next(clips[c][split][i][0] for c in columns if i < len(clips[c][split]))
        cells = []
        for column in columns:
            if i >= len(clips[column][split]):
                cells.append("<td></td>")
                continue
            stem = f"{FILES_FOLDER}/{split}_{i}_{column}"
            cells.append(f'<td><audio controls preload="metadata" src="{stem}.wav"></audio>'
                         f'<img src="{stem}.png" alt="mel spectrogram, {html.escape(column)}"></td>')
        rows.append(f'<tr><td>{i}</td><td class="prompt">{html.escape(prompt)}</td>{"".join(cells)}</tr>')
    return f'<h2>The {html.escape(split)} set</h2>\n<table class="clips">\n' + "\n".join(rows) + "\n</table>"


def markdown_to_html(text: str) -> str:
    """The Markdown the report writes (pipe tables, ``- `` bullets, ``**bold**`` and ``code``, paragraphs) as HTML."""
    out: list[str] = []
    lines = text.strip().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        if line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def _table(lines: list[str]) -> str:
    rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]] for line in lines]
    header, body = rows[0], [row for row in rows[1:] if not all(set(cell) <= {"-", ":"} for cell in row)]
    head = "<tr>" + "".join(f"<th>{_inline(cell)}</th>" for cell in header) + "</tr>"
    rows_html = ["<tr>" + "".join(f"<td>{_inline(cell)}</td>" for cell in row) + "</tr>" for row in body]
    return '<table class="results">\n' + "\n".join([head, *rows_html]) + "\n</table>"


def _inline(text: str) -> str:
    text = html.escape(text.replace("\\|", "|"))
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)
