"""The report's figures: the paper's F1-F6 and the new analyses, drawn from the aggregated tables.

Every figure reads the tables that ``workflow_scripts.report.aggregate`` writes: per analysis, one
row per configuration (dataset, protocol, model, method, targets, rank) and the analysis's keys,
with ``runs``, ``seeds``, ``folds``, ``mean``, ``std``, ``ci_low``, ``ci_high`` and ``interval``
("t", "bootstrap" or "none"); and, for contribution, logit_lens, probes and erasure, the paired
LoRA − frozen tables (``pairs``, ``mean_difference``, ``ci_low``, ``ci_high``, ``t_p_holm`` ...).
Means are lines or bars; the 95 % intervals are bands or error bars, drawn only where the table
has one (one run gives none). Each title says the configurations and how many runs the means are
over, from the tables' own ``runs``/``seeds``/``folds``/``interval`` columns. No y-limit is
fixed: every axis scales to what it shows.

Figures (:data:`FIGURES`, name -> function, the tables it needs, its caption):

* ``contribution`` (F1): relative norm and cosine with the residual of attention, MLP and both,
  per block, LoRA and frozen side by side; below each, LoRA − frozen from the paired table with
  a star on the blocks whose Holm-corrected paired t p < 0.05.
* ``logit_lens`` (F2): KL(final ‖ layer) and agreement with the final decision per layer, LoRA
  and frozen; raw and normed lens as columns.
* ``embedding_quality`` (F3): silhouette and kNN scores of the LoRA A outputs per block, a line
  per rank (the t-SNE grids themselves are the embeddings rule's PNGs).
* ``energy`` (F4): k90 of U, gU, V, gV over the adapted matrices as box plots, trained vs
  untrained (lora_random) and PEFT init (lora_init), with the paper's "trained / untrained /
  ratio" in each title.
* ``top10`` (F5): top-10 energy E(10) per block, trained vs untrained.
* ``cka`` (F6): the paper's four CKA pairings per block, forward (top) and backward (bottom), with
  the permutation null (mean..p95) shaded.
* new: ``probes`` (linear-probe UAR per layer and LoRA − frozen), ``lens_comparison`` (normed vs
  raw lens), ``erasure`` (block erasure and LoRA-delta ablation), ``weight_spectra`` (singular
  values of ΔW), ``subspaces`` (principal-angle similarity with chance) and ``cka_heatmap``
  (layer × layer CKA, LoRA vs frozen and seed vs seed, with the permutation floor).

The paper's values, where known, can be overlaid (``reference``: a table with columns figure
(F1..F6), panel, series, layer, value; the panels each function accepts are in its docstring;
``layer`` is the paper's x, i.e. its layer index, 0-based). They are drawn as black markers
labelled "paper (read from its figure)".

Entry point::

    python -m workflow_scripts.report.figures --figure NAME --table ANALYSIS=PATH ... \\
        [--paired ANALYSIS=PATH ...] [--reference PATH.csv] [--option NAME=VALUE ...] --out FIG.png

writes FIG.png and FIG.svg (each atomically, ``analyses.output.save_figure``). Nothing is written
when a table lacks what the figure needs: the error names the figure and the missing column or
statistic.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.analyses.cka import PAPER_SERIES
from workflow_scripts.cli import entry_parser, parse_assignments, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.figure_style import COLOURS as LABEL_COLOURS
from workflow_scripts.figure_style import DISPLAY as LABEL_DISPLAY
from workflow_scripts.figure_style import MODULES
from workflow_scripts.figure_style import PANELS as SPECTRA_PANELS
from workflow_scripts.figure_style import REFERENCES as UNTRAINED_LABELS
from workflow_scripts.figure_style import SYMBOLS, TRAINED, run_label

log = logging.getLogger(__name__)

CONFIGURATION = ("dataset", "protocol", "model", "method", "targets", "rank")
PAIRED_CONFIGURATION = ("dataset", "protocol", "model", "targets", "rank")
SUMMARY = ("runs", "mean", "ci_low", "ci_high", "interval")
PAIRED_SUMMARY = ("pairs", "mean_difference", "ci_low", "ci_high", "interval", "t_p_holm")
#: The paired tests' level: a block is starred when its Holm-corrected p is below it.
ALPHA = 0.05
#: Order of the methods in legends and colours: the baseline first, then the trained LoRA.
METHOD_ORDER = ("frozen", "full", "lora", "lora_random", "lora_init")
REFERENCE_COLUMNS = ("figure", "panel", "series", "layer", "value")
REFERENCE_LABEL = "paper (read from its figure)"
REFERENCE_MARKERS = ("X", "P", "D", "v", "^", "s")
PAPER_MODULE = "v_proj"  # the paper adapted v_proj only: its figures show that module
HOLM_LABEL = f"Holm-corrected paired t p < {ALPHA:g}"
BAND_ALPHA = 0.22
CAPTIONS = Path(__file__).with_name("captions")

# Statistic names of the analyses (see their modules).
CONTRIBUTION_OUTPUTS = (("attn", "attention"), ("mlp", "MLP"), ("layer", "attention + MLP"))
CONTRIBUTION_KINDS = (("ratio", "‖output‖ / ‖residual input‖"), ("cos", "cosine with residual input"))
LENSES = ("raw", "normed")
LENS_STATISTICS = {"kl_final_layer": "KL(final ‖ layer), nats", "agreement": "agreement with final decision",
                   "uar": "lens UAR (true labels)"}
EMBEDDING_PANELS = (("features", "silhouette_features", "silhouette, pooled A outputs"),
                    ("tsne", "silhouette_map", "silhouette, t-SNE map"),
                    ("features", "knn_accuracy", "kNN accuracy (speaker-grouped)"),
                    ("features", "knn_uar", "kNN UAR (speaker-grouped)"))
#: erasure.py's conditions (``conditions_for``; that module imports torch, which a figure does
#: not need): (condition, panel title, x-axis label).
ERASURE_CONDITIONS = (("skip_block", "block l skipped", "encoder block l"),
                      ("skip_first", "blocks 0..k−1 skipped", "k (blocks skipped from the input side)"),
                      ("lora_off", "LoRA delta removed at block l", "encoder block l"),
                      ("lora_off_from", "LoRA delta removed at blocks l..L−1", "first block l"))
#: erasure.py's statistics as axis labels (the deltas are positive when the erasure hurts).
ERASURE_LABELS = {"delta_uar": "ΔUAR (baseline − erased)", "delta_war": "ΔWAR (baseline − erased)",
                  "delta_confidence": "Δ confidence (baseline − erased)", "delta_loss": "Δ loss (erased − baseline)",
                  "score_paper": "paper's score Δacc + 0.5·Δconf − 0.1·Δloss",
                  "score_corrected": "corrected score Δacc + 0.5·Δconf + 0.1·Δloss",
                  "uar": "UAR after erasure", "war": "WAR after erasure", "confidence": "mean confidence after erasure",
                  "loss": "cross-entropy after erasure"}
CKA_DIRECTIONS = (("forward", ("learned_layer_similarities", "random_layer_similarities")),
                  ("backward", ("learned_layer_grad_similarities", "random_layer_grad_similarities")))
CKA_SERIES_LABELS = {
    "learned_layer_similarities": "paper's 'Trained': U trained ~ U untrained (linear)",
    "random_layer_similarities": "paper's 'Untrained': V trained ~ V untrained (RBF)",
    "learned_layer_grad_similarities": "paper's 'Trained': gV ~ gU, trained (RBF)",
    "random_layer_grad_similarities": "paper's 'Untrained': gV ~ gU, untrained (RBF)",
}
CKA_SERIES_COLOURS = {"learned_layer_similarities": LABEL_COLOURS[TRAINED],
                      "random_layer_similarities": LABEL_COLOURS["lora_random"],
                      "learned_layer_grad_similarities": LABEL_COLOURS[TRAINED],
                      "random_layer_grad_similarities": LABEL_COLOURS["lora_random"]}
CKA_LAYER_PAIRINGS = {"lora_vs_frozen": "LoRA vs frozen", "seed_vs_seed": "seed vs seed"}
SUBSPACE_MEASURES = {"mean_cos2": "mean cos² of the principal angles", "max_cos": "largest cosine"}


# -- checks --------------------------------------------------------------------------------------

def require_columns(table: pd.DataFrame | None, figure: str, what: str, columns) -> None:
    """Raise an InputError naming ``figure`` when ``table`` (the ``what`` table) is absent or
    lacks any of ``columns``."""
    if table is None:
        raise InputError(f"figure {figure}: needs the {what} table")
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InputError(f"figure {figure}: the {what} table lacks column(s) {missing} "
                         f"(it has {list(table.columns)})")
    if table.empty:
        raise InputError(f"figure {figure}: the {what} table has no rows")


def require_values(table: pd.DataFrame, figure: str, what: str, column: str, values) -> None:
    """Raise an InputError naming ``figure`` when ``table[column]`` lacks any of ``values``."""
    present = set(table[column].dropna().unique())
    missing = [value for value in values if value not in present]
    if missing:
        raise InputError(f"figure {figure}: the {what} table has no rows with {column} {missing} "
                         f"(it has {sorted(map(str, present))})")


def _numbers(values) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)


# -- configurations, colours, titles -------------------------------------------------------------

def _field_text(field: str, value) -> str:
    """How a configuration field reads in a label ("r8"; nothing for frozen's rank 0 and targets)."""
    if pd.isna(value):
        return ""
    if field == "rank":
        return "" if int(value) == 0 else f"r{int(value)}"
    if field == "targets":
        return "" if value == "none" else str(value)
    return str(value)


def _sort_key(field: str, value):
    if field == "method":
        return (METHOD_ORDER.index(value) if value in METHOD_ORDER else len(METHOD_ORDER), str(value))
    if field == "rank":
        return (0, float(value)) if pd.notna(value) else (1, 0.0)
    return (0, str(value))


class Configurations:
    """The configurations drawn in one figure: a stable order, a label per configuration from
    the fields that differ between them, a colour each, and the text of the fields they share."""

    def __init__(self, tables, fields=CONFIGURATION):
        tables = [t for t in tables if t is not None and len(t)]
        self.fields = [f for f in fields if all(f in t.columns for t in tables)]
        rows = pd.concat([t[self.fields] for t in tables], ignore_index=True).drop_duplicates()
        keys = [tuple(row) for row in rows.itertuples(index=False)]
        self.keys = sorted(keys, key=lambda key: [_sort_key(f, v) for f, v in zip(self.fields, key)])
        # A field varies when its non-blank texts differ: frozen's targets "none" and rank 0 read
        # as blank, so LoRA r4, r8 and frozen are "lora r4", "lora r8", "frozen".
        self.varying = [f for i, f in enumerate(self.fields) if len(self._texts(i)) > 1]
        import seaborn as sns

        palette = sns.color_palette("colorblind", max(len(self.keys), 1))
        self._colours = {key: palette[i % len(palette)] for i, key in enumerate(self.keys)}

    def _texts(self, index: int) -> set[str]:
        return {text for key in self.keys if (text := _field_text(self.fields[index], key[index]))}

    def key(self, row: dict) -> tuple:
        return tuple(row[f] for f in self.fields)

    def label(self, key: tuple) -> str:
        parts = [_field_text(f, key[self.fields.index(f)]) for f in self.varying]
        text = " ".join(p for p in parts if p)
        if text:
            return text
        if "method" in self.fields:  # one configuration, or only frozen's blank fields differ
            return str(key[self.fields.index("method")])
        return "all runs"

    def colour(self, key: tuple):
        return self._colours.get(key, "grey")

    def zorder(self, key: tuple) -> float:
        """Lines of earlier configurations (the baseline first) on top: a frozen curve that an
        identical lora_init curve (B = 0) would cover stays visible."""
        position = self.keys.index(key) if key in self.keys else len(self.keys)
        return 2.0 + (len(self.keys) - position) / (len(self.keys) + 1)

    def common(self) -> str:
        """The fields every configuration shares, e.g. ``demo / loso_speaker / whisper-base``."""
        shared = [next(iter(self._texts(i)), "") for i, f in enumerate(self.fields) if f not in self.varying]
        return " / ".join(p for p in shared if p)

    def groups(self, table: pd.DataFrame):
        """``(key, rows)`` of ``table`` per configuration, in this set's order."""
        for key in self.keys:
            rows = table[self.mask(table, key)]
            if len(rows):
                yield key, rows

    def mask(self, table: pd.DataFrame, key: tuple) -> np.ndarray:
        """Which rows of ``table`` belong to configuration ``key`` (field by field: a Series
        compared with a tuple would compare element-wise)."""
        match = np.ones(len(table), dtype=bool)
        for field, value in zip(self.fields, key):
            column = table[field]
            match &= (column.isna() if pd.isna(value) else column == value).to_numpy(dtype=bool)
        return match


def _span(values: pd.Series, noun: str) -> str:
    numbers = _numbers(values)
    numbers = numbers[np.isfinite(numbers)].astype(int)
    if numbers.size == 0:
        return f"? {noun}"
    low, high = numbers.min(), numbers.max()
    count = f"{low}" if low == high else f"{low}–{high}"
    return f"{count} {noun}{'' if high == 1 else 's'}"


def _interval_text(intervals: pd.Series) -> str:
    kinds = sorted(set(intervals.dropna().astype(str)) - {"none"})
    if not kinds:
        return "no interval (one run)"
    text = f"95 % interval ({' and '.join(kinds)})"
    if (intervals.astype(str) == "none").any():
        text += ", none where one run"
    return text


def _summary_rows(tables, count: str) -> pd.DataFrame:
    tables = [t for t in tables if t is not None and len(t)]
    return pd.concat([t.reindex(columns=[count, "seeds", "folds", "interval"]) for t in tables], ignore_index=True)


def count_text(tables, count: str = "runs", noun: str = "run") -> str:
    """"mean over N runs (S seeds × F folds)" from the tables' own columns."""
    rows = _summary_rows(tables, count)
    text = f"mean over {_span(rows[count], noun)}"
    if rows["seeds"].notna().any() and rows["folds"].notna().any():
        text += f" ({_span(rows['seeds'], 'seed')} × {_span(rows['folds'], 'fold')})"
    elif noun == "run":
        text += " (seeds × folds)"
    return text


def runs_text(tables, count: str = "runs", noun: str = "run") -> str:
    """"mean over N runs (S seeds × F folds), 95 % interval (t)" from the tables' own columns."""
    return f"{count_text(tables, count, noun)}, {_interval_text(_summary_rows(tables, count)['interval'])}"


def paired_text(paired: pd.DataFrame) -> str:
    """The paired table's line of a title: pairs, interval, the star's meaning."""
    return (f"LoRA − frozen: mean over {_span(paired['pairs'], 'paired run')} (same seed and fold), "
            f"{_interval_text(paired['interval'])}; ★ {HOLM_LABEL}")


def title_text(heading: str, configurations: Configurations, *lines: str) -> str:
    """Heading — shared fields; the configurations when several; then ``lines``."""
    common = configurations.common()
    listed = ""
    if len(configurations.keys) > 1:
        listed = f"{len(configurations.keys)} configurations: " + "; ".join(
            configurations.label(key) for key in configurations.keys)
    return "\n".join([heading + (f" — {common}" if common else ""), *[line for line in (listed, *lines) if line]])


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
    """The mean as a line with markers, and the 95 % interval as a band where the table has one."""
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


def band_handle(label: str = "95 % interval across runs"):
    from matplotlib.patches import Patch

    return Patch(facecolor="grey", alpha=BAND_ALPHA, label=label)


def set_block_ticks(axis, values) -> None:
    ticks = sorted({int(v) for v in _numbers(values) if np.isfinite(v)})
    if len(ticks) > 16:  # 32 blocks: every fourth, so the labels stay legible
        step = int(np.ceil(len(ticks) / 8))
        ticks = ticks[::step]
    axis.set_xticks(ticks)


# -- the paper's values ----------------------------------------------------------------------------

def reference_rows(reference: pd.DataFrame | None, paper: str, panels, figure: str) -> pd.DataFrame | None:
    """The rows of ``reference`` for figure ``paper`` (F1..F6); InputError on an unknown panel."""
    if reference is None:
        return None
    missing = [c for c in REFERENCE_COLUMNS if c not in reference.columns]
    if missing:
        raise InputError(f"figure {figure}: the reference table lacks column(s) {missing}; it needs "
                         f"{list(REFERENCE_COLUMNS)}")
    rows = reference[reference["figure"].astype(str) == paper]
    unknown = sorted(set(rows["panel"].astype(str)) - set(panels))
    if unknown:
        raise InputError(f"figure {figure}: the reference rows of {paper} name unknown panel(s) {unknown}; "
                         f"known: {sorted(panels)}")
    return rows


def overlay_reference(axis, rows: pd.DataFrame | None, panel: str, x_offset: float = 0.0) -> None:
    """The paper's values of ``panel`` as black markers at (layer + ``x_offset``, value)."""
    if rows is None:
        return
    part = rows[rows["panel"].astype(str) == panel]
    for i, (series, values) in enumerate(part.groupby("series", sort=True)):
        values = values.sort_values("layer")
        label = f"{REFERENCE_LABEL}: {series}" if str(series) else REFERENCE_LABEL
        axis.plot(_numbers(values["layer"]) + x_offset, _numbers(values["value"]), linestyle="none", color="black",
                  marker=REFERENCE_MARKERS[i % len(REFERENCE_MARKERS)], markersize=8, markeredgecolor="white",
                  markeredgewidth=0.8, label=label, gid="reference", zorder=6)


# -- F1 --------------------------------------------------------------------------------------------

@styled
def contribution_figure(contribution: pd.DataFrame, paired: pd.DataFrame, reference: pd.DataFrame | None = None):
    """F1: per block, the mean relative norm ‖output‖/‖residual input‖ and the mean cosine with the
    residual input of the attention output, the MLP output and both (columns); for each, LoRA and
    frozen configurations side by side (bars, 95 % interval as error bars) and below them LoRA −
    frozen from the paired table, starred where the Holm-corrected paired t p < 0.05.
    Reference panels (F1): the six statistics (``attn_ratio`` ... ``layer_cos``) and the same with
    ``_difference``; ``layer`` = block."""
    name = "contribution (F1)"
    statistics = [f"{output}_{kind}" for kind, _ in CONTRIBUTION_KINDS for output, _ in CONTRIBUTION_OUTPUTS]
    require_columns(contribution, name, "aggregated contribution", CONFIGURATION + ("block", "statistic") + SUMMARY)
    require_columns(paired, name, "paired contribution", PAIRED_CONFIGURATION + ("block", "statistic") + PAIRED_SUMMARY)
    require_values(contribution, name, "aggregated contribution", "statistic", statistics)
    require_values(paired, name, "paired contribution", "statistic", statistics)
    values = contribution[contribution["method"].isin(["lora", "frozen"])]
    if values.empty:
        raise InputError(f"figure {name}: the aggregated contribution table has no lora or frozen rows "
                         f"(methods {sorted(contribution['method'].unique())})")
    differences = paired.assign(method="lora")
    configurations = Configurations([values, differences])
    reference = reference_rows(reference, "F1", statistics + [f"{s}_difference" for s in statistics], name)
    plt = _pyplot()
    n_blocks = values["block"].nunique()
    figure, axes = plt.subplots(4, 3, figsize=(max(12.0, min(24.0, 0.2 * n_blocks * 3)), 13), sharex=True,
                                layout="constrained")
    for k, (kind, kind_label) in enumerate(CONTRIBUTION_KINDS):
        for column, (output, output_label) in enumerate(CONTRIBUTION_OUTPUTS):
            statistic = f"{output}_{kind}"
            value_axis, difference_axis = axes[2 * k, column], axes[2 * k + 1, column]
            grouped_bars(value_axis, values[values["statistic"] == statistic], configurations, "mean")
            rows = differences[differences["statistic"] == statistic]
            centres = grouped_bars(difference_axis, rows, configurations, "mean_difference", label_suffix=" − frozen")
            holm_stars(difference_axis, centres, {key: configurations.colour(key) for key in centres})
            no_test_note(difference_axis, rows)
            overlay_reference(value_axis, reference, statistic)
            overlay_reference(difference_axis, reference, f"{statistic}_difference")
            value_axis.set_title(f"{output_label}: {kind_label}", fontsize=9)
            difference_axis.set_title(f"{output_label}: LoRA − frozen", fontsize=9)
            value_axis.set_ylabel(kind_label if column == 0 else "")
            difference_axis.set_ylabel(f"Δ {kind}, LoRA − frozen" if column == 0 else "")
            for axis in (value_axis, difference_axis):
                axis.axhline(0, color="black", linewidth=0.6)
    for axis in axes[-1]:
        axis.set_xlabel("encoder block")
        set_block_ticks(axis, values["block"])
    finish_axes(figure)
    figure_legend(figure, axes, [star_handle()])
    figure.suptitle(title_text("Layer contribution to the residual stream (F1)", configurations,
                               runs_text([values]), paired_text(paired)), fontsize=10)
    return figure


# -- F2 and the lens comparison -------------------------------------------------------------------

@styled
def logit_lens_figure(logit_lens: pd.DataFrame, reference: pd.DataFrame | None = None,
                      methods=("lora", "frozen")):
    """F2: per layer (0 = embedding output), the mean KL(final ‖ layer) (top) and the agreement of
    the lens's decision with the model's final decision (bottom), a line per configuration of
    ``methods`` with its 95 % band; the raw lens (the paper's) and the normed lens as columns.
    Reference panels (F2, drawn on the raw lens): ``kl_final_layer``, ``agreement``; the paper's
    layer l is the output of block l, our layer l + 1."""
    name = "logit_lens (F2)"
    statistics = ("kl_final_layer", "agreement")
    require_columns(logit_lens, name, "aggregated logit_lens", CONFIGURATION + ("lens", "layer", "statistic") + SUMMARY)
    require_values(logit_lens, name, "aggregated logit_lens", "statistic", statistics)
    shown = logit_lens[logit_lens["method"].isin(list(methods))] if methods else logit_lens
    if shown.empty:
        raise InputError(f"figure {name}: the aggregated logit_lens table has no rows of methods {list(methods)} "
                         f"(it has {sorted(logit_lens['method'].unique())})")
    lenses = [lens for lens in LENSES if lens in set(shown["lens"])]
    if not lenses:
        raise InputError(f"figure {name}: the aggregated logit_lens table has no rows with lens {list(LENSES)}")
    configurations = Configurations([shown])
    reference = reference_rows(reference, "F2", statistics, name)
    plt = _pyplot()
    figure, axes = plt.subplots(2, len(lenses), figsize=(6.2 * len(lenses), 7.5), squeeze=False, sharex=True,
                                layout="constrained")
    for column, lens in enumerate(lenses):
        for row, statistic in enumerate(statistics):
            axis = axes[row, column]
            part = shown[(shown["lens"] == lens) & (shown["statistic"] == statistic)]
            for key, rows in configurations.groups(part):
                draw_band(axis, rows["layer"], rows, configurations.colour(key), configurations.label(key),
                          zorder=configurations.zorder(key))
            if lens == "raw":
                overlay_reference(axis, reference, statistic, x_offset=1)
            axis.set_ylabel(LENS_STATISTICS[statistic])
            axis.set_title(f"{lens} lens: {LENS_STATISTICS[statistic]}", fontsize=9)
        axes[-1, column].set_xlabel("layer (0 = embedding output, l = output of block l − 1)")
        set_block_ticks(axes[-1, column], shown["layer"])
    finish_axes(figure)
    figure_legend(figure, axes, [band_handle()])
    figure.suptitle(title_text("Logit lens (F2)", configurations, runs_text([shown])), fontsize=10)
    return figure


@styled
def lens_comparison_figure(logit_lens: pd.DataFrame):
    """New: the raw lens (the paper's, before the final LayerNorm) against the normed lens (after
    it), per configuration (rows): KL(final ‖ layer), agreement with the final decision and the
    lens's own UAR (columns), each lens a line with its 95 % band."""
    name = "lens_comparison (new)"
    statistics = tuple(LENS_STATISTICS)
    require_columns(logit_lens, name, "aggregated logit_lens", CONFIGURATION + ("lens", "layer", "statistic") + SUMMARY)
    require_values(logit_lens, name, "aggregated logit_lens", "statistic", statistics)
    require_values(logit_lens, name, "aggregated logit_lens", "lens", LENSES)
    configurations = Configurations([logit_lens])
    colours = {"raw": "#1f77b4", "normed": "#ff7f0e"}
    plt = _pyplot()
    keys = configurations.keys
    figure, axes = plt.subplots(len(keys), len(statistics), figsize=(13, 2.6 * len(keys) + 1.4), squeeze=False,
                                sharex=True, layout="constrained")
    for row, (key, rows) in enumerate(configurations.groups(logit_lens)):
        for column, statistic in enumerate(statistics):
            axis = axes[row, column]
            for lens in LENSES:
                part = rows[(rows["lens"] == lens) & (rows["statistic"] == statistic)]
                if len(part):
                    draw_band(axis, part["layer"], part, colours[lens], f"{lens} lens",
                              linestyle="-" if lens == "raw" else "--")
            axis.set_title(f"{configurations.label(key)}: {LENS_STATISTICS[statistic]}", fontsize=9)
            axis.set_ylabel(LENS_STATISTICS[statistic] if column == 0 else "")
    for axis in axes[-1]:
        axis.set_xlabel("layer (0 = embedding output)")
        set_block_ticks(axis, logit_lens["layer"])
    finish_axes(figure)
    figure_legend(figure, axes, [band_handle()])
    figure.suptitle(title_text("Raw vs normed logit lens", configurations, runs_text([logit_lens])), fontsize=10)
    return figure


# -- F3 --------------------------------------------------------------------------------------------

@styled
def embedding_quality_figure(embeddings: pd.DataFrame, reference: pd.DataFrame | None = None):
    """F3 (quantified): per block, the silhouette of the emotion classes in the pooled A outputs
    and in their t-SNE map, and the accuracy and UAR of a speaker-grouped kNN vote, a line per
    configuration (rank) and module with its 95 % band. Reference panels (F3): the statistics'
    names (the paper gives no numbers for F3; accepted for completeness); ``layer`` = block."""
    name = "embedding_quality (F3)"
    require_columns(embeddings, name, "aggregated embeddings",
                    CONFIGURATION + ("block", "module", "space", "statistic") + SUMMARY)
    require_values(embeddings, name, "aggregated embeddings", "statistic", [s for _, s, _ in EMBEDDING_PANELS])
    for space, statistic, _ in EMBEDDING_PANELS:
        if embeddings[(embeddings["space"] == space) & (embeddings["statistic"] == statistic)].empty:
            raise InputError(f"figure {name}: the aggregated embeddings table has no {statistic!r} rows "
                             f"in space {space!r}")
    configurations = Configurations([embeddings])
    reference = reference_rows(reference, "F3", [s for _, s, _ in EMBEDDING_PANELS], name)
    modules = [m for m in MODULES if m in set(embeddings["module"])] or sorted(embeddings["module"].unique())
    styles = dict(zip(modules, ("-", "--", ":", "-.") * 2))
    plt = _pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True, layout="constrained")
    for axis, (space, statistic, label) in zip(axes.ravel(), EMBEDDING_PANELS):
        part = embeddings[(embeddings["space"] == space) & (embeddings["statistic"] == statistic)]
        for key, rows in configurations.groups(part):
            for module, of_module in rows.groupby("module", sort=False):
                suffix = f" {module}" if len(modules) > 1 else ""
                draw_band(axis, of_module["block"], of_module, configurations.colour(key),
                          configurations.label(key) + suffix, linestyle=styles.get(module, "-"))
        overlay_reference(axis, reference, statistic)
        axis.set_title(label, fontsize=9)
        axis.set_ylabel(label)
        axis.set_xlabel("encoder block")
        set_block_ticks(axis, embeddings["block"])
    finish_axes(figure)
    figure_legend(figure, axes, [band_handle()])
    module_text = f"module {', '.join(modules)}"
    figure.suptitle(title_text("Emotion structure in the LoRA A outputs (F3, quantified)", configurations,
                               module_text, runs_text([embeddings])), fontsize=10)
    return figure


