"""The training-dynamics figures (issue 20): layer × checkpoint heatmaps of the representation
change, the readouts and the ΔW stable rank, and the intruder dimensions per checkpoint.

Both take AGGREGATED tables (:func:`workflow_scripts.report.aggregate.aggregate`): one row per
configuration and key with the nested summary (``mean``, ``ci_low``, ``ci_high``, ``interval``, ...)
and the side columns averaged (``step_mean``, ``epoch_mean``, ...). Checkpoints are placed in
training order, by their mean step (the same for every run of a configuration).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.report.figures.style import _pyplot, band_handle, draw_band, figure_legend, finish_axes, styled
from workflow_scripts.report.figures.tables import (
    CONFIGURATION,
    SUMMARY,
    Configurations,
    _interval_text,
    _numbers,
    count_text,
    require_columns,
    title_text,
)
from workflow_scripts.train.checkpoints import checkpoint_order

#: The heatmaps' rows: (name, the table's role, its rows' selection, colour-bar label, y axis).
HEATMAP_ROWS = (
    ("CKA to base (epoch0)", "representation", {"reference": "base"}, "linear debiased CKA to the base", "layer"),
    ("probe test UAR", "readouts", {"readout": "probe", "statistic": "uar"}, "probe test UAR", "layer"),
    ("normed lens agreement", "readouts", {"readout": "lens normed", "statistic": "agreement"},
     "normed lens agreement with the final decision", "layer"),
    ("ΔW stable rank (mean over modules)", "weights", {"statistic": "stable_rank"}, "stable rank of ΔW", "block"),
)
KEYS = {"representation": ("checkpoint", "reference", "layer"),
        "readouts": ("checkpoint", "readout", "layer", "statistic"),
        "weights": ("checkpoint", "block", "module", "statistic"),
        "intruders": ("checkpoint", "block", "module", "epsilon")}
#: Annotate the cells up to this many layers and checkpoints (beyond, the numbers would not be legible).
ANNOTATE_UP_TO = 14
LAYER_AXIS = {"layer": "layer (0 = embedding output)", "block": "encoder block"}


def _selected(table: pd.DataFrame, selection: dict) -> pd.DataFrame:
    mask = np.ones(len(table), dtype=bool)
    for column, value in selection.items():
        mask &= (table[column] == value).to_numpy(dtype=bool)
    return table[mask]


def checkpoint_columns(rows: pd.DataFrame) -> list[str]:
    """The checkpoint ids of ``rows`` in training order: by mean step, ties by the id's order."""
    steps = rows.groupby("checkpoint")["step_mean"].mean()
    return sorted(steps.index, key=lambda checkpoint: (steps[checkpoint], checkpoint_order(str(checkpoint))))


def heatmap_grid(rows: pd.DataFrame, y: str) -> pd.DataFrame:
    """``mean`` as a y (layer or block) × checkpoint grid, checkpoints in training order; a block's
    modules averaged (NaN-aware: a module whose value is undefined does not count)."""
    grid = rows.pivot_table(index=y, columns="checkpoint", values="mean", aggfunc="mean", dropna=False)
    return grid.reindex(columns=checkpoint_columns(rows)).sort_index()


