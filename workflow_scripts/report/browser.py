"""Open a Snakemake 9 HTML report in a real headless Chromium and check that it works.

``snakemake --report report.html`` writes one self-contained single-page app: React renders the
page from JSON objects embedded in it (``results``: one entry per result, keyed by its path,
with its MIME type and its file as a base64 ``data:`` URI; ``categories``: category →
subcategory → result paths), and a result is put into the page only when it is opened. So a
check that only loads the start page proves little. This one, in Chromium driven by Playwright:

1. loads the report from its ``file://`` URL and waits for the app to start;
2. opens every subcategory the way its menu entry does, and clicks each result's view button in
   the navigation table (results that the table hides behind a label toggle are opened the way
   the toggle opens them);
3. for each opened image (PNG, SVG, JPEG) waits for the ``<img>`` to finish and requires a
   non-zero ``naturalWidth`` and ``naturalHeight`` (a file the browser cannot decode has 0) and
   a rendering that is not one uniform colour; for each HTML result (tables) requires that its
   frame renders a non-empty body; PDFs and results the report only offers as downloads (CSV,
   text) must decode to non-empty files of their type;
4. collects console messages of type error, uncaught page errors and failed requests (a
   self-contained report requests nothing) throughout;
5. takes a full-page screenshot while the first figure is shown and measures the fraction of
   pixels that differ from the page's most common colour.

Every failure becomes one human-readable line in :attr:`ReportCheck.problems`. The
``report.html`` of a report unpacked from ``--report report.zip`` (files under ``data/raw/``
instead of embedded) is checked the same way.

Chromium is Debian's (``tools/setup.sh`` installs it and the pinned ``playwright`` package);
Playwright's own browser download is not used. The executable is ``--chromium``, else the
environment variable ``LORALENS_CHROMIUM``, else ``/usr/bin/chromium``.

    python -m workflow_scripts.report.browser results/report.html --screenshot report.png
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workflow_scripts.atomic import atomic_path
from workflow_scripts.cli import entry_parser, run_main
from workflow_scripts.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ENV = "LORALENS_CHROMIUM"
SETUP_HINT = "run `bash tools/setup.sh` (it installs Debian's chromium and the pinned playwright package)"
#: Below this fraction of non-background pixels the screenshot counts as blank.
DEFAULT_MIN_NON_BLANK = 0.02
#: Channel difference (0-255) from the background colour that makes a pixel count as drawn;
#: above JPEG-like noise and antialiasing fringes, below any real line or text.
PIXEL_TOLERANCE = 16
VIEWPORT = {"width": 1400, "height": 900}
#: Chromium flags: no sandbox because the tests run as root; /dev/shm is small in containers.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]

#: How the report app shows a result, by MIME type (its AbstractViewManager.handleSelectedResult).
VIEW_KIND = {
    "image/svg+xml": "image",
    "image/png": "image",
    "image/jpeg": "image",
    "text/html": "html",
    "application/pdf": "pdf",
}


class BrowserUnavailable(InputError):
    """Chromium or the playwright package is missing: the message says how to install them."""


@dataclass
class FigureCheck:
    """One result of the report as the browser showed it.

    ``kind`` is how the app shows it: ``image`` (an ``<img>``), ``html`` and ``pdf`` (a frame),
    or ``download`` (a link only). ``natural_width``/``natural_height`` are the image's decoded
    size in pixels; for an HTML result, the rendered extent of its body's contents; 0 when
    nothing rendered.
    ``non_blank_fraction`` is the share of the shown element's pixels that differ from its most
    common colour (images only). ``opened_via`` is ``navigation`` (its view button in the
    subcategory's table was clicked), ``toggle`` (hidden behind a label toggle, opened the way
    the toggle does) or ``none`` (a download, nothing to open).
    """

    path: str
    name: str
    category: str
    subcategory: str
    mime_type: str
    kind: str
    natural_width: int = 0
    natural_height: int = 0
    displayed_width: float = 0.0
    displayed_height: float = 0.0
    non_blank_fraction: float | None = None
    opened_via: str = "none"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ReportCheck:
    """What :func:`check_report` found. ``ok`` when ``problems`` is empty."""

    report: Path
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    figures: list[FigureCheck] = field(default_factory=list)
    non_blank_fraction: float = 0.0
    screenshot: Path | None = None
    screenshot_view: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """A few lines for people: counts, every figure, every problem."""
        lines = [
            f"report: {self.report}",
            f"results checked: {len(self.figures)} "
            f"({sum(f.ok for f in self.figures)} ok, {sum(not f.ok for f in self.figures)} failed)",
        ]
        for figure in self.figures:
            size = f"{figure.natural_width}x{figure.natural_height}" if figure.kind != "download" else "-"
            status = "ok" if figure.ok else "FAILED"
            lines.append(
                f"  [{status}] {figure.category} / {figure.subcategory} / {figure.name} "
                f"({figure.mime_type}, {figure.kind}, {size}, via {figure.opened_via})"
            )
        lines.append(f"console errors: {len(self.console_errors)}, page errors: {len(self.page_errors)}, "
                     f"failed requests: {len(self.failed_requests)}")
        shot = f" -> {self.screenshot}" if self.screenshot else ""
        lines.append(f"screenshot ({self.screenshot_view}): {self.non_blank_fraction:.1%} non-blank{shot}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {problem}" for problem in self.problems]
        else:
            lines.append("no problems")
        return "\n".join(lines)


# ---- pixels -----------------------------------------------------------------------------------


def non_blank_fraction(png: bytes, tolerance: int = PIXEL_TOLERANCE) -> float:
    """The fraction of pixels of a PNG that differ from its most common colour by more than
    ``tolerance`` in some channel: 0 for a uniform image, near 1 for a busy one."""
    from PIL import Image  # matplotlib's own dependency, so always there with it

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16).reshape(-1, 3)
    if rgb.size == 0:
        return 0.0
    packed = (rgb[:, 0].astype(np.int32) << 16) | (rgb[:, 1].astype(np.int32) << 8) | rgb[:, 2]
    colours, counts = np.unique(packed, return_counts=True)
    mode = int(colours[counts.argmax()])
    background = np.array([(mode >> 16) & 255, (mode >> 8) & 255, mode & 255], dtype=np.int16)
    return float((np.abs(rgb - background).max(axis=1) > tolerance).mean())


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a ``data:...;base64,...`` URI (what Snakemake embeds); raises ValueError."""
    if not uri.startswith("data:") or ";base64," not in uri:
        raise ValueError(f"not a base64 data URI: {uri[:60]!r}")
    try:
        return base64.b64decode(uri.split(";base64,", 1)[1], validate=True)
    except binascii.Error as error:
        raise ValueError(f"invalid base64 payload: {error}") from error


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- the browser ------------------------------------------------------------------------------