# -- F4 and F5 -------------------------------------------------------------------------------------

def _spectra_groups(spectra: pd.DataFrame, figure: str):
    """The LoRA configurations of a spectra table (the trained run's fields without the method),
    and each one's rows per label (trained, lora_random, lora_init)."""
    if not (spectra["method"] == "lora").any():
        raise InputError(f"figure {figure}: the aggregated spectra table has no trained (method lora) rows "
                         f"(methods {sorted(spectra['method'].unique())})")
    labelled = spectra.assign(label=spectra["method"].map(run_label))
    configurations = Configurations([labelled[labelled["method"] == "lora"]])
    return labelled, configurations


def _label_rows(labelled: pd.DataFrame, configurations: Configurations, key: tuple) -> dict:
    """``{label: rows}`` of the configuration ``key`` (matched on every field but the method)."""
    fields = [f for f in configurations.fields if f != "method"]
    match = np.ones(len(labelled), dtype=bool)
    for field in fields:
        match &= (labelled[field] == key[configurations.fields.index(field)]).to_numpy()
    rows = labelled[match]
    return {label: rows[rows["label"] == label] for label in (TRAINED, *UNTRAINED_LABELS)
            if (rows["label"] == label).any()}


def _lora_text(configurations: Configurations, key: tuple) -> str:
    """A LoRA configuration's targets and rank, e.g. ``q_proj+v_proj r8``."""
    fields = [f for f in ("targets", "rank") if f in configurations.fields]
    return " ".join(_field_text(f, key[configurations.fields.index(f)]) for f in fields).strip() or "LoRA"


