"""The readout families' figures: F1 (``contribution``), F2 (``logit_lens``), the lens
comparison, the linear probes and the erasure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.report.figures.style import (
    _pyplot,
    band_handle,
    draw_band,
    figure_legend,
    finish_axes,
    grouped_bars,
    holm_stars,
    no_test_note,
    overlay_reference,
    set_block_ticks,
    star_handle,
    styled,
)
from workflow_scripts.report.figures.reference import figure_rows
from workflow_scripts.report.figures.tables import (
    CONFIGURATION,
    PAIRED_CONFIGURATION,
    PAIRED_SUMMARY,
    SUMMARY,
    Configurations,
    _numbers,
    paired_text,
    require_columns,
    require_values,
    runs_text,
    title_text,
)


# Statistic names of the analyses (see their modules).
CONTRIBUTION_OUTPUTS = (("attn", "attention"), ("mlp", "MLP"), ("layer", "attention + MLP"))
CONTRIBUTION_KINDS = (("ratio", "‖output‖ / ‖residual input‖"), ("cos", "cosine with residual input"))
LENSES = ("raw", "normed")
LENS_STATISTICS = {"kl_final_layer": "KL(final ‖ layer), nats", "agreement": "agreement with final decision",
                   "uar": "lens UAR (true labels)"}
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


# -- F1 --------------------------------------------------------------------------------------------

@styled
def contribution_figure(contribution: pd.DataFrame, paired: pd.DataFrame, reference: pd.DataFrame | None = None):
    """F1: per block, the mean relative norm ‖output‖/‖residual input‖ and the mean cosine with the
    residual input of the attention output, the MLP output and both (columns); for each, LoRA and
    frozen configurations side by side (bars, the interval or range as error bars) and below them LoRA −
    frozen from the paired table, starred where the Holm-corrected paired t p < 0.05.
    The paper's values (F1, :mod:`.reference`): panels the six statistics (``attn_ratio`` ...
    ``layer_cos``), series ``lora``/``frozen``, and the same + ``_difference``, series
    ``mean_difference``; markers at their block."""
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
    reference = figure_rows(reference, "F1", name)
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
    ``methods`` with its band (interval or range); the raw lens (the paper's) and the normed lens as columns.
    The paper's values (F2, :mod:`.reference`; drawn on the raw lens): panels ``kl_final_layer``,
    ``agreement``, series ``lora``/``frozen``; the paper's layer l is the output of block l, our
    layer l + 1."""
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
    reference = figure_rows(reference, "F2", name)
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
    lens's own UAR (columns), each lens a line with its band (interval or range)."""
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


# -- probes and erasure ----------------------------------------------------------------------------

@styled
def probe_figure(probes: pd.DataFrame, probes_paired: pd.DataFrame | None = None, n_classes: int | None = None):
    """New: linear-probe test UAR per layer (0 = embedding output), a line per configuration with
    its band (interval or range) and the run's own head (a diamond at the last layer, with its interval); chance
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
    hurts) per configuration with its band (interval or range)."""
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