def resolve_chromium(chromium: str | None = None) -> str:
    """The Chromium executable: ``chromium``, else $LORALENS_CHROMIUM, else /usr/bin/chromium."""
    candidate = chromium or os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM
    if not (Path(candidate).is_file() and os.access(candidate, os.X_OK)):
        source = "argument" if chromium else f"${CHROMIUM_ENV}" if os.environ.get(CHROMIUM_ENV) else "default"
        raise BrowserUnavailable(f"no Chromium executable at {candidate} ({source}); {SETUP_HINT}")
    return candidate


def load_playwright():
    """Playwright's ``sync_playwright``, or :class:`BrowserUnavailable` saying how to install it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        message = f"the playwright package is not installed ({error}); {SETUP_HINT}"
        raise BrowserUnavailable(message) from error
    return sync_playwright


# JavaScript run in the page. `app`, `results` and `categories` are the report app's globals.
APP_READY_JS = "() => typeof app === 'object' && app !== null && app.state !== undefined"
REPORT_DATA_JS = """() => {
    if (typeof results !== 'object' || typeof categories !== 'object') return null;
    const listed = [];
    for (const [category, subcategories] of Object.entries(categories))
        for (const [subcategory, paths] of Object.entries(subcategories))
            for (const path of paths) {
                const r = results[path] || {};
                listed.push({path, category, subcategory, name: r.name || path,
                             mime_type: r.mime_type || '', in_results: path in results});
            }
    return listed;
}"""
SHOW_MENU_JS = "() => app.setView({navbarMode: 'menu'})"
SHOW_SUBCATEGORY_JS = """([category, subcategory]) =>
    app.setView({navbarMode: 'subcategory', category: category, subcategory: subcategory})"""
SUBCATEGORY_SHOWN_JS = """([category, subcategory]) =>
    app.state.navbarMode === 'subcategory' && app.state.category === category
    && app.state.subcategory === subcategory && document.querySelector('nav table tbody') !== null"""
ROW_BUTTONS_JS = """() => Array.from(document.querySelectorAll('nav table tbody tr')).map(row => {
    const button = row.querySelector('td:last-child a');
    return button === null ? null : button.getAttribute('href');
})"""
RENDER_TRIGGER_JS = "() => String(app.state.renderTrigger)"
OPENED_JS = "(before) => String(app.state.renderTrigger) !== before"
OPENED_STATE_JS = """() => ({path: app.state.resultPath, content: app.state.content,
    matches: app.state.resultPath in results
             && app.state.contentPath === results[app.state.resultPath].data_uri})"""
OPEN_DIRECTLY_JS = """([path, content]) =>
    app.setView({content: content, contentPath: results[path].data_uri, resultPath: path})"""
FIND_ELEMENT_JS = """([path, tag]) => {
    const uri = results[path].data_uri;
    const shown = Array.from(document.querySelectorAll('#app ' + tag));
    return shown.find(e => e.getAttribute('src') === uri) || null;
}"""
IMAGE_DONE_JS = f"""(args) => {{
    const img = ({FIND_ELEMENT_JS})(args);
    return img !== null && img.complete;
}}"""
FRAME_SHOWN_JS = f"""(args) => ({FIND_ELEMENT_JS})(args) !== null"""
IMAGE_SIZE_JS = """(img) => {
    const box = img.getBoundingClientRect();
    return {natural_width: img.naturalWidth, natural_height: img.naturalHeight,
            displayed_width: box.width, displayed_height: box.height};
}"""
# The extent of the body's contents, not of the body: a fragment such as pandas' to_html is
# shown in quirks mode, where the body fills the frame whatever it holds.
FRAME_BODY_JS = """() => {
    const body = document.body;
    if (!body) return {width: 0, height: 0, text: 0, elements: 0};
    const range = document.createRange();
    range.selectNodeContents(body);
    const box = range.getBoundingClientRect();
    return {width: box.width, height: box.height, text: body.innerText.trim().length,
            elements: body.querySelectorAll('img, svg, canvas, table, video').length};
}"""
DATA_URI_JS = "(path) => results[path].data_uri"


class _Session:
    """One page of the report, with what it logged; the figures' checks share it."""

    def __init__(self, page, check: ReportCheck):
        self.page = page
        self.check = check
        self.screenshot_png: bytes | None = None
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: check.page_errors.append(_short(error)))
        page.on("requestfailed", self._on_request_failed)

    def _on_console(self, message) -> None:
        if message.type == "error":
            where = message.location or {}
            url = where.get("url") or ""
            origin = f" ({_short(url, 80)}:{where.get('lineNumber')})" if url else ""
            self.check.console_errors.append(_short(message.text) + origin)

    def _on_request_failed(self, request) -> None:
        self.check.failed_requests.append(f"{_short(request.url, 120)}: {request.failure}")

    # -- navigation --

    def open_subcategory(self, category: str, subcategory: str) -> list[str | None]:
        """Show a subcategory's results table as its menu entry does; the hrefs of its view buttons."""
        # Through the menu: the app reuses one results table between subcategories shown in a
        # row and computes its rows only when the table is first made.
        self.page.evaluate(SHOW_MENU_JS)
        self.page.wait_for_function("() => document.querySelector('nav table tbody') === null")
        self.page.evaluate(SHOW_SUBCATEGORY_JS, [category, subcategory])
        self.page.wait_for_function(SUBCATEGORY_SHOWN_JS, arg=[category, subcategory])
        return self.page.evaluate(ROW_BUTTONS_JS)

    def click_row(self, index: int) -> dict:
        """Click the view button of row ``index``; the app state it opened (path, content)."""
        before = self.page.evaluate(RENDER_TRIGGER_JS)
        self.page.locator("nav table tbody tr").nth(index).locator("td:last-child a").first.click()
        self.page.wait_for_function(OPENED_JS, arg=before)
        return self.page.evaluate(OPENED_STATE_JS)

    def open_directly(self, figure: FigureCheck) -> None:
        before = self.page.evaluate(RENDER_TRIGGER_JS)
        self.page.evaluate(OPEN_DIRECTLY_JS, [figure.path, "img" if figure.kind == "image" else figure.kind])
        self.page.wait_for_function(OPENED_JS, arg=before)

    # -- what an opened result must look like --

    def inspect_image(self, figure: FigureCheck) -> None:
        try:
            self.page.wait_for_function(IMAGE_DONE_JS, arg=[figure.path, "img"])
        except Exception as error:  # playwright's TimeoutError
            figure.problems.append(
                f"its <img> was not put into the page or never finished loading ({_short(error, 120)})"
            )
            return
        handle = self.page.evaluate_handle(FIND_ELEMENT_JS, [figure.path, "img"]).as_element()
        size = handle.evaluate(IMAGE_SIZE_JS)
        figure.natural_width, figure.natural_height = int(size["natural_width"]), int(size["natural_height"])
        figure.displayed_width, figure.displayed_height = size["displayed_width"], size["displayed_height"]
        if figure.natural_width <= 0 or figure.natural_height <= 0:
            figure.problems.append(
                f"the browser could not load it: natural size {figure.natural_width}x{figure.natural_height}"
            )
            return
        if figure.displayed_width <= 0 or figure.displayed_height <= 0:
            figure.problems.append(
                f"it is not visible: shown at {figure.displayed_width}x{figure.displayed_height}"
            )
            return
        handle.scroll_into_view_if_needed()
        figure.non_blank_fraction = non_blank_fraction(handle.screenshot())
        if figure.non_blank_fraction == 0.0:
            figure.problems.append("it renders as one uniform colour")
        if self.screenshot_png is None:
            self.screenshot_png = self.page.screenshot(full_page=True)
            self.check.screenshot_view = f"{figure.category} / {figure.subcategory} / {figure.name} open"

    def inspect_html(self, figure: FigureCheck) -> None:
        try:
            self.page.wait_for_function(FRAME_SHOWN_JS, arg=[figure.path, "iframe"])
            element = self.page.evaluate_handle(FIND_ELEMENT_JS, [figure.path, "iframe"]).as_element()
            frame = element.content_frame()
            if frame is None:
                raise RuntimeError("the iframe has no document")
            frame.wait_for_load_state("load")
            body = frame.evaluate(FRAME_BODY_JS)
        except Exception as error:
            figure.problems.append(f"its frame did not render ({_short(error, 120)})")
            return
        figure.natural_width, figure.natural_height = int(body["width"]), int(body["height"])
        if body["height"] <= 0 or (body["text"] == 0 and body["elements"] == 0):
            figure.problems.append(
                f"its frame renders an empty page (body {body['width']:.0f}x{body['height']:.0f}, "
                f"{body['text']} characters of text, {body['elements']} tables/images)"
            )

    def inspect_file(self, figure: FigureCheck) -> None:
        """PDFs (the viewer is a plugin, not the page) and downloads: the embedded file itself."""
        uri = self.page.evaluate(DATA_URI_JS, figure.path)
        try:
            if uri.startswith("data:"):
                data = decode_data_uri(uri)
            else:  # a report unpacked from --report report.zip links its files under data/raw/
                data = (self.check.report.parent / uri).read_bytes()
        except (ValueError, OSError) as error:
            figure.problems.append(f"its file cannot be read: {error}")
            return
        if not data:
            figure.problems.append("its embedded file is empty")
        elif figure.kind == "pdf" and not data.startswith(b"%PDF"):
            figure.problems.append("its embedded file is not a PDF")

    def inspect(self, figure: FigureCheck) -> None:
        {"image": self.inspect_image, "html": self.inspect_html}.get(figure.kind, self.inspect_file)(figure)