def _k90_line(label_rows: dict) -> str:
    """The paper's annotation: trained mean / untrained mean / ratio (and lora_init's)."""
    means = {label: float(np.nanmean(v)) if np.isfinite(v := _numbers(rows["mean"])).any() else np.nan
             for label, rows in label_rows.items()}
    trained = means.get(TRAINED, np.nan)
    parts = [f"trained {trained:.1f}" if np.isfinite(trained) else "trained all zero"]
    for label in UNTRAINED_LABELS:
        if label not in means:
            continue
        name = "untrained" if label == "lora_random" else "init"
        if not np.isfinite(means[label]):
            parts.append(f"{name} all zero")
            continue
        ratio = f" (ratio {means[label] / trained:.1f}×)" if np.isfinite(trained) and trained > 0 else ""
        parts.append(f"{name} {means[label]:.1f}{ratio}")
    return " / ".join(parts)


@styled
def energy_figure(spectra: pd.DataFrame, reference: pd.DataFrame | None = None):
    """F4: for U, gU, V and gV (2 × 2 panels), box plots of k90 (the number of singular values
    holding 90 % of the energy) over the adapted (block, module) matrices -- each matrix's k90
    averaged over runs -- for the trained LoRA and its untrained references (lora_random, the
    paper's "untrained"; lora_init where the table has it), per LoRA configuration; each title
    gives the mean k90 "trained / untrained (ratio)". A reference whose every matrix is all zero
    (lora_init's V and gU: B = 0) has no k90 and is said so.
    Reference panels (F4): ``U``, ``gU``, ``V``, ``gV``, series ``trained``/``untrained``, value
    the paper's mean k90 (a dotted line; ``layer`` unused)."""
    name = "energy (F4)"
    require_columns(spectra, name, "aggregated spectra",
                    CONFIGURATION + ("block", "module", "quantity", "statistic") + SUMMARY)
    require_values(spectra, name, "aggregated spectra", "statistic", ["k90"])
    k90 = spectra[spectra["statistic"] == "k90"]
    require_values(k90, name, "aggregated spectra (k90)", "quantity", [q for q, _ in SPECTRA_PANELS])
    labelled, configurations = _spectra_groups(k90, name)
    reference = reference_rows(reference, "F4", list(SYMBOLS.values()), name)
    labels = [label for label in (TRAINED, *UNTRAINED_LABELS) if (labelled["label"] == label).any()]
    width = 0.8 / len(labels)
    plt = _pyplot()
    n_groups = len(configurations.keys)
    figure, axes = plt.subplots(2, 2, figsize=(max(10.0, 3.2 * n_groups * 2), 9.5), layout="constrained")
    from matplotlib.patches import Patch

    for axis, (quantity, heading) in zip(axes.ravel(), SPECTRA_PANELS):
        annotations, notes = [], []
        for g, key in enumerate(configurations.keys):
            by_label = _label_rows(labelled[labelled["quantity"] == quantity], configurations, key)
            group = configurations.label(key) if n_groups > 1 else ""
            for j, label in enumerate(labels):
                if label not in by_label:
                    continue
                position = g - 0.4 + width * (j + 0.5)
                values = _numbers(by_label[label]["mean"])
                values = values[np.isfinite(values)]
                colour = LABEL_COLOURS.get(label, "grey")
                if values.size == 0:
                    notes.append(f"{group + ': ' if group else ''}{LABEL_DISPLAY.get(label, label)}: "
                                 "identically zero at every matrix (k90 undefined)")
                    continue
                parts = axis.boxplot([values], positions=[position], widths=width * 0.8, patch_artist=True,
                                     showfliers=False)
                parts["boxes"][0].set(facecolor=colour, alpha=0.45, gid="k90_box")
                jitter = np.linspace(-width * 0.25, width * 0.25, values.size) if values.size > 1 else [0.0]
                axis.plot(position + np.asarray(jitter), values, linestyle="none", marker="o", markersize=2.5,
                          color=colour, alpha=0.8)
            annotations.append((f"{group}: " if group else "") + _k90_line(by_label))
        if reference is not None:
            part = reference[reference["panel"].astype(str) == SYMBOLS[quantity]]
            for series, rows in part.groupby("series", sort=True):
                colour = LABEL_COLOURS.get({"untrained": "lora_random"}.get(series, series), "black")
                axis.axhline(float(_numbers(rows["value"])[0]), color=colour, linestyle=":", linewidth=1.2,
                             label=f"{REFERENCE_LABEL}: {series} mean k90")
        for i, text in enumerate(notes):
            axis.text(0.02, 0.97 - 0.07 * i, text, transform=axis.transAxes, fontsize=7.5, va="top",
                      color="dimgrey")
        axis.set_xticks(range(n_groups), [configurations.label(k) if n_groups > 1 else _lora_text(configurations, k)
                                          for k in configurations.keys])
        axis.set_xlim(-0.6, n_groups - 0.4)
        axis.set_xlabel("LoRA configuration")
        axis.set_ylabel("k90 (singular values for 90 % energy)")
        axis.set_title(f"{heading}\nmean k90: " + "\n".join(annotations), fontsize=8.5)
        if notes:  # room above the boxes for the notes
            bottom, top = axis.get_ylim()
            axis.set_ylim(bottom, top + 0.12 * len(notes) * (top - bottom))
    handles = [Patch(facecolor=LABEL_COLOURS.get(label, "grey"), alpha=0.45, label=LABEL_DISPLAY.get(label, label))
               for label in labels]
    finish_axes(figure)
    figure_legend(figure, axes, handles)
    figure.suptitle(title_text("k90 of the LoRA activations and gradients, trained vs untrained (F4)",
                               configurations, "boxes over the adapted (block, module) matrices of each "
                               "matrix's mean k90", runs_text([k90])), fontsize=10)
    return figure


