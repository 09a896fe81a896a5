"""The report figures' drawing helpers, shared by every family: seaborn's style, means with
their bands (interval or range), grouped bars with error bars, Holm stars, notes, one legend per figure,
readable axes, block ticks and the paper's values as an overlay."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pandas as pd

from workflow_scripts.report.figures.reference import POINT, SERIES_DISPLAY
from workflow_scripts.report.figures.tables import ALPHA, HOLM_LABEL, Configurations, _numbers

REFERENCE_LABEL = "paper (read from its figure)"
REFERENCE_MARKERS = ("X", "P", "D", "v", "^", "s")
BAND_ALPHA = 0.22


# -- drawing helpers -------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def styled(function: Callable) -> Callable:
    """Draw inside seaborn's style and context (local: other figures keep their rcParams)."""

    @functools.wraps(function)
    def draw(*args, **kwargs):
        import seaborn as sns

        _pyplot()
        with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.05):
            return function(*args, **kwargs)

    return draw


def draw_band(axis, x, rows: pd.DataFrame, colour, label: str, value: str = "mean", linestyle: str = "-",
              marker: str = "o", zorder: float = 2.0):
    """The mean as a line with markers, and the interval (or range) as a band where the table has one."""
    order = np.argsort(_numbers(x), kind="stable")
    xs = _numbers(x)[order]
    mean = _numbers(rows[value])[order]
    low, high = _numbers(rows["ci_low"])[order], _numbers(rows["ci_high"])[order]
    line, = axis.plot(xs, mean, color=colour, linestyle=linestyle, marker=marker, markersize=3.5, linewidth=1.5,
                      label=label, zorder=zorder)
    finite = np.isfinite(low) & np.isfinite(high)
    if finite.any():
        band = axis.fill_between(xs, np.where(finite, low, np.nan), np.where(finite, high, np.nan), color=colour,
                                 alpha=BAND_ALPHA, linewidth=0)
        band.set_gid("ci_band")
    return line


def grouped_bars(axis, table: pd.DataFrame, configurations: Configurations, value: str, x: str = "block",
                 label_suffix: str = "") -> dict:
    """Bars per ``x`` with a bar per configuration side by side and the interval as error bars;
    returns each configuration's bar centres ``{key: (x values, centres)}``."""
    groups = list(configurations.groups(table))
    width = 0.8 / max(len(groups), 1)
    centres = {}
    for i, (key, rows) in enumerate(groups):
        rows = rows.sort_values(x)
        positions = _numbers(rows[x]) - 0.4 + width * (i + 0.5)
        heights = _numbers(rows[value])
        colour = configurations.colour(key)
        axis.bar(positions, heights, width, color=colour, label=configurations.label(key) + label_suffix)
        low, high = _numbers(rows["ci_low"]), _numbers(rows["ci_high"])
        finite = np.isfinite(low) & np.isfinite(high) & np.isfinite(heights)
        if finite.any():
            errors = np.vstack([np.clip(heights - low, 0, None), np.clip(high - heights, 0, None)])[:, finite]
            bars = axis.errorbar(positions[finite], heights[finite], yerr=errors, fmt="none", ecolor="black",
                                 elinewidth=0.8, capsize=1.5)
            bars.lines[2][0].set_gid("ci_bars")
        centres[key] = (rows, positions)
    return centres


def holm_stars(axis, centres: dict, colours: dict | None = None, bars: bool = True) -> int:
    """A star above each bar (``bars``) or point whose ``t_p_holm`` < ALPHA, in its configuration's
    colour (``colours[key]``); returns how many. ``centres``: ``{key: (rows, x positions)}``."""
    heights = [v for rows, _ in centres.values() for column in ("mean_difference", "ci_low", "ci_high")
               for v in _numbers(rows[column])]
    finite = [v for v in heights if np.isfinite(v)] + [0.0]
    pad = 0.06 * ((max(finite) - min(finite)) or 1.0)
    count = 0
    for key, (rows, positions) in centres.items():
        p = _numbers(rows["t_p_holm"])
        significant = np.isfinite(p) & (p < ALPHA)
        if not significant.any():
            continue
        upper = np.fmax(_numbers(rows["mean_difference"]), _numbers(rows["ci_high"]))[significant]
        if bars:  # a negative bar hangs below 0: its star goes above the zero line
            upper = np.fmax(upper, 0.0)
        stars, = axis.plot(np.asarray(positions)[significant], upper + pad, linestyle="none", marker="*",
                           markersize=9, color=(colours or {}).get(key, "black"), markeredgecolor="black",
                           markeredgewidth=0.5, label="_holm")
        stars.set_gid("holm")
        count += int(significant.sum())
    return count


