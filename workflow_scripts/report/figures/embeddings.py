"""F3 (``embedding_quality``): the emotion structure in the LoRA A outputs, quantified."""

from __future__ import annotations

import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.figure_style import MODULES
from workflow_scripts.report.figures.style import (
    _pyplot,
    band_handle,
    draw_band,
    figure_legend,
    finish_axes,
    set_block_ticks,
    styled,
)
from workflow_scripts.report.figures.reference import figure_rows
from workflow_scripts.report.figures.tables import (
    CONFIGURATION,
    SUMMARY,
    Configurations,
    require_columns,
    require_values,
    runs_text,
    title_text,
)

EMBEDDING_PANELS = (("features", "silhouette_features", "silhouette, pooled A outputs"),
                    ("tsne", "silhouette_map", "silhouette, t-SNE map"),
                    ("features", "knn_accuracy", "kNN accuracy (speaker-grouped)"),
                    ("features", "knn_uar", "kNN UAR (speaker-grouped)"))


# -- F3 --------------------------------------------------------------------------------------------

@styled
def embedding_quality_figure(embeddings: pd.DataFrame, reference: pd.DataFrame | None = None):
    """F3 (quantified): per block, the silhouette of the emotion classes in the pooled A outputs
    and in their t-SNE map, and the accuracy and UAR of a speaker-grouped kNN vote, a line per
    configuration (rank) and module with its band (interval or range). The paper gives no numbers for F3: a
    ``reference`` is checked (:mod:`.reference` accepts no F3 rows) but has nothing to draw."""
    name = "embedding_quality (F3)"
    require_columns(embeddings, name, "aggregated embeddings",
                    CONFIGURATION + ("block", "module", "space", "statistic") + SUMMARY)
    require_values(embeddings, name, "aggregated embeddings", "statistic", [s for _, s, _ in EMBEDDING_PANELS])
    for space, statistic, _ in EMBEDDING_PANELS:
        if embeddings[(embeddings["space"] == space) & (embeddings["statistic"] == statistic)].empty:
            raise InputError(f"figure {name}: the aggregated embeddings table has no {statistic!r} rows "
                             f"in space {space!r}")
    configurations = Configurations([embeddings])
    figure_rows(reference, "F3", name)  # refuses a malformed table (and any F3 row): nothing to draw
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