def _choose_module(table: pd.DataFrame, module: str | None, figure: str, what: str) -> str:
    modules = sorted(table["module"].dropna().unique(), key=lambda m: (MODULES.index(m) if m in MODULES else 99, m))
    if module is None:
        if not modules:
            raise InputError(f"figure {figure}: the {what} table has no modules")
        return PAPER_MODULE if PAPER_MODULE in modules else modules[0]
    if module not in modules:
        raise InputError(f"figure {figure}: module {module!r} is not in the {what} table (it has {modules})")
    return module


@styled
def top10_figure(spectra: pd.DataFrame, reference: pd.DataFrame | None = None, module: str | None = None):
    """F5: per block, the top-10 energy E(10) (share of the energy in the 10 largest singular
    values) of U, gU, V and gV (2 × 2 panels) for one adapted module (default v_proj, the paper's,
    if adapted), a line per label (trained, lora_random, lora_init) with its 95 % band and a line
    style per LoRA configuration. Reference panels (F5): ``U``, ``gU``, ``V``, ``gV``, series
    ``trained``/``untrained``; ``layer`` = block."""
    name = "top10 (F5)"
    require_columns(spectra, name, "aggregated spectra",
                    CONFIGURATION + ("block", "module", "quantity", "statistic") + SUMMARY)
    require_values(spectra, name, "aggregated spectra", "statistic", ["top10_energy"])
    top = spectra[spectra["statistic"] == "top10_energy"]
    module = _choose_module(top, module, name, "aggregated spectra")
    top = top[top["module"] == module]
    labelled, configurations = _spectra_groups(top, name)
    reference = reference_rows(reference, "F5", list(SYMBOLS.values()), name)
    styles = dict(zip(configurations.keys, ("-", "--", ":", "-.") * 3))
    plt = _pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True, layout="constrained")
    for axis, (quantity, heading) in zip(axes.ravel(), SPECTRA_PANELS):
        notes = []
        for key in configurations.keys:
            by_label = _label_rows(labelled[labelled["quantity"] == quantity], configurations, key)
            group = configurations.label(key) if len(configurations.keys) > 1 else ""
            for label, rows in by_label.items():
                if not np.isfinite(_numbers(rows["mean"])).any():
                    notes.append(f"{group + ': ' if group else ''}{LABEL_DISPLAY.get(label, label)}: identically zero")
                    continue
                draw_band(axis, rows["block"], rows, LABEL_COLOURS.get(label, "grey"),
                          LABEL_DISPLAY.get(label, label) + (f", {group}" if group else ""), linestyle=styles[key])
            rank = key[configurations.fields.index("rank")] if "rank" in configurations.fields else None
            if rank is not None and 0 < int(rank) <= 10 and quantity != "b_grad":
                prefix = f"{group + ': ' if group else ''}"
                notes.append(prefix + (f"V = U·Bᵀ has rank ≤ r = {int(rank)} ≤ 10: E(10) = 1 up to rounding"
                                       if quantity == "b_out" else
                                       f"r = {int(rank)} ≤ 10 columns: E(10) = 1 by definition"))
        overlay_reference(axis, reference, SYMBOLS[quantity])
        for i, text in enumerate(notes):
            axis.text(0.02, 0.04 + 0.07 * i, text, transform=axis.transAxes, fontsize=7.5, va="bottom",
                      color="dimgrey")
        axis.set_title(heading, fontsize=9)
        axis.set_ylabel("top-10 energy E(10)")
        axis.set_xlabel("encoder block")
        set_block_ticks(axis, top["block"])
    finish_axes(figure)
    figure_legend(figure, axes, [band_handle()])
    figure.suptitle(title_text("Top-10 energy per block, trained vs untrained (F5)", configurations,
                               f"module {module}", runs_text([top])), fontsize=10)
    return figure