def star_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], linestyle="none", marker="*", markersize=9, color="white", markeredgecolor="black",
                  label=HOLM_LABEL + " (in the configuration's colour)")


def no_test_note(axis, paired_rows: pd.DataFrame) -> None:
    """Say so when the paired table could not test (every p NaN: fewer than two pairs)."""
    if len(paired_rows) and not np.isfinite(_numbers(paired_rows["t_p_holm"])).any():
        note = "no paired test (fewer than 2 pairs)"
        if "test_note" in paired_rows.columns and paired_rows["test_note"].notna().any():
            note = f"no paired test: {paired_rows['test_note'].dropna().iloc[0]}"
        axis.text(0.02, 0.95, note, transform=axis.transAxes, fontsize=7, va="top", color="dimgrey")


def note(axis, text: str, y: float = 0.5) -> None:
    axis.text(0.5, y, text, transform=axis.transAxes, ha="center", va="center", fontsize=8, color="dimgrey",
              bbox={"facecolor": "white", "edgecolor": "lightgrey", "alpha": 0.9})


def figure_legend(figure, axes, extra: list | None = None) -> None:
    """One legend for the whole figure, below the panels, each label once."""
    handles = {}
    for axis in np.ravel(axes):
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if not label.startswith("_"):
                handles.setdefault(label, handle)
    for handle in extra or []:
        handles.setdefault(handle.get_label(), handle)
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="outside lower center",
                      ncol=min(3, len(handles)), fontsize=8, frameon=False)


def finish_axes(figure) -> None:
    """Readable y-axes: plain tick labels (no "1e−12+1" offset) and, where the data are flat up to
    rounding (e.g. E(10) = 1 at every block), a range of ±5 % around them, derived from the data."""
    from matplotlib.ticker import ScalarFormatter

    for axis in figure.axes:
        if not axis.get_visible() or axis.get_yscale() != "linear" or axis.get_label() == "<colorbar>":
            continue
        if isinstance(axis.yaxis.get_major_formatter(), ScalarFormatter):
            axis.ticklabel_format(axis="y", useOffset=False)
        low, high = axis.get_ylim()
        centre = (low + high) / 2
        if abs(high - low) < 1e-6 * max(1.0, abs(centre)):
            half = 0.05 * max(abs(centre), 1.0)
            axis.set_ylim(centre - half, centre + half)  # contains the data: they lie within rounding of centre


def band_handle(label: str = "band: interval or range over runs (the title says which)"):
    from matplotlib.patches import Patch

    return Patch(facecolor="grey", alpha=BAND_ALPHA, label=label)


def set_block_ticks(axis, values) -> None:
    ticks = sorted({int(v) for v in _numbers(values) if np.isfinite(v)})
    if len(ticks) > 16:  # 32 blocks: every fourth, so the labels stay legible
        step = int(np.ceil(len(ticks) / 8))
        ticks = ticks[::step]
    axis.set_xticks(ticks)


# -- the paper's values ----------------------------------------------------------------------------

def overlay_reference(axis, rows: pd.DataFrame | None, panel: str, x_offset: float = 0.0) -> None:
    """The paper's values of ``panel`` at one layer (statistic ``point``) as black markers at
    (layer + ``x_offset``, value), a marker per series. ``rows``: :func:`.reference.figure_rows`."""
    if rows is None:
        return
    # A series keeps its marker in every panel of the figure: the legend shows each series once.
    markers = {series: REFERENCE_MARKERS[i % len(REFERENCE_MARKERS)]
               for i, series in enumerate(sorted(rows["series"].astype(str).unique()))}
    part = rows[(rows["panel"].astype(str) == panel) & (rows["statistic"].astype(str) == POINT)]
    for series, values in part.groupby("series", sort=True):
        values = values.sort_values("layer")
        axis.plot(_numbers(values["layer"]) + x_offset, _numbers(values["value"]), linestyle="none", color="black",
                  marker=markers[str(series)], markersize=8, markeredgecolor="white",
                  markeredgewidth=0.8, label=reference_label(series), gid="reference", zorder=6)


def reference_label(series: str, what: str = "") -> str:
    """A legend label of the paper's values: "paper (read from its figure): LoRA" (+ ``what``)."""
    text = SERIES_DISPLAY.get(str(series), str(series))
    return f"{REFERENCE_LABEL}: {text}{' ' + what if what else ''}"