@styled
def dynamics_heatmaps(representation: pd.DataFrame | None, readouts: pd.DataFrame | None,
                      weights: pd.DataFrame | None):
    """New: a row of layer × checkpoint heatmaps per quantity -- CKA of the pooled residuals to the
    base (epoch0), probe test UAR, normed-lens agreement with the final decision, and ΔW's stable
    rank averaged over the adapted modules of each block -- a column per configuration, each cell
    the mean over runs (seeds averaged within folds), annotated. Checkpoints in training order
    (by step), labelled by id. One colour scale per row. A table given as None leaves its rows out."""
    name = "dynamics_heatmaps (new)"
    tables = {"representation": representation, "readouts": readouts, "weights": weights}
    if all(table is None for table in tables.values()):
        raise InputError(f"figure {name}: needs the dynamics_representation, dynamics_readouts or dynamics_weights "
                         "table")
    for role, table in tables.items():
        if table is not None:
            require_columns(table, name, f"aggregated dynamics_{role}",
                            CONFIGURATION + KEYS[role] + ("step_mean",) + SUMMARY)
    rows_of = [(label, _selected(tables[role], selection), bar, y) for label, role, selection, bar, y in HEATMAP_ROWS
               if tables[role] is not None]
    rows_of = [row for row in rows_of if len(row[1])]
    if not rows_of:
        raise InputError(f"figure {name}: the tables have none of the rows drawn: "
                         + "; ".join(f"{label} ({role}: {selection})" for label, role, selection, _, _ in HEATMAP_ROWS))
    configurations = Configurations([rows for _, rows, _, _ in rows_of])
    import seaborn as sns

    plt = _pyplot()
    keys = configurations.keys
    figure, axes = plt.subplots(len(rows_of), len(keys), figsize=(4.2 * len(keys) + 1.6, 3.6 * len(rows_of) + 1.4),
                                squeeze=False, layout="constrained")
    for row, (label, rows, bar, y) in enumerate(rows_of):
        grids = {key: heatmap_grid(part, y) for key in keys if len(part := rows[configurations.mask(rows, key)])}
        # One scale per row, over the cells drawn (a block's module mean, not the modules' own values).
        values = np.concatenate([grid.to_numpy(dtype=float).ravel() for grid in grids.values()])
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if low == high:
            low, high = low - 0.5, high + 0.5
        drawn = []
        for column, key in enumerate(keys):
            axis = axes[row, column]
            axis.set_title(f"{label}: {configurations.label(key)}", fontsize=8.5)
            if key not in grids:
                axis.text(0.5, 0.5, "not in the table", transform=axis.transAxes, ha="center", va="center",
                          fontsize=8, color="dimgrey")
                axis.set_xticks([])
                axis.set_yticks([])
                continue
            grid = grids[key]
            annotate = grid.shape[0] <= ANNOTATE_UP_TO and grid.shape[1] <= ANNOTATE_UP_TO
            sns.heatmap(grid, ax=axis, vmin=low, vmax=high, cmap="viridis", annot=annotate, fmt=".2f",
                        annot_kws={"fontsize": 6}, cbar=False)
            axis.invert_yaxis()  # layer 0 at the bottom, as a layer axis reads
            axis.set_xlabel("checkpoint (training order)")
            axis.set_ylabel(LAYER_AXIS[y] if column == 0 else "")
            axis.tick_params(axis="x", labelrotation=45)
            drawn.append(axis)
        if drawn:
            figure.colorbar(drawn[0].collections[0], ax=list(axes[row]), shrink=0.85, label=bar)
    figure.suptitle(title_text("Training dynamics per layer and checkpoint", configurations,
                               count_text([rows[rows["runs"] > 0] for _, rows, _, _ in rows_of]) + " per cell"), fontsize=10)
    return figure


@styled
def dynamics_intruders_figure(intruders: pd.DataFrame):
    """New: intruder dimensions per checkpoint (x: its mean epoch), summed over the adapted
    blocks and modules, a line per threshold ε with its band, a panel per configuration. The band
    is the sum of the per-module intervals (or ranges): at least as wide as the interval of the sum
    would be (spreads add at most linearly), so it errs on the wide side; the title says so."""
    name = "dynamics_intruders (new)"
    require_columns(intruders, name, "aggregated dynamics_intruders",
                    CONFIGURATION + KEYS["intruders"] + ("epoch_mean", "step_mean") + SUMMARY)
    configurations = Configurations([intruders])
    by = [*configurations.fields, "checkpoint", "epsilon"]
    def total(values: pd.Series) -> float:
        return values.sum(min_count=len(values))  # NaN if any block or module is: no partial sums

    summed = intruders.groupby(by, dropna=False, sort=True).agg(
        mean=("mean", total), ci_low=("ci_low", total), ci_high=("ci_high", total),
        epoch_mean=("epoch_mean", "mean"), step_mean=("step_mean", "mean")).reset_index()
    epsilons = sorted(_numbers(summed["epsilon"].unique()))
    import seaborn as sns

    colours = dict(zip(epsilons, sns.color_palette("rocket", len(epsilons))))
    plt = _pyplot()
    keys = configurations.keys
    figure, axes = plt.subplots(1, len(keys), figsize=(max(8.0, 5.2 * len(keys) + 1.0), 4.6), squeeze=False,
                                sharey=True, layout="constrained")
    for axis, (key, rows) in zip(axes[0], configurations.groups(summed)):
        for epsilon in epsilons:
            line = rows[np.isclose(_numbers(rows["epsilon"]), epsilon)].sort_values(["step_mean", "epoch_mean"])
            draw_band(axis, line["epoch_mean"], line, colours[epsilon], f"ε = {epsilon:g}")
        axis.set_title(configurations.label(key), fontsize=9)
        axis.set_xlabel("epoch (checkpoint's step / steps per epoch)")
    axes[0, 0].set_ylabel("intruder dimensions\n(sum over blocks and modules)")
    k_values = (sorted({int(k) for k in _numbers(intruders["k_mean"]) if np.isfinite(k)})
                if "k_mean" in intruders else [])
    k_text = f"top-{'/'.join(map(str, k_values))} singular vectors of W0 + s·BA" if k_values else ""
    band = (_interval_text(intruders["interval"]) + " per module,\nsummed over blocks and modules "
            "(at least as wide as the interval of the sum)")
    finish_axes(figure)
    figure_legend(figure, axes, [band_handle("band: summed per-module intervals (the title says which)")])
    figure.suptitle(title_text("Intruder dimensions per checkpoint", configurations, k_text,
                               count_text([intruders]), band), fontsize=10)
    return figure