# -- F6 and the layer heatmaps ---------------------------------------------------------------------

def _cka_view(paper_rows: pd.DataFrame, level: str | None, estimator: str | None, figure: str) -> tuple[str, str]:
    levels = set(paper_rows["level"])
    if level is None:
        level = next((lv for lv in ("flattened", "utterance", "frame") if lv in levels), None)
    if level not in levels:
        raise InputError(f"figure {figure}: level {level!r} has no rows of the paper's pairings "
                         f"(levels {sorted(levels)})")
    at_level = paper_rows[paper_rows["level"] == level]
    if estimator is None:
        estimator = "legacy" if level == "flattened" else "biased"  # the paper's estimator is the biased one
    if estimator not in set(at_level["estimator"]):
        raise InputError(f"figure {figure}: estimator {estimator!r} has no rows at level {level!r} "
                         f"(estimators {sorted(at_level['estimator'].unique())})")
    return level, estimator


@styled
def cka_figure(cka: pd.DataFrame, reference: pd.DataFrame | None = None, module: str | None = None,
               level: str | None = None, estimator: str | None = None, rbf_multiple: float = 1.0):
    """F6: per block, the paper's four CKA pairings (``paper_series``, each in its own kernel):
    forward (top: U trained ~ U untrained, linear; V trained ~ V untrained, RBF) and backward
    (bottom: gV ~ gU within the trained and within the untrained model, RBF), a column per LoRA
    configuration, each mean with its 95 % band and the permutation null's mean..p95 hatched.
    Defaults: module v_proj (if adapted), the ``flattened`` level with the ``legacy`` estimator
    when the table has it (a legacy capture), else ``utterance`` with the biased estimator, RBF
    bandwidth multiple 1. Reference panels (F6): ``forward``, ``backward``, series the
    paper_series names; ``layer`` = block."""
    name = "cka (F6)"
    require_columns(cka, name, "aggregated cka",
                    CONFIGURATION + ("block", "module", "level", "paper_series", "kernel", "rbf_multiple",
                                     "estimator", "null_mean_mean", "null_p95_mean") + SUMMARY)
    paper_kernels = {series: spec[2] for series, spec in PAPER_SERIES.items()}
    rows = cka[cka["paper_series"].isin(list(PAPER_SERIES))]
    rows = rows[rows["kernel"] == rows["paper_series"].map(paper_kernels)]
    if rows.empty:
        raise InputError(f"figure {name}: the aggregated cka table has no rows of the paper's pairings "
                         f"(paper_series {list(PAPER_SERIES)} in their kernels)")
    module = _choose_module(rows, module, name, "aggregated cka")
    rows = rows[rows["module"] == module]
    level, estimator = _cka_view(rows, level, estimator, name)
    rows = rows[(rows["level"] == level) & (rows["estimator"] == estimator)]
    rbf = rows["kernel"] == "rbf"
    if rbf.any() and level != "flattened":  # the flattened level's RBF has the original's γ = 1/D
        multiples = sorted(_numbers(rows.loc[rbf, "rbf_multiple"].unique()))
        close = np.isclose(_numbers(rows["rbf_multiple"]), rbf_multiple)
        if not close[rbf.to_numpy()].any():
            raise InputError(f"figure {name}: no RBF rows with rbf_multiple {rbf_multiple} (the table has {multiples})")
        rows = rows[~rbf.to_numpy() | close]
    configurations = Configurations([rows])
    reference = reference_rows(reference, "F6", [d for d, _ in CKA_DIRECTIONS], name)
    plt = _pyplot()
    n = len(configurations.keys)
    figure, axes = plt.subplots(2, n, figsize=(max(7.0, 5.6 * n), 8.5), squeeze=False, sharex=True,
                                layout="constrained")
    for column, (key, of_configuration) in enumerate(configurations.groups(rows)):
        for row, (direction, series_names) in enumerate(CKA_DIRECTIONS):
            axis = axes[row, column]
            missing = []
            for series in series_names:
                part = of_configuration[of_configuration["paper_series"] == series].sort_values("block")
                if part.empty or not np.isfinite(_numbers(part["mean"])).any():
                    missing.append(CKA_SERIES_LABELS[series] + (": undefined (NaN)" if len(part) else ": not in table"))
                    continue
                colour = CKA_SERIES_COLOURS[series]
                draw_band(axis, part["block"], part, colour, CKA_SERIES_LABELS[series])
                null = axis.fill_between(_numbers(part["block"]), _numbers(part["null_mean_mean"]),
                                         _numbers(part["null_p95_mean"]), facecolor="none", edgecolor=colour,
                                         hatch="////", linewidth=0, alpha=0.6)
                null.set_gid("null_band")
            for i, text in enumerate(missing):
                axis.text(0.02, 0.04 + 0.07 * i, text, transform=axis.transAxes, fontsize=7.5, color="dimgrey")
            overlay_reference(axis, reference, direction)
            axis.axhline(0, color="black", linewidth=0.5)
            label = configurations.label(key) if n > 1 else ""
            axis.set_title(f"{direction} ({'activations' if direction == 'forward' else 'gradients'})"
                           + (f" — {label}" if label else ""), fontsize=9)
            axis.set_ylabel("CKA" if column == 0 else "")
        axes[-1, column].set_xlabel("encoder block")
        set_block_ticks(axes[-1, column], rows["block"])
    from matplotlib.patches import Patch

    null_handle = Patch(facecolor="none", edgecolor="grey", hatch="////", label="permutation null, mean..p95")
    finish_axes(figure)
    figure_legend(figure, axes, [band_handle(), null_handle])
    view = f"module {module}, {level} level, {estimator} estimator" + (
        f", RBF σ = {rbf_multiple:g} × median distance" if rbf.any() and level != "flattened" else "")
    figure.suptitle(title_text("CKA of the paper's four pairings, forward and backward (F6)", configurations, view,
                               runs_text([rows])), fontsize=10)
    return figure