def _visit_all(session: _Session, figures: dict[str, FigureCheck], check: ReportCheck) -> None:
    """Open every result through its subcategory's table, then any the table did not offer."""
    subcategories = list(dict.fromkeys((f.category, f.subcategory) for f in figures.values()))
    for category, subcategory in subcategories:
        where = f"{category} / {subcategory}"
        try:
            buttons = session.open_subcategory(category, subcategory)
        except Exception as error:
            check.problems.append(
                f"subcategory {where}: its results table did not appear ({_short(error, 120)})"
            )
            continue
        for index, href in enumerate(buttons):
            if href != "#":
                continue  # a download link (or no button): nothing opens in the page
            try:
                state = session.click_row(index)
            except Exception as error:
                check.problems.append(
                    f"subcategory {where}: the view button of row {index + 1} opened nothing "
                    f"({_short(error, 120)})"
                )
                continue
            figure = figures.get(state["path"])
            if figure is None or figure.subcategory != subcategory or figure.category != category:
                check.problems.append(f"subcategory {where}: row {index + 1} opened {state['path']!r}, "
                                      "which is not one of its results")
                continue
            if not state["matches"]:
                figure.problems.append("its view button opened another file than its embedded one")
            figure.opened_via = "navigation"
            session.inspect(figure)

    for figure in figures.values():
        if figure.opened_via != "none":
            continue
        if figure.kind in ("image", "html"):
            try:
                session.open_directly(figure)
            except Exception as error:
                figure.problems.append(f"opening it failed ({_short(error, 120)})")
                continue
            figure.opened_via = "toggle"
        session.inspect(figure)


