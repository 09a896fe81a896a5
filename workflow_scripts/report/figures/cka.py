"""The CKA families' figures: F6 (``cka``, the paper's four pairings per block, forward and
backward, with the permutation null) and ``cka_heatmap`` (layer × layer CKA, LoRA vs frozen and
seed vs seed)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from workflow_scripts.analyses.cka.pairings import PAPER_SERIES
from workflow_scripts.errors import InputError
from workflow_scripts.figure_style import COLOURS as LABEL_COLOURS
from workflow_scripts.figure_style import TRAINED
from workflow_scripts.report.figures.style import (
    _pyplot,
    band_handle,
    draw_band,
    figure_legend,
    finish_axes,
    overlay_reference,
    set_block_ticks,
    styled,
)
from workflow_scripts.report.figures.reference import figure_rows
from workflow_scripts.report.figures.tables import (
    CONFIGURATION,
    SUMMARY,
    Configurations,
    _choose_module,
    _numbers,
    count_text,
    require_columns,
    runs_text,
    title_text,
)

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
    configuration, each mean with its band (interval or range) and the permutation null's mean..p95 hatched.
    Defaults: module v_proj (if adapted), the ``flattened`` level with the ``legacy`` estimator
    when the table has it (a legacy capture), else ``utterance`` with the biased estimator, RBF
    bandwidth multiple 1. The paper's values (F6, :mod:`.reference`): panels ``forward``,
    ``backward``, series the paper_series names; markers at their block."""
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
    reference = figure_rows(reference, "F6", name)
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