def _layer_view(table: pd.DataFrame, kernel: str, estimator: str, rbf_multiple: float, figure: str,
                what: str) -> pd.DataFrame:
    rows = table[(table["kernel"] == kernel) & (table["estimator"] == estimator)]
    if kernel == "rbf":
        rows = rows[np.isclose(_numbers(rows["rbf_multiple"]), rbf_multiple)]
    if rows.empty:
        views = table[["kernel", "estimator"]].drop_duplicates().itertuples(index=False)
        raise InputError(f"figure {figure}: the {what} table has no rows with kernel {kernel!r}, estimator "
                         f"{estimator!r}" + (f", rbf_multiple {rbf_multiple}" if kernel == "rbf" else "")
                         + f" (it has {sorted(map(tuple, views))})")
    return rows


@styled
def cka_heatmap_figure(cka_lora_frozen: pd.DataFrame | None, cka_seeds: pd.DataFrame | None,
                       kernel: str = "linear", estimator: str = "debiased", rbf_multiple: float = 1.0):
    """New: layer × layer mean CKA of the pooled residual stream, one heatmap per configuration,
    LoRA vs frozen and seed vs seed (the noise floor between two trainings) side by side; each
    title gives the permutation floor, the mean over the cells of the null's mean p95. One
    kernel/estimator view (default linear, debiased). A colour scale shared by all panels."""
    name = "cka_heatmap (new)"
    columns = CONFIGURATION + ("layer_a", "layer_b", "kernel", "rbf_multiple", "estimator", "null_p95_mean") + SUMMARY
    if cka_lora_frozen is None and cka_seeds is None:
        raise InputError(f"figure {name}: needs the cka_lora_frozen or the cka_seeds table")
    panels = []
    for pairing, table in (("lora_vs_frozen", cka_lora_frozen), ("seed_vs_seed", cka_seeds)):
        if table is None:
            continue
        what = f"aggregated cka_{'lora_frozen' if pairing == 'lora_vs_frozen' else 'seeds'}"
        require_columns(table, name, what, columns)
        rows = _layer_view(table, kernel, estimator, rbf_multiple, name, what)
        panels.append((pairing, rows))
    configurations = Configurations([rows for _, rows in panels])
    cells = [(pairing, key, rows) for pairing, table in panels for key, rows in configurations.groups(table)]
    means = np.concatenate([_numbers(rows["mean"]) for _, _, rows in cells])
    finite = means[np.isfinite(means)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if low == high:
        low, high = low - 0.5, high + 0.5
    import seaborn as sns

    plt = _pyplot()
    # A row per pairing, a column per configuration: a LoRA configuration's LoRA-vs-frozen map sits
    # above its seed-vs-seed map (the variation between two trainings), so the two compare directly.
    pairings = [pairing for pairing, _ in panels]
    keys = [key for key in configurations.keys if any(k == key for _, k, _ in cells)]
    figure, axes = plt.subplots(len(pairings), len(keys), figsize=(4.4 * len(keys) + 1.2, 4.4 * len(pairings) + 1.2),
                                squeeze=False, layout="constrained")
    drawn = []
    for axis, (pairing, key) in zip(axes.ravel(), itertools.product(pairings, keys)):
        match = [rows for p, k, rows in cells if p == pairing and k == key]
        if not match:
            axis.set_visible(False)  # e.g. no LoRA-vs-frozen map of the frozen configuration
            continue
        rows = match[0]
        grid = rows.pivot_table(index="layer_a", columns="layer_b", values="mean", aggfunc="first", dropna=False)
        annotate = grid.shape[0] <= 13 and grid.shape[1] <= 13
        sns.heatmap(grid, ax=axis, vmin=low, vmax=high, cmap="viridis", annot=annotate, fmt=".2f",
                    annot_kws={"fontsize": 6}, cbar=False, square=grid.shape[0] == grid.shape[1])
        axis.invert_yaxis()  # layer 0 at the bottom, as a layer axis reads
        floor = float(np.nanmean(_numbers(rows["null_p95_mean"]))) if np.isfinite(
            _numbers(rows["null_p95_mean"])).any() else np.nan
        floor_text = "no permutation null" if np.isnan(floor) else f"floor (mean null p95) {floor:.3f}"
        axis.set_title(f"{CKA_LAYER_PAIRINGS[pairing]}: {configurations.label(key)}\n{floor_text}\n"
                       f"{count_text([rows])}", fontsize=8.5)
        axis.set_xlabel("layer, other run (" + ("frozen" if pairing == "lora_vs_frozen" else "other seed") + ")")
        axis.set_ylabel("layer, this run")
        drawn.append(axis)
    figure.colorbar(drawn[0].collections[0], ax=drawn, shrink=0.8, label="mean CKA (one scale for all panels)")
    view = f"{kernel}" + (f" σ = {rbf_multiple:g} × median" if kernel == "rbf" else "") + f", {estimator}"
    figure.suptitle(title_text("Layer × layer CKA of the pooled residual stream", configurations, view,
                               runs_text([rows for _, _, rows in cells])), fontsize=10)
    return figure


# -- probes and erasure ----------------------------------------------------------------------------

@styled
def probe_figure(probes: pd.DataFrame, probes_paired: pd.DataFrame | None = None, n_classes: int | None = None):
    """New: linear-probe test UAR per layer (0 = embedding output), a line per configuration with
    its 95 % band and the run's own head (a diamond at the last layer, with its interval); chance
    (1/classes) when ``n_classes`` is given. Below, when the paired table is given, LoRA − frozen
    probe UAR per layer, starred where the Holm-corrected paired t p < 0.05."""
    name = "probes (new)"
    require_columns(probes, name, "aggregated probes", CONFIGURATION + ("readout", "layer", "statistic") + SUMMARY)
    require_values(probes, name, "aggregated probes", "readout", ["probe"])
    require_values(probes, name, "aggregated probes", "statistic", ["uar"])
    uar = probes[probes["statistic"] == "uar"]
    if probes_paired is not None:
        require_columns(probes_paired, name, "paired probes",
                        PAIRED_CONFIGURATION + ("readout", "layer", "statistic") + PAIRED_SUMMARY)
        differences = probes_paired[(probes_paired["readout"] == "probe") & (probes_paired["statistic"] == "uar")]
        if differences.empty:
            raise InputError(f"figure {name}: the paired probes table has no probe rows with statistic 'uar'")
        differences = differences.assign(method="lora")
    configurations = Configurations([uar] + ([differences] if probes_paired is not None else []))
    plt = _pyplot()
    panels = 2 if probes_paired is not None else 1
    figure, axes = plt.subplots(panels, 1, figsize=(9, 4.2 * panels + 1), squeeze=False, sharex=True,
                                layout="constrained")
    axis = axes[0, 0]
    for index, (key, rows) in enumerate(configurations.groups(uar)):
        colour = configurations.colour(key)
        probe = rows[rows["readout"] == "probe"]
        draw_band(axis, probe["layer"], probe, colour, configurations.label(key), zorder=configurations.zorder(key))
        head = rows[rows["readout"] == "head"]
        if len(head):
            mean, low, high = (_numbers(head[c])[:1] for c in ("mean", "ci_low", "ci_high"))
            finite = np.isfinite(low).all() and np.isfinite(high).all()
            errors = np.vstack([mean - low, high - mean]) if finite else None
            axis.errorbar(_numbers(head["layer"])[:1] + 0.12 + 0.07 * index, mean, yerr=errors, fmt="D", color=colour,
                          markerfacecolor="white", markersize=6, capsize=2, label="_head")
    if n_classes:
        axis.axhline(1 / n_classes, color="grey", linestyle=":", linewidth=1, label=f"chance (1/{n_classes})")
    axis.set_ylabel("test UAR")
    axis.set_title("linear probe per layer; ◇ the run's own head", fontsize=9)
    if probes_paired is not None:
        axis = axes[1, 0]
        for key, rows in configurations.groups(differences):
            draw_band(axis, rows["layer"], rows, configurations.colour(key),
                      configurations.label(key) + " − frozen", value="mean_difference")
        centres = {key: (rows.sort_values("layer"), _numbers(rows.sort_values("layer")["layer"]))
                   for key, rows in configurations.groups(differences)}
        holm_stars(axis, centres, {key: configurations.colour(key) for key in centres}, bars=False)
        no_test_note(axis, differences)
        axis.axhline(0, color="black", linewidth=0.6)
        axis.set_ylabel("Δ probe UAR, LoRA − frozen")
        axis.set_title("LoRA − frozen (paired by seed and fold)", fontsize=9)
    axes[-1, 0].set_xlabel("layer (0 = embedding output)")
    set_block_ticks(axes[-1, 0], uar["layer"])
    from matplotlib.lines import Line2D

    head_handle = Line2D([], [], linestyle="none", marker="D", markerfacecolor="white", color="black",
                         label="the run's head (test UAR)")
    finish_axes(figure)
    figure_legend(figure, axes, [band_handle(), head_handle] + ([star_handle()] if probes_paired is not None else []))
    figure.suptitle(title_text("Linear probes on the residual stream", configurations, runs_text([uar]),
                               paired_text(differences) if probes_paired is not None else ""), fontsize=10)
    return figure


@styled
def erasure_figure(erasure: pd.DataFrame, statistic: str = "delta_uar"):
    """New: the effect of erasing, per layer, for each erasure condition of erasure.py (a panel
    each): a block skipped, the first k blocks skipped, the LoRA delta removed at one block and
    from one block on; ``statistic`` (default ΔUAR = baseline − erased, positive when the erasure
    hurts) per configuration with its 95 % band."""
    name = "erasure (new)"
    require_columns(erasure, name, "aggregated erasure", CONFIGURATION + ("condition", "layer", "statistic") + SUMMARY)
    require_values(erasure, name, "aggregated erasure", "statistic", [statistic])
    rows = erasure[(erasure["statistic"] == statistic) & (erasure["condition"] != "baseline")]
    conditions = [c for c in ERASURE_CONDITIONS if c[0] in set(rows["condition"])]
    if not conditions:
        raise InputError(f"figure {name}: the aggregated erasure table has no rows with condition "
                         f"{[c for c, _, _ in ERASURE_CONDITIONS]}")
    configurations = Configurations([rows])
    plt = _pyplot()
    columns_count = 2 if len(conditions) > 1 else 1
    rows_count = int(np.ceil(len(conditions) / columns_count))
    figure, axes = plt.subplots(rows_count, columns_count, figsize=(6.2 * columns_count, 4.0 * rows_count + 1.2),
                                squeeze=False, layout="constrained")
    for axis in axes.ravel()[len(conditions):]:
        axis.set_visible(False)
    for axis, (condition, title, xlabel) in zip(axes.ravel(), conditions):
        part = rows[rows["condition"] == condition]
        for key, of_key in configurations.groups(part):
            draw_band(axis, of_key["layer"], of_key, configurations.colour(key), configurations.label(key),
                      zorder=configurations.zorder(key))
        axis.axhline(0, color="black", linewidth=0.6)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ERASURE_LABELS.get(statistic, statistic))
        set_block_ticks(axis, part["layer"])
    finish_axes(figure)
    figure_legend(figure, axes, [band_handle()])
    heading = f"Layer erasure and LoRA-delta ablation: {ERASURE_LABELS.get(statistic, statistic)}"
    figure.suptitle(title_text(heading, configurations,
                               runs_text([rows])), fontsize=10)
    return figure


