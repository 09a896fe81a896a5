"""``subspaces``: principal-angle similarity of the ΔW column spaces of two runs, with chance."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.figure_style import MODULES
from workflow_scripts.report.figures.style import (
    _pyplot,
    band_handle,
    draw_band,
    figure_legend,
    finish_axes,
    note,
    set_block_ticks,
    styled,
)
from workflow_scripts.report.figures.tables import (
    CONFIGURATION,
    SUMMARY,
    Configurations,
    _numbers,
    require_columns,
    runs_text,
    title_text,
)

SUBSPACE_MEASURES = {"mean_cos2": "mean cos² of the principal angles", "max_cos": "largest cosine"}


@styled
def subspace_figure(subspaces: pd.DataFrame):
    """New: principal-angle similarity of the column spaces of ΔW between runs that differ in
    seed, rank or fold (``differs``, a colour each), per block, a column per module: the mean cos²
    of the principal angles with its band (interval or range) and the chance level of random subspaces of the
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
    figure_legend(figure, axes, [band_handle("band: interval or range over run pairs (the title says which)")])
    figure.suptitle(title_text("Principal angles between the ΔW column spaces of two runs", configurations,
                               runs_text([subspaces], noun="run pair")), fontsize=10)
    return figure

