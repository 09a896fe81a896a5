"""The spectra families' figures: F4 (``energy``, k90 of U, gU, V, gV), F5 (``top10``, top-10
energy per block), both trained vs untrained, and ``weight_spectra`` (singular values of ΔW)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.figure_style import COLOURS as LABEL_COLOURS
from workflow_scripts.figure_style import DISPLAY as LABEL_DISPLAY
from workflow_scripts.figure_style import MODULES
from workflow_scripts.figure_style import PANELS as SPECTRA_PANELS
from workflow_scripts.figure_style import REFERENCES as UNTRAINED_LABELS
from workflow_scripts.figure_style import TRAINED, run_label
from workflow_scripts.report.figures.reference import figure_rows
from workflow_scripts.report.figures.style import (
    BAND_ALPHA,
    _pyplot,
    band_handle,
    draw_band,
    figure_legend,
    finish_axes,
    note,
    reference_label,
    set_block_ticks,
    styled,
)
from workflow_scripts.report.figures.tables import (
    CONFIGURATION,
    SUMMARY,
    Configurations,
    _choose_module,
    _field_text,
    _numbers,
    require_columns,
    require_values,
    runs_text,
    title_text,
)


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


def _k90_reference(axis, rows: pd.DataFrame, labels: list, n_groups: int, width: float) -> str:
    """The paper's mean k90 of a panel as a point per label beside each configuration's box of
    that label (at the configuration's centre where the table has no such label); returns its
    ratio untrained / trained as text ("" if none): a ratio is no k90, so it gets no point."""
    for series, of_series in rows[rows["statistic"] == "mean_k90"].groupby("series", sort=True):
        column = labels.index(series) if series in labels else None
        positions = [g if column is None else g - 0.4 + width * (column + 0.5) for g in range(n_groups)]
        axis.plot(positions, np.repeat(_numbers(of_series["value"])[:1], n_groups), linestyle="none", marker="X",
                  markersize=9, color=LABEL_COLOURS.get(series, "black"), markeredgecolor="black",
                  markeredgewidth=0.8, label=reference_label(series, "mean k90"), gid="reference", zorder=6)
    ratios = rows[rows["statistic"] == "mean_k90_ratio"]
    return "; ".join(f"paper: {LABEL_DISPLAY.get(series, series)} / trained mean k90 = {value:g}×"
                     for series, value in zip(ratios["series"], _numbers(ratios["value"])))


@styled
def energy_figure(spectra: pd.DataFrame, reference: pd.DataFrame | None = None, legacy_svd_panel_bug: bool = False):
    """F4: for U, gU, V and gV (2 × 2 panels), box plots of k90 (the number of singular values
    holding 90 % of the energy) over the adapted (block, module) matrices -- each matrix's k90
    averaged over runs -- for the trained LoRA and its untrained references (lora_random, the
    paper's "untrained"; lora_init where the table has it), per LoRA configuration; each title
    gives the mean k90 "trained / untrained (ratio)". A reference whose every matrix is all zero
    (lora_init's V and gU: B = 0) has no k90 and is said so.
    The paper's values (F4, :mod:`.reference`): panels the quantities (``a_out`` ...), its mean
    k90 of ``trained`` and ``lora_random`` as a point beside each configuration's box of that
    label, and its ratio untrained / trained as text in the panel.
    ``legacy_svd_panel_bug`` (``analyses.spectra.legacy_svd_panel_bug``): the B-gradient panel
    shows the A-gradient data, as the original's plotting call did (its title says so)."""
    name = "energy (F4)"
    require_columns(spectra, name, "aggregated spectra",
                    CONFIGURATION + ("block", "module", "quantity", "statistic") + SUMMARY)
    require_values(spectra, name, "aggregated spectra", "statistic", ["k90"])
    k90 = spectra[spectra["statistic"] == "k90"]
    require_values(k90, name, "aggregated spectra (k90)", "quantity", [q for q, _ in SPECTRA_PANELS])
    labelled, configurations = _spectra_groups(k90, name)
    reference = figure_rows(reference, "F4", name)
    labels = [label for label in (TRAINED, *UNTRAINED_LABELS) if (labelled["label"] == label).any()]
    width = 0.8 / len(labels)
    plt = _pyplot()
    n_groups = len(configurations.keys)
    figure, axes = plt.subplots(2, 2, figsize=(max(10.0, 3.2 * n_groups * 2), 9.5), layout="constrained")
    from matplotlib.patches import Patch

    for axis, (quantity, heading) in zip(axes.ravel(), SPECTRA_PANELS):
        annotations, notes = [], []
        shown = quantity
        if quantity == "b_grad" and legacy_svd_panel_bug:
            shown = "a_grad"
            heading = f"{heading}, legacy_svd_panel_bug: the A-gradient (gU) data re-plotted, as the original"
        for g, key in enumerate(configurations.keys):
            by_label = _label_rows(labelled[labelled["quantity"] == shown], configurations, key)
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
        ratio = "" if reference is None else _k90_reference(axis, reference[reference["panel"] == quantity],
                                                            labels, n_groups, width)
        for i, text in enumerate(notes):
            axis.text(0.02, 0.97 - 0.07 * i, text, transform=axis.transAxes, fontsize=7.5, va="top",
                      color="dimgrey")
        if ratio:  # the paper's ratio below the notes, in black: a value, not a remark about ours
            axis.text(0.02, 0.97 - 0.07 * len(notes), ratio, transform=axis.transAxes, fontsize=7.5, va="top",
                      gid="reference_ratio")
        lines = len(notes) + bool(ratio)
        axis.set_xticks(range(n_groups), [configurations.label(k) if n_groups > 1 else _lora_text(configurations, k)
                                          for k in configurations.keys])
        axis.set_xlim(-0.6, n_groups - 0.4)
        axis.set_xlabel("LoRA configuration")
        axis.set_ylabel("k90 (singular values for 90 % energy)")
        axis.set_title(f"{heading}\nmean k90: " + "\n".join(annotations), fontsize=8.5)
        if lines:  # room above the boxes for the notes and the paper's ratio
            bottom, top = axis.get_ylim()
            axis.set_ylim(bottom, top + 0.12 * lines * (top - bottom))
    handles = [Patch(facecolor=LABEL_COLOURS.get(label, "grey"), alpha=0.45, label=LABEL_DISPLAY.get(label, label))
               for label in labels]
    finish_axes(figure)
    figure_legend(figure, axes, handles)
    figure.suptitle(title_text("k90 of the LoRA activations and gradients, trained vs untrained (F4)",
                               configurations, "boxes over the adapted (block, module) matrices of each "
                               "matrix's mean k90", runs_text([k90])), fontsize=10)
    return figure


def _range_reference(axis, rows: pd.DataFrame, blocks: np.ndarray) -> None:
    """The paper's range (min..max over its layers) of each label as a hatched band in the label's
    colour across the blocks shown: the paper gives the span of its curve, not a value per layer."""
    x = [np.nanmin(blocks), np.nanmax(blocks)]
    for series, of_series in rows.groupby("series", sort=True):
        bounds = dict(zip(of_series["statistic"], _numbers(of_series["value"])))
        colour = LABEL_COLOURS.get(series, "black")
        band = axis.fill_between(x, bounds["min"], bounds["max"], facecolor=colour, alpha=BAND_ALPHA / 2,
                                 edgecolor=colour, hatch="xx", linewidth=0.8, zorder=1.5,
                                 label=reference_label(series, "range over layers"))
        band.set_gid("reference_band")


@styled
def top10_figure(spectra: pd.DataFrame, reference: pd.DataFrame | None = None, module: str | None = None):
    """F5: per block, the top-10 energy E(10) (share of the energy in the 10 largest singular
    values) of U, gU, V and gV (2 × 2 panels) for one adapted module (default v_proj, the paper's,
    if adapted), a line per label (trained, lora_random, lora_init) with its band (interval or range) and a line
    style per LoRA configuration. The paper's values (F5, :mod:`.reference`): panels the
    quantities (``a_out`` ...), per label (``trained``, ``lora_random``) the range over layers its
    curve spans (``min``..``max``), drawn as a hatched band across the blocks."""
    name = "top10 (F5)"
    require_columns(spectra, name, "aggregated spectra",
                    CONFIGURATION + ("block", "module", "quantity", "statistic") + SUMMARY)
    require_values(spectra, name, "aggregated spectra", "statistic", ["top10_energy"])
    top = spectra[spectra["statistic"] == "top10_energy"]
    module = _choose_module(top, module, name, "aggregated spectra")
    top = top[top["module"] == module]
    labelled, configurations = _spectra_groups(top, name)
    reference = figure_rows(reference, "F5", name)
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
        if reference is not None:
            _range_reference(axis, reference[reference["panel"] == quantity], _numbers(top["block"]))
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


# -- weight spectra ---------------------------------------------------------------------------------

@styled
def weight_spectra_figure(weight_spectra: pd.DataFrame, methods=None):
    """New: the singular values σ_k of the LoRA update ΔW = s·B·A against k, a row per
    configuration (method, rank), a column per adapted module, a line per block (colour from
    early to late) with its band (interval or range); a log scale when every value shown is positive and they
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