# -- weight spectra and subspaces ------------------------------------------------------------------

@styled
def weight_spectra_figure(weight_spectra: pd.DataFrame, methods=None):
    """New: the singular values σ_k of the LoRA update ΔW = s·B·A against k, a row per
    configuration (method, rank), a column per adapted module, a line per block (colour from
    early to late) with its 95 % band; a log scale when every value shown is positive and they
    span more than a decade. Configurations whose ΔW is zero everywhere (lora_init: B = 0) get no
    row: the title lists them."""
    name = "weight_spectra (new)"
    require_columns(weight_spectra, name, "aggregated weight_spectra",
                    CONFIGURATION + ("block", "module", "statistic", "k") + SUMMARY)
    require_values(weight_spectra, name, "aggregated weight_spectra", "statistic", ["sigma"])
    sigma = weight_spectra[weight_spectra["statistic"] == "sigma"]
    if methods:
        sigma = sigma[sigma["method"].isin(list(methods))]
        if sigma.empty:
            raise InputError(f"figure {name}: no sigma rows of methods {list(methods)}")
    configurations = Configurations([sigma])
    modules = [m for m in MODULES if m in set(sigma["module"])] or sorted(sigma["module"].unique())
    blocks = sorted(int(b) for b in sigma["block"].unique())

    def nonzero(rows: pd.DataFrame) -> bool:
        means = _numbers(rows["mean"])
        return bool((np.isfinite(means) & (means != 0)).any())

    groups = list(configurations.groups(sigma))
    shown = [(key, rows) for key, rows in groups if nonzero(rows)]
    zero = [configurations.label(key) for key, rows in groups if not nonzero(rows)]
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(blocks), 1)))
    figure, axes = plt.subplots(max(len(shown), 1), len(modules) if shown else 1,
                                figsize=(4.8 * len(modules) + 1, 3.0 * max(len(shown), 1) + 1.6), squeeze=False,
                                layout="constrained")
    if not shown:
        note(axes[0, 0], "ΔW = 0 at every block of every configuration (B = 0)")
    for row, (key, of_key) in enumerate(shown):
        for column, module in enumerate(modules):
            axis = axes[row, column]
            part = of_key[of_key["module"] == module]
            if not len(part) or not nonzero(part):
                note(axis, "ΔW = 0 at every block (B = 0)" if len(part) else "module not adapted")
            else:
                for colour, block in zip(colours, blocks):
                    rows = part[part["block"] == block]
                    if len(rows):
                        draw_band(axis, rows["k"], rows, colour, f"block {block}", marker=".")
                values = np.concatenate([_numbers(part[c]) for c in ("mean", "ci_low", "ci_high")])
                values = values[np.isfinite(values)]
                # Log only where it helps and hides nothing: all positive, more than a decade apart.
                if values.size and (values > 0).all() and values.max() > 10 * values.min():
                    axis.set_yscale("log")
            axis.set_title(f"{configurations.label(key)}: {module}", fontsize=9)
            axis.set_xlabel("k (singular values, largest first)")
            axis.set_ylabel("σ_k of ΔW" if column == 0 else "")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    finish_axes(figure)
    figure_legend(figure, axes, [band_handle()])
    zero_text = f"ΔW = 0 at every block (B = 0), not drawn: {'; '.join(zero)}" if zero else ""
    figure.suptitle(title_text("Singular values of the LoRA updates ΔW", configurations, zero_text,
                               runs_text([sigma])), fontsize=10)
    return figure