def check_report(
    html: Path,
    screenshot: Path | None = None,
    chromium: str | None = None,
    timeout_s: float = 60,
    min_non_blank: float = DEFAULT_MIN_NON_BLANK,
) -> ReportCheck:
    """Open a Snakemake 9 HTML report in headless Chromium, open every result, and check it.

    ``screenshot``: where to write the full-page PNG (taken while the first figure is shown).
    ``chromium``: the executable (default $LORALENS_CHROMIUM, else /usr/bin/chromium).
    ``timeout_s``: the longest one step may take (loading the page, one figure).
    ``min_non_blank``: the least fraction of the screenshot that must differ from the page's
    background colour.

    Raises :class:`BrowserUnavailable` without Chromium or playwright, :class:`InputError` if
    ``html`` is not a file; everything the page gets wrong is in the returned ``problems``.
    """
    html = Path(html).resolve()
    if not html.is_file():
        raise InputError(f"report {html} does not exist or is not a file")
    executable = resolve_chromium(chromium)
    sync_playwright = load_playwright()
    check = ReportCheck(report=html)
    started = time.monotonic()
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=executable, args=CHROMIUM_ARGS, headless=True
            )
        except Exception as error:
            message = f"Chromium at {executable} did not start: {_short(error, 500)}; {SETUP_HINT}"
            raise BrowserUnavailable(message) from error
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(timeout_s * 1000)
            session = _Session(page, check)
            page.goto(html.as_uri(), wait_until="load")
            listed = None
            try:
                page.wait_for_function(APP_READY_JS)
                listed = page.evaluate(REPORT_DATA_JS)
            except Exception as error:
                check.problems.append(f"the report app did not start ({_short(error, 200)})")
            if listed is None and not check.problems:
                check.problems.append(
                    "the page has no embedded `results`/`categories`: not a Snakemake 9 report"
                )
            figures: dict[str, FigureCheck] = {}
            for entry in listed or []:
                if not entry["in_results"]:
                    check.problems.append(f"{entry['path']} is listed under {entry['category']} / "
                                          f"{entry['subcategory']} but has no entry in the report's results")
                    continue
                figures[entry["path"]] = FigureCheck(
                    path=entry["path"], name=entry["name"], category=entry["category"],
                    subcategory=entry["subcategory"], mime_type=entry["mime_type"],
                    kind=VIEW_KIND.get(entry["mime_type"], "download"),
                )
            if listed is not None:
                _visit_all(session, figures, check)
            check.figures = list(figures.values())
            if session.screenshot_png is None:
                session.screenshot_png = page.screenshot(full_page=True)
                check.screenshot_view = "no image result shown; the page as the last step left it"
        finally:
            browser.close()

    check.non_blank_fraction = non_blank_fraction(session.screenshot_png)
    if screenshot is not None:
        with atomic_path(screenshot) as work:
            work.write_bytes(session.screenshot_png)
        check.screenshot = Path(screenshot)
    for figure in check.figures:
        check.problems += [f"{figure.kind} {figure.name} ({figure.category} / {figure.subcategory}): {p}"
                           for p in figure.problems]
    check.problems += [f"console error: {message}" for message in check.console_errors]
    check.problems += [f"uncaught page error: {message}" for message in check.page_errors]
    check.problems += [f"failed request: {message}" for message in check.failed_requests]
    if check.non_blank_fraction < min_non_blank:
        check.problems.append(
            f"the screenshot is blank: {check.non_blank_fraction:.2%} of its pixels differ from the "
            f"background, less than {min_non_blank:.2%}"
        )
    log.info("checked %s in %.1f s: %d results, %d problems", html, time.monotonic() - started,
             len(check.figures), len(check.problems))
    return check


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.report.browser", __doc__, settings=False)
    parser.add_argument("report", type=Path, help="the report: snakemake --report's .html file")
    parser.add_argument("--screenshot", type=Path, help="write the full-page screenshot (PNG) here")
    parser.add_argument(
        "--chromium", help=f"Chromium executable (default ${CHROMIUM_ENV}, else {DEFAULT_CHROMIUM})"
    )
    parser.add_argument("--min-non-blank", type=float, default=DEFAULT_MIN_NON_BLANK,
                        help="least fraction of the screenshot's pixels that differ from the background "
                             "(default %(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=60, help="seconds one step may take (default %(default)s)"
    )
    args = parser.parse_args(argv)
    check = check_report(args.report, screenshot=args.screenshot, chromium=args.chromium,
                         timeout_s=args.timeout, min_non_blank=args.min_non_blank)
    print(check.summary())
    if not check.ok:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
