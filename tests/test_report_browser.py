"""The report check in a real browser: a tiny Snakemake workflow's report passes, a report with
a corrupt figure and a page with script errors fail, and the pixel measure has known answers.

Chromium (Debian's) and playwright come from `tools/setup.sh`; without them these tests fail
(they do not skip), so that CI cannot pass without having looked at a report.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workflow_scripts.report.browser import (
    BrowserUnavailable,
    load_playwright,
    check_report,
    decode_data_uri,
    non_blank_fraction,
    resolve_chromium,
)

SNAKEMAKE = Path(sys.executable).parent / "snakemake"

# Shell rules that call one script, not `run:` blocks: Snakemake 9 runs each `run:` job in a new
# Snakemake process, and each one's start-up costs seconds (on a machine with SLURM installed but
# not running, the slurm plugin's `scontrol` probe alone waits 10 s).
SNAKEFILE = textwrap.dedent(
    """
    import sys

    MAKE = f"{sys.executable} make_outputs.py"

    rule all:
        input:
            expand("results/curve_{markers}.png", markers=["yes", "no"]),
            "results/bars.svg", "results/summary.html", "results/summary.csv",

    # Two labels, the second with two values in half the results each: the report's table shows
    # one row and a toggle between the two files.
    rule curve:
        output:
            report("results/curve_{markers}.png", caption="caption.rst", category="Figures",
                   subcategory="Curves", labels={"figure": "sine", "markers": "{markers}"}),
        shell: MAKE + " curve {output} {wildcards.markers}"

    rule bars:
        output: report("results/bars.svg", caption="caption.rst", category="Figures", subcategory="Bars")
        shell: MAKE + " bars {output}"

    rule summary:
        output:
            html=report("results/summary.html", caption="caption.rst",
                        category="Tables", subcategory="Summary"),
            csv=report("results/summary.csv", caption="caption.rst",
                       category="Tables", subcategory="Summary"),
        shell: MAKE + " summary {output.html} {output.csv}"
    """
)

MAKE_OUTPUTS = textwrap.dedent(
    """
    import sys

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    what, *outputs = sys.argv[1:]
    if what == "curve":
        x = np.linspace(0, 6, 20)
        fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
        ax.plot(x, np.sin(x), linewidth=3, marker="o" if outputs[1] == "yes" else None)
        ax.set_xlabel("x")
        ax.set_ylabel("sin x")
        fig.tight_layout()
        fig.savefig(outputs[0])
    elif what == "bars":
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.bar(["a", "b", "c"], [3, 1, 2])
        ax.set_xlabel("group")
        ax.set_ylabel("count")
        fig.tight_layout()
        fig.savefig(outputs[0])
    else:
        table = pd.DataFrame({"group": ["a", "b", "c"], "count": [3, 1, 2]})
        table.to_html(outputs[0], index=False)
        table.to_csv(outputs[1], index=False)
    """
)

CAPTION = "A toy result of rule ``{{ snakemake.rule }}``, made to check the report in a browser.\n"


@pytest.fixture(scope="module")
def browser_ready() -> None:
    """Fail (not skip) without Chromium or playwright: CI installs both through tools/setup.sh,
    and a run that cannot open the report must not pass for one that did."""
    missing = None
    try:
        resolve_chromium()
        load_playwright()
    except BrowserUnavailable as error:
        missing = str(error)
    if missing:
        pytest.fail(f"the report's browser check cannot run: {missing}", pytrace=False)


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory) -> Path:
    """A Snakemake report of two PNGs (behind a toggle), an SVG, an HTML table and a CSV, in three
    subcategories."""
    root = tmp_path_factory.mktemp("toy_workflow")
    (root / "Snakefile").write_text(SNAKEFILE)
    (root / "caption.rst").write_text(CAPTION)
    (root / "make_outputs.py").write_text(MAKE_OUTPUTS)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    for command in ([str(SNAKEMAKE), "--cores", "1", "--quiet", "all"],
                    [str(SNAKEMAKE), "--report", "report.html"]):
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return root / "report.html"


def test_toy_report_passes(browser_ready, toy_report, tmp_path):
    screenshot = tmp_path / "shot.png"
    check = check_report(toy_report, screenshot=screenshot, timeout_s=30)
    assert check.ok, check.summary()
    assert check.console_errors == [] and check.page_errors == [] and check.failed_requests == []

    by_name = {figure.name: figure for figure in check.figures}
    assert set(by_name) == {"curve_yes.png", "curve_no.png", "bars.svg", "summary.html", "summary.csv"}
    # The PNG's decoded size is its pixel size: 4 x 3 inches at 80 dpi.
    for name in ("curve_yes.png", "curve_no.png"):
        assert (by_name[name].natural_width, by_name[name].natural_height) == (320, 240)
    # matplotlib writes the SVG 4 x 3 inches = 288 x 216 pt, which a browser shows at 4/3 px per pt.
    assert (by_name["bars.svg"].natural_width, by_name["bars.svg"].natural_height) == (384, 288)
    for name in ("curve_yes.png", "curve_no.png", "bars.svg"):
        assert by_name[name].kind == "image" and by_name[name].non_blank_fraction > 0.01
    # The table row shows the toggle's "yes" file; the "no" file is reached through the toggle.
    opened_via = {name: figure.opened_via for name, figure in by_name.items()}
    assert opened_via == {"curve_yes.png": "navigation", "curve_no.png": "toggle", "bars.svg": "navigation",
                          "summary.html": "navigation", "summary.csv": "none"}
    # The table's rendered extent: a header and three rows, narrower than the frame.
    table = by_name["summary.html"]
    assert table.kind == "html" and 0 < table.natural_height < 300 and 0 < table.natural_width < 500
    assert by_name["summary.csv"].kind == "download"
    assert {(f.category, f.subcategory) for f in check.figures} == {
        ("Figures", "Curves"), ("Figures", "Bars"), ("Tables", "Summary")}

    assert check.non_blank_fraction > 0.02
    assert non_blank_fraction(screenshot.read_bytes()) == pytest.approx(check.non_blank_fraction)
    assert "curve_yes.png" in check.screenshot_view or "bars.svg" in check.screenshot_view


def _replace_embedded(html: str, mime: str, filename: str, payload: bytes) -> tuple[str, bytes]:
    """Swap the file that the report embeds as ``filename`` for ``payload``; the new page and the old file."""
    embedded = re.compile(
        rf"(data:{re.escape(mime)};[^\"]*?filename={re.escape(filename)};base64,)([A-Za-z0-9+/=]+)"
    )
    assert len(embedded.findall(html)) == 1, f"the report should embed {filename} once"
    original = decode_data_uri("".join(embedded.search(html).groups()))
    return embedded.sub(lambda m: m.group(1) + base64.b64encode(payload).decode(), html), original


def test_corrupt_figure_and_empty_table_are_flagged(browser_ready, toy_report, tmp_path):
    html = toy_report.read_text(encoding="utf-8")
    html, png = _replace_embedded(html, "image/png", "curve_yes.png", b"\x89PNG not an image at all " * 40)
    assert png.startswith(b"\x89PNG")
    html, table = _replace_embedded(html, "text/html", "summary.html", b"<html><body>\n</body></html>")
    assert b"<table" in table
    corrupt = tmp_path / "corrupt.html"
    corrupt.write_text(html, encoding="utf-8")

    check = check_report(corrupt, timeout_s=30)
    assert not check.ok
    by_name = {figure.name: figure for figure in check.figures}
    assert not by_name["curve_yes.png"].ok and not by_name["summary.html"].ok
    assert (by_name["curve_yes.png"].natural_width, by_name["curve_yes.png"].natural_height) == (0, 0)
    assert by_name["summary.html"].natural_height == 0
    assert by_name["bars.svg"].ok and by_name["summary.csv"].ok and by_name["curve_no.png"].ok
    problems = check.problems
    assert any("curve_yes.png" in problem and "could not load" in problem for problem in problems), problems
    assert any("summary.html" in problem and "empty page" in problem for problem in problems), problems
    assert len(problems) == 2, problems


def test_script_errors_are_flagged(browser_ready, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><body><p>hello</p>"
        "<script>console.error('deliberate console error');</script>"
        "<script>notAFunction();</script>"
        "</body></html>"
    )
    check = check_report(page, timeout_s=3)
    assert not check.ok
    assert any("deliberate console error" in message for message in check.console_errors)
    assert any("notAFunction" in message for message in check.page_errors)
    assert any(problem.startswith("console error: deliberate console error") for problem in check.problems)
    assert any("report app did not start" in problem for problem in check.problems)
    # Nothing but one short line of text on white: far below the blank threshold.
    assert check.non_blank_fraction < 0.02
    assert any("screenshot is blank" in problem for problem in check.problems)


def test_cli_exit_status(browser_ready, toy_report, tmp_path):
    shot = tmp_path / "cli.png"
    passing = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.report.browser", str(toy_report), "--screenshot", str(shot)],
        capture_output=True, text=True, timeout=120,
    )
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "no problems" in passing.stdout and shot.is_file()
    # The same report, but a threshold no screenshot can reach.
    failing = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.report.browser", str(toy_report), "--min-non-blank", "1.01"],
        capture_output=True, text=True, timeout=120,
    )
    assert failing.returncode == 1
    assert "screenshot is blank" in failing.stdout


def test_missing_chromium_names_the_setup_script(tmp_path, monkeypatch):
    monkeypatch.setenv("LORALENS_CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(BrowserUnavailable, match="tools/setup.sh") as raised:
        resolve_chromium()
    assert "no-chromium" in str(raised.value)
    report = tmp_path / "report.html"
    report.write_text("<html></html>")
    with pytest.raises(BrowserUnavailable, match="tools/setup.sh"):
        check_report(report, chromium=str(tmp_path / "also-missing"))


def test_missing_playwright_names_the_setup_script(monkeypatch):
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # what an absent package looks like
    with pytest.raises(BrowserUnavailable, match="playwright package is not installed.*tools/setup.sh"):
        load_playwright()


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_non_blank_fraction_known_answers():
    white = np.full((40, 50, 3), 255)
    assert non_blank_fraction(_png(white)) == 0.0
    drawn = white.copy()
    drawn[:10, :] = 0  # a quarter of the rows black
    assert non_blank_fraction(_png(drawn)) == pytest.approx(0.25)
    faint = white.copy()
    faint[:20, :] = 250  # within the tolerance: antialiasing-level noise is still background
    assert non_blank_fraction(_png(faint)) == 0.0
    # The background is the most common colour, whatever it is: a dark page with a light panel.
    dark = np.full((40, 50, 3), 30)
    dark[:, :10] = 240
    assert non_blank_fraction(_png(dark)) == pytest.approx(0.2)


def test_decode_data_uri():
    uri = "data:text/csv;charset=utf8;filename=a.csv;base64," + base64.b64encode(b"a,b\n").decode()
    assert decode_data_uri(uri) == b"a,b\n"
    with pytest.raises(ValueError, match="not a base64 data URI"):
        decode_data_uri("data/raw/abc/a.csv")
    with pytest.raises(ValueError, match="invalid base64"):
        decode_data_uri("data:text/plain;base64,@@@")