@styled
def subspace_figure(subspaces: pd.DataFrame):
    """New: principal-angle similarity of the column spaces of ΔW between runs that differ in
    seed, rank or fold (``differs``, a colour each), per block, a column per module: the mean cos²
    of the principal angles with its 95 % band and the chance level of random subspaces of the
    same dimensions (dashed); the largest cosine too when the table has a ``measure`` column."""
    name = "subspaces (new)"
    fields = tuple(f for f in CONFIGURATION if f != "rank")
    require_columns(subspaces, name, "aggregated subspaces",
                    fields + ("differs", "block", "module", "chance_mean") + SUMMARY)
    if "measure" in subspaces.columns:
        measures = [m for m in SUBSPACE_MEASURES if m in set(subspaces["measure"])]
        if "mean_cos2" not in measures:
            raise InputError(f"figure {name}: the aggregated subspaces table has no rows with measure 'mean_cos2'")
    else:
        measures = ["mean_cos2"]
    configurations = Configurations([subspaces], fields=CONFIGURATION)
    modules = [m for m in MODULES if m in set(subspaces["module"])] or sorted(subspaces["module"].unique())
    differs = sorted(subspaces["differs"].dropna().unique())
    import seaborn as sns

    palette = dict(zip(differs, sns.color_palette("dark", max(len(differs), 1))))
    styles = dict(zip(configurations.keys, ("-", "--", ":", "-.") * 3))
    plt = _pyplot()
    figure, axes = plt.subplots(len(measures), len(modules), figsize=(5.6 * len(modules), 3.8 * len(measures) + 1.2),
                                squeeze=False, sharex=True, layout="constrained")
    for row, measure in enumerate(measures):
        of_measure = subspaces[subspaces["measure"] == measure] if "measure" in subspaces.columns else subspaces
        for column, module in enumerate(modules):
            axis = axes[row, column]
            part = of_measure[of_measure["module"] == module]
            for key, of_key in configurations.groups(part):
                suffix = f", {configurations.label(key)}" if len(configurations.keys) > 1 else ""
                for kind, rows in of_key.groupby("differs", sort=True):
                    if not np.isfinite(_numbers(rows["mean"])).any():
                        note(axis, f"{kind}{suffix}: undefined (ΔW = 0)")
                        continue
                    draw_band(axis, rows["block"], rows, palette[kind], f"differ in {kind}{suffix}",
                              linestyle=styles[key])
                    if measure == "mean_cos2":
                        rows = rows.sort_values("block")
                        axis.plot(_numbers(rows["block"]), _numbers(rows["chance_mean"]), color=palette[kind],
                                  linestyle=(0, (2, 2)), linewidth=1, label=f"chance, {kind}{suffix}", gid="chance")
            axis.set_title(f"{module}: {SUBSPACE_MEASURES[measure]}", fontsize=9)
            axis.set_ylabel(SUBSPACE_MEASURES[measure] if column == 0 else "")
            axis.set_xlabel("encoder block")
            set_block_ticks(axis, subspaces["block"])
    finish_axes(figure)
    figure_legend(figure, axes, [band_handle("95 % interval across run pairs")])
    figure.suptitle(title_text("Principal angles between the ΔW column spaces of two runs", configurations,
                               runs_text([subspaces], noun="run pair")), fontsize=10)
    return figure


# -- registry and entry point ----------------------------------------------------------------------

@dataclass(frozen=True)
class FigureSpec:
    """A figure: its function, the aggregated tables it takes (in order, positional), the paired
    tables it takes next (required, then optional), what it reproduces (F1..F6 or "new") and its
    caption file."""

    function: Callable
    tables: tuple[str, ...]
    caption: Path
    paired: tuple[str, ...] = ()
    optional_paired: tuple[str, ...] = ()
    paper: str = "new"


def _spec(name: str, function: Callable, tables: tuple[str, ...], **kwargs) -> FigureSpec:
    return FigureSpec(function, tables, CAPTIONS / f"{name}.rst", **kwargs)


FIGURES: dict[str, FigureSpec] = {
    "contribution": _spec("contribution", contribution_figure, ("contribution",), paired=("contribution",),
                          paper="F1"),
    "logit_lens": _spec("logit_lens", logit_lens_figure, ("logit_lens",), paper="F2"),
    "embedding_quality": _spec("embedding_quality", embedding_quality_figure, ("embeddings",), paper="F3"),
    "energy": _spec("energy", energy_figure, ("spectra",), paper="F4"),
    "top10": _spec("top10", top10_figure, ("spectra",), paper="F5"),
    "cka": _spec("cka", cka_figure, ("cka",), paper="F6"),
    "probes": _spec("probes", probe_figure, ("probes",), optional_paired=("probes",)),
    "lens_comparison": _spec("lens_comparison", lens_comparison_figure, ("logit_lens",)),
    "erasure": _spec("erasure", erasure_figure, ("erasure",)),
    "weight_spectra": _spec("weight_spectra", weight_spectra_figure, ("weight_spectra",)),
    "subspaces": _spec("subspaces", subspace_figure, ("subspaces",)),
    "cka_heatmap": _spec("cka_heatmap", cka_heatmap_figure, ("cka_lora_frozen", "cka_seeds")),
}


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A table (.parquet or .csv) or an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: {path} does not exist")
    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as error:  # pyarrow and pandas raise several types for an unreadable file
        raise InputError(f"{what}: {path} is not a readable {'CSV' if path.suffix.lower() == '.csv' else 'Parquet'} "
                         f"table ({error})") from error


def _option_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word such as linear or v_proj


def build_figure(name: str, tables: dict[str, pd.DataFrame], paired: dict[str, pd.DataFrame] | None = None,
                 reference: pd.DataFrame | None = None, options: dict | None = None):
    """Figure ``name`` of the registry from its tables (InputError when one is missing or extra)."""
    if name not in FIGURES:
        raise InputError(f"unknown figure {name!r}; known: {sorted(FIGURES)}")
    spec, paired, options = FIGURES[name], paired or {}, options or {}
    missing = [t for t in spec.tables if t not in tables]
    missing += [f"paired {t}" for t in spec.paired if t not in paired]
    if missing:
        raise InputError(f"figure {name}: missing table(s) {missing}; it takes --table {list(spec.tables)}"
                         + (f" and --paired {list(spec.paired + spec.optional_paired)}" if spec.paired
                            or spec.optional_paired else ""))
    extra = sorted(set(tables) - set(spec.tables)) + [f"paired {t}" for t in sorted(
        set(paired) - set(spec.paired + spec.optional_paired))]
    if extra:
        raise InputError(f"figure {name}: does not take table(s) {extra}")
    parameters = inspect.signature(spec.function).parameters
    arguments = [tables[t] for t in spec.tables] + [paired[t] for t in spec.paired]
    arguments += [paired.get(t) for t in spec.optional_paired]
    keywords = dict(options)
    if reference is not None:
        if spec.paper == "new":
            raise InputError(f"figure {name} has no counterpart in the paper: no --reference")
        keywords["reference"] = reference
    taken = list(parameters)[len(arguments):]
    unknown = sorted(set(keywords) - set(taken))
    if unknown:
        options_taken = [p for p in taken if p != "reference"]
        raise InputError(f"figure {name}: unknown option(s) {unknown}; it takes {options_taken}")
    return spec.function(*arguments, **keywords)


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import save_figure

    parser = entry_parser("workflow_scripts.report.figures", __doc__, settings=False)
    parser.add_argument("--figure", required=True, choices=sorted(FIGURES), help="which figure")
    parser.add_argument("--table", action="append", default=[], metavar="ANALYSIS=PATH",
                        help="an aggregated table (.parquet or .csv), repeatable")
    parser.add_argument("--paired", action="append", default=[], metavar="ANALYSIS=PATH",
                        help="a paired LoRA − frozen table, repeatable")
    parser.add_argument("--reference", help="the paper's values (CSV: figure, panel, series, layer, value)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a keyword of the figure's function (JSON value or a bare word), repeatable")
    parser.add_argument("--out", required=True, help="FIG.png; FIG.svg is written beside it")
    args = parser.parse_args(argv)
    if Path(args.out).suffix.lower() != ".png":
        raise InputError(f"--out {args.out}: must end in .png (the SVG goes beside it)")
    tables = {k: read_table(v, f"--table {k}")
              for k, v in parse_assignments(args.table, "--table", "ANALYSIS=PATH").items()}
    paired = {k: read_table(v, f"--paired {k}")
              for k, v in parse_assignments(args.paired, "--paired", "ANALYSIS=PATH").items()}
    reference = read_table(args.reference, "--reference") if args.reference else None
    options = {k: _option_value(v) for k, v in parse_assignments(args.option, "--option").items()}
    figure = build_figure(args.figure, tables, paired, reference, options)  # fails before anything is written
    save_figure(figure, args.out)
    log.info("wrote %s and %s", args.out, Path(args.out).with_suffix(".svg"))


if __name__ == "__main__":
    run_main(main)
