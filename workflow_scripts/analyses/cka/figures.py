"""The per-run figures of the two analyses: CKA per block for each pairing with the permutation
null's band, and layer × layer heatmaps. matplotlib is imported inside the functions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.analyses.cka.estimators import ESTIMATORS, KERNELS
from workflow_scripts.analyses.cka.legacy import LEGACY_ESTIMATOR
from workflow_scripts.analyses.cka.settings import LEVELS

GROUPS = (("within", ("U", "V"), "forward: U ~ V within each model"),
          ("within", ("gU", "gV"), "backward: gU ~ gV within each model"),
          ("across", ("U", "U"), "U: trained ~ reference"),
          ("across", ("V", "V"), "V: trained ~ reference"),
          ("across", ("gU", "gU"), "gU: trained ~ reference"),
          ("across", ("gV", "gV"), "gV: trained ~ reference"))


def _view_label(level: str, kernel: str, multiple: float, estimator: str) -> str:
    bandwidth = "" if kernel == "linear" else (" γ=1/D" if level == "flattened" else f" σ×{multiple:g}")
    return f"{level}, {kernel}{bandwidth}, {estimator}"


def figure_views(table: pd.DataFrame) -> list[tuple]:
    """The (level, kernel, rbf_multiple, estimator) columns of the pairings figure: every level,
    kernel and estimator, and of the RBF multiples only the one nearest 1 (the table has all)."""
    views = []
    for level in LEVELS:
        part = table[table["level"] == level]
        for kernel in KERNELS:
            rows = part[part["kernel"] == kernel]
            if rows.empty:
                continue
            multiples = rows["rbf_multiple"].dropna().unique()
            multiple = float(multiples[np.argmin(np.abs(np.log(multiples)))]) if multiples.size else np.nan
            for estimator in (*ESTIMATORS, LEGACY_ESTIMATOR):
                if (rows["estimator"] == estimator).any():
                    views.append((level, kernel, multiple, estimator))
    return views


def pairings_figure(table: pd.DataFrame, title: str):
    """CKA per block for each pairing (colour) and module (line style), the permutation null's
    band (mean..p95) shaded; a row per pairing group, a column per level/kernel/estimator. No
    fixed y-limits: debiased values may be negative, the original's values anything."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = figure_views(table)
    modules = sorted(table["module"].unique())
    styles = dict(zip(modules, ("-", "--", ":", "-.") * 3))
    pairs = sorted({(row.model_a, row.model_b) for row in table.itertuples()})
    colours = {pair: plt.get_cmap("tab10")(i % 10) for i, pair in enumerate(pairs)}
    figure, axes = plt.subplots(len(GROUPS), len(views), figsize=(3.3 * len(views), 2.3 * len(GROUPS)),
                                squeeze=False, sharex=True)
    handles = {}
    for r, (comparison, (qa, qb), group_title) in enumerate(GROUPS):
        for c, (level, kernel, multiple, estimator) in enumerate(views):
            axis = axes[r, c]
            part = table[(table["comparison"] == comparison) & (table["quantity_a"] == qa)
                         & (table["quantity_b"] == qb) & (table["level"] == level) & (table["kernel"] == kernel)
                         & (table["estimator"] == estimator)]
            if kernel == "rbf" and level != "flattened":
                part = part[np.isclose(part["rbf_multiple"], multiple)]
            undefined = []
            for (model_a, model_b, module), rows in part.groupby(["model_a", "model_b", "module"]):
                rows = rows.sort_values("block")
                colour = colours[model_a, model_b]
                label = model_a if comparison == "within" else f"{model_a} ~ {model_b}"
                if rows["value"].isna().all():
                    undefined.append(f"{label} {module}: {rows['note'].iloc[0] or 'undefined'}")
                    continue
                line, = axis.plot(rows["block"], rows["value"], marker="o", markersize=3, color=colour,
                                  linestyle=styles[module])
                axis.fill_between(rows["block"], rows["null_mean"], rows["null_p95"], color=colour, alpha=0.15,
                                  linewidth=0)
                handles.setdefault(label, line)
                handles.setdefault(f"module {module}", plt.Line2D([], [], color="grey", linestyle=styles[module]))
            if undefined:
                axis.text(0.02, 0.02, "\n".join(sorted(set(undefined))), transform=axis.transAxes, fontsize=6,
                          va="bottom", color="dimgrey")
            if r == 0:
                axis.set_title(_view_label(level, kernel, multiple, estimator), fontsize=8)
            if c == 0:
                axis.set_ylabel(f"{group_title}\nCKA", fontsize=7)
            if r == len(GROUPS) - 1:
                axis.set_xlabel("encoder block")
            axis.tick_params(labelsize=7)
    handles["permutation null (mean..p95)"] = plt.Rectangle((0, 0), 1, 1, color="grey", alpha=0.15)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    return figure


def layer_figure(table: pd.DataFrame, title: str):
    """A layer × layer heatmap per kernel view and estimator, each with a colour bar and the
    permutation null's 95th percentile (largest over the cells) in its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(zip(table["kernel"], table["rbf_multiple"].fillna(-1.0), table["estimator"])))
    columns = min(4, len(keys))
    rows_count = int(np.ceil(len(keys) / columns))
    figure, axes = plt.subplots(rows_count, columns, figsize=(4.2 * columns, 3.6 * rows_count), squeeze=False)
    for axis in axes.ravel()[len(keys):]:
        axis.set_visible(False)
    for axis, (kernel, multiple, estimator) in zip(axes.ravel(), keys):
        part = table[(table["kernel"] == kernel) & (table["rbf_multiple"].fillna(-1.0) == multiple)
                     & (table["estimator"] == estimator)]
        grid = part.pivot(index="layer_a", columns="layer_b", values="value")
        image = axis.imshow(grid.to_numpy(), origin="lower", cmap="viridis", aspect="auto")
        colourbar = figure.colorbar(image, ax=axis)
        colourbar.set_label("CKA", fontsize=8)
        if grid.shape[0] <= 13 and grid.shape[1] <= 13:  # larger grids: the colour bar alone
            for (i, j), value in np.ndenumerate(grid.to_numpy()):
                bright = not np.isnan(value) and image.norm(value) > 0.6  # viridis is light at the top
                axis.text(j, i, "nan" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=6,
                          color="black" if bright else "white")
        axis.set_xticks(range(grid.shape[1]), grid.columns)
        axis.set_yticks(range(grid.shape[0]), grid.index)
        axis.set_xlabel("layer, other run (B)")
        axis.set_ylabel("layer, this run (A)")
        bandwidth = "" if kernel == "linear" else f" σ×{multiple:g}"
        p95 = part["null_p95"].max()
        count = int(part["permutations"].iloc[0])
        null = "no permutations" if np.isnan(p95) else f"null p95 ≤ {p95:.3f} ({count} perm.)"
        axis.set_title(f"{kernel}{bandwidth}, {estimator}\n{null}", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
