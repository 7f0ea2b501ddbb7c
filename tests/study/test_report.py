"""The report is one self-contained page: plotly.js inline, every plot drawn by headless Chromium offline."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from study_tables import tiny_table

from radsim.cli.main import main
from radsim.study.plots import FIGURES
from radsim.study.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs a headless Chromium (apt-get install chromium)"
)
# Keep the browser off the network, so that a plot only renders if its script is in the page.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--proxy-server=127.0.0.1:9",
    "--virtual-time-budget=15000",
]  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    return write_report(tiny_table(folder), folder / "report.html")


def test_report_embeds_plotly_and_every_figure(report):
    page = report.read_text()
    fetched = re.findall(r"<script[^>]*\ssrc=", page)  # plotly.js is inline, nothing is fetched
    assert fetched == []
    drawn = [n for n in FIGURES if not n.startswith("architectures")]  # the tiny study has no labels
    assert page.count("Plotly.newPlot") == len(drawn)
    for name in drawn:
        assert f'id="fig-{name}"' in page
    assert "Failed points" in page and "does not fit on h100_sxm" in page


def test_report_command(tmp_path, capsys):
    folder = tmp_path / "r"
    tiny_table(folder)
    assert main(["report", str(folder / "out")]) == 0
    assert (folder / "out" / "report.html").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no result table" in capsys.readouterr().err


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the raw (filtered) scanlines of an 8-bit PNG, without an imaging library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


@needs_chromium
def test_every_plot_renders_offline_in_headless_chromium(report, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    for name in (n for n in FIGURES if not n.startswith("architectures")):  # tiny has no labels
        start = dom.index(f'id="fig-{name}"')
        following = [m.start() for m in re.finditer(r'id="fig-', dom) if m.start() > start]
        block = dom[start : following[0] if following else len(dom)]
        assert 'class="main-svg"' in block, f"{name} did not render"
        assert "<path" in block, f"{name} drew nothing"
    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri())
    width, height, pixels = _png_pixels(shot)
    assert (width, height) == (1200, 2400)
    assert len(set(pixels[::97])) > 50, "the screenshot is blank"


def test_report_says_where_the_routes_come_from_and_warns(report):
    page = report.read_text()
    assert "Where the routes come from" in page and "radial model radial-scratch-p05, 8 layers" in page
    assert "Warnings" in page and "stretched onto the 32 layers of llama3.1-8b (4x)" in page
