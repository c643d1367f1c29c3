"""``report.html``: the page's parts (the Markdown it renders, the clips and images beside it, the figures), and the
page of a real run opened in headless Chromium: it loads with no console error, every player has a duration, and its
table holds the numbers of ``results.json``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from callbacks.html_report import FILES_FOLDER, REPORT_FILE, markdown_to_html, write_html_report
from callbacks.plots import mel_png, metric_bars, tradeoff_figure

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: install Debian's `chromium` package "
                                                               "(.ci/run does) to check report.html in a browser")


def interval(value: float) -> dict:
    return {"value": value, "low": value - 0.1, "high": value + 0.1, "n": 4}


INTERVALS = {name: {"forget": {"loss": interval(0.3 + k), "recognition": interval(0.9 - 0.4 * k)},
                    "retain": {"loss": interval(0.2 + 0.1 * k), "fad": interval(1.0 + k)}}
             for k, name in enumerate(["before", "after", "oracle"])}


def test_markdown_renders_tables_bullets_and_emphasis():
    page = markdown_to_html("| set | metric | before |\n|---|---|---|\n| forget | a\\|b | 0.3000 [0.2000, 0.4000] |\n\n"
                            "**Against the oracle.**\n- Forget quality: `0.5`\n- Verdict <b>")
    assert '<table class="results">' in page and "<th>metric</th>" in page and "<td>a|b</td>" in page
    assert "<p><strong>Against the oracle.</strong></p>" in page
    assert "<ul><li>Forget quality: <code>0.5</code></li><li>Verdict &lt;b&gt;</li></ul>" in page


def test_the_figures_draw_every_model_with_its_interval():
    tradeoff = tradeoff_figure(INTERVALS)
    assert len(tradeoff.axes) == 2  # losses; recognition against FAD
    assert [text.get_text() for text in tradeoff.axes[0].get_legend().get_texts()] == ["before", "after", "oracle"]
    bars = metric_bars(INTERVALS)
    assert [axes.get_title() for axes in bars.axes] == ["loss", "recognition", "fad"]
    assert len(tradeoff_figure({"after": {"forget": {"loss": interval(1.0)}}}).axes) == 0  # nothing to draw


def test_the_page_plays_each_prompt_side_by_side(tmp_path):
    clips = {name: {"forget": [("a piece by Kestrel Drive", torch.rand(1, 8000) - 0.5)]} for name in INTERVALS}
    mels = {name: {"forget": [mel_png(clips[name]["forget"][0][1], 16000)]} for name in INTERVALS}
    path = write_html_report(tmp_path, "GradientAscent: run", "| a |\n|---|\n| 1 |", clips, mels, 16000,
                             {"tradeoff": tradeoff_figure(INTERVALS)})
    page = path.read_text()

    assert path == tmp_path / REPORT_FILE
    files = sorted(p.name for p in (tmp_path / FILES_FOLDER).iterdir())
    assert files == ["forget_0_after.png", "forget_0_after.wav", "forget_0_before.png", "forget_0_before.wav",
                     "forget_0_oracle.png", "forget_0_oracle.wav", "tradeoff.png"]
    assert "<th>before</th><th>after</th><th>oracle</th>" in page and "a piece by Kestrel Drive" in page
    assert "http" not in page  # nothing from the network


class _Page(HTMLParser):
    """The results table's rows and every player's attributes, from the DOM Chromium dumped."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.audio: list[dict[str, str | None]] = []
        self._table = self._cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("class") == "results"
        elif tag == "tr" and self._table:
            self.rows.append([])
        elif tag in ("td", "th") and self._table:
            self._cell = True
            self.rows[-1].append("")
        elif tag == "audio":
            self.audio.append(attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = False
        elif tag in ("td", "th"):
            self._cell = False

    def handle_data(self, data: str) -> None:
        if self._cell and self._table:
            self.rows[-1][-1] += data


def open_in_chromium(page: Path) -> tuple[_Page, list[str]]:
    """The page's DOM after its scripts ran, and the console messages, from headless Chromium."""
    result = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = _Page()
    parsed.feed(result.stdout)
    return parsed, [line for line in result.stderr.splitlines() if "CONSOLE" in line]


@needs_chromium
def test_a_broken_clip_shows_in_the_browser_check(tmp_path):
    """The check below can fail: a clip that does not load leaves its player without a duration and logs an error."""
    clips = {"after": {"forget": [("prompt", torch.rand(1, 8000) - 0.5)]}}
    path = write_html_report(tmp_path, "run", "| a |\n|---|\n| 1 |", clips,
                             {"after": {"forget": [mel_png(clips["after"]["forget"][0][1], 16000)]}}, 16000, {})
    (tmp_path / FILES_FOLDER / "forget_0_after.wav").write_bytes(b"not audio")
    page, console = open_in_chromium(path)
    assert page.audio and page.audio[0].get("data-duration") is None
    assert any("clip failed to load" in line for line in console)


@needs_chromium
def test_the_report_of_a_run_loads_plays_and_matches_results_json(fitted):
    run = fitted.run
    page, console = open_in_chromium(run / REPORT_FILE)
    results = json.loads((run / "results.json").read_text())

    assert not console, console  # no console message at all: no error, no failed clip
    assert len(page.audio) == 3 * 3  # 3 sets x 1 clip (log_audio) x before, after, oracle
    assert all(float(attrs["data-duration"]) > 0 for attrs in page.audio)
    header, *rows = page.rows
    names = header[2:5]
    assert names == ["before", "after", "oracle"]
    checked = 0
    for split, metric, *cells in rows:
        for name, cell in zip(names, cells, strict=False):
            numbers = [float(x) for x in re.findall(r"[-+]?\d+\.\d+", cell)]
            expected = results["intervals"][name][split][metric]
            assert numbers == pytest.approx([expected["value"], expected["low"], expected["high"]], abs=1e-4)
            checked += 1
    assert checked == 3 * sum(len(metrics) for metrics in results["columns"]["after"].values())
