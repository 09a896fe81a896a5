"""Every analysis of the workflow, in one place (pure: the Snakefile imports it).

One :class:`AnalysisSpec` per analysis says everything the workflow and the report need to know
about it: what one table is of (a run, or a comparison group of runs), which runs or groups it
is computed for (a run set of :class:`workflow_scripts.grid.Grid`), the config section it reads
(``analyses.<section>``), the files each table comes with, whether the report pairs it LoRA −
frozen, how its table is aggregated (:class:`TableSpec`), and where the report shows it.

Adding an analysis is one module (its maths and entry point), one entry in :data:`ANALYSES`
and one rule in ``rules/analyses.smk`` (see the README, "Adding an analysis").
"""

from __future__ import annotations

from dataclasses import dataclass

#: The columns that identify a configuration (what the report averages seeds and folds within).
CONFIGURATION = ("dataset", "protocol", "model", "method", "targets", "rank")
#: What a subspace comparison group shares (workflow_scripts.analyses.subspaces.GROUP_FIELDS); its
#: id is these joined by "/", as the workflow names the group's table.
SUBSPACE_CONFIGURATION = ("dataset", "protocol", "model", "method", "targets")
SUBSPACE_MEASURES = ("mean_cos2", "max_cos")
CKA_LAYER_KEYS = ("pairing", "layer_a", "layer_b", "kernel", "rbf_multiple", "estimator")
CKA_NULL = ("null_mean", "null_p95")
#: The files every per-run or per-group analysis writes beside its table's name.
FIGURE_SUFFIXES = ("png", "svg")


@dataclass(frozen=True)
class TableSpec:
    """How one analysis's tidy table is aggregated.

    ``keys``: the columns that identify one value besides the configuration (grouped with NaN as
    a value of its own: ``rbf_multiple`` is empty for the linear kernel); ``value``: the column
    aggregated; ``extras``: numeric columns averaged alongside (``<extra>_mean``); ``layer``: the
    column that indexes layers or blocks (the Holm family runs across it; None if none); ``unit``:
    what one row's sample is, ``"runs"`` or ``"pairs"`` (subspaces); ``run``: the column naming
    the sample (a run id; the group id for embeddings and subspaces); ``configuration``: the
    configuration columns; ``measures``: value columns stacked into (``measure``, ``value``) first;
    ``derived``: keys computed from other columns by ``report.aggregate.prepare_table``;
    ``sample``: columns that, with ``run``, name one table's sample (``checkpoint`` for the
    training dynamics, whose tables are one per run and checkpoint).
    """

    keys: tuple[str, ...]
    value: str = "value"
    extras: tuple[str, ...] = ()
    layer: str | None = None
    unit: str = "runs"
    run: str = "run"
    configuration: tuple[str, ...] = CONFIGURATION
    measures: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()
    sample: tuple[str, ...] = ()

    @property
    def required_columns(self) -> list[str]:
        """The columns a table of this analysis must have, as the analysis writes it."""
        if self.unit == "pairs":
            samples = ["run_1", "run_2"]
        else:
            samples = [self.run, "seed", "fold"]
        values = list(self.measures) if self.measures else [self.value]
        keys = [key for key in self.keys if key not in self.derived]
        return list(dict.fromkeys([*self.configuration, *samples, *keys, *values, *self.extras]))


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis.

    ``unit``: ``"run"`` (a table per run: ``results/analyses/{name}/{run id}.parquet``),
    ``"checkpoint"`` (a table per run and kept checkpoint:
    ``results/analyses/{name}/{run id}/{checkpoint}.parquet``) or ``"group"`` (a table per
    comparison group). ``applies_to``: for a per-run (or per-checkpoint) analysis the
    :attr:`Grid.run_sets` entry it is computed for, for a per-group one the group kind
    (``"subspace"``, ``"embedding"``). ``section``: the ``analyses.<section>`` it reads (None:
    no settings). ``outputs``: the suffixes of the files each table comes with (the table's
    ``parquet`` first). ``paired``: the report compares its LoRA runs with their frozen
    counterparts pair by pair. ``category``: the report category of its figures. ``figures``:
    the report figures this analysis is the first table of (``report/figures/registry.py``).
    """

    name: str
    unit: str
    applies_to: str
    section: str | None
    table: TableSpec
    category: str
    figures: tuple[str, ...] = ()
    paired: bool = False
    outputs: tuple[str, ...] = ("parquet", *FIGURE_SUFFIXES)


READOUTS, GEOMETRY, CKA, EMBEDDINGS = "2 readouts", "3 subspace geometry", "4 CKA", "5 embeddings"
DYNAMICS = "6 training dynamics"
#: What a training-dynamics table carries besides its keys: the checkpoint's optimiser steps and
#: epochs (both depend on the fold's training-set size, so they are averaged, not keys).
CHECKPOINT_EXTRAS = ("step", "epoch")

#: Every analysis, in the order the report lists them.
ANALYSES: dict[str, AnalysisSpec] = {spec.name: spec for spec in (
    AnalysisSpec("contribution", "run", "readouts", "contribution", category=READOUTS, paired=True,
                 figures=("contribution",),
                 table=TableSpec(keys=("block", "statistic"), extras=("clips", "frames"), layer="block")),
    # LoRA − frozen, run by run (the difference the paper plots).
    AnalysisSpec("contribution_difference", "run", "lora_with_frozen", "contribution", category=READOUTS,
                 table=TableSpec(keys=("block", "statistic"), extras=("value_lora", "value_frozen"),
                                 layer="block")),
    AnalysisSpec("logit_lens", "run", "readouts", "logit_lens", category=READOUTS, paired=True,
                 figures=("logit_lens", "lens_comparison"),
                 table=TableSpec(keys=("lens", "layer", "statistic"), extras=("clips",), layer="layer")),
    AnalysisSpec("probes", "run", "readouts", "probes", category=READOUTS, paired=True, figures=("probes",),
                 table=TableSpec(keys=("readout", "layer", "statistic"), extras=("clips",), layer="layer")),
    AnalysisSpec("erasure", "run", "erasure", "erasure", category=READOUTS, paired=True, figures=("erasure",),
                 table=TableSpec(keys=("condition", "layer", "statistic"), extras=("clips",), layer="layer")),
    AnalysisSpec("spectra", "run", "adapted", "spectra", category=GEOMETRY, figures=("energy", "top10"),
                 table=TableSpec(keys=("block", "module", "quantity", "statistic", "k"), extras=("all_zero",),
                                 layer="block")),
    # A trained LoRA run against its untrained references: the paper's F4 and F5 per run.
    AnalysisSpec("spectra_comparison", "run", "lora_with_references", "spectra", category=GEOMETRY,
                 outputs=("parquet", *FIGURE_SUFFIXES, "top10.png", "top10.svg"),
                 table=TableSpec(keys=("label", "quantity", "module", "statistic"))),
    AnalysisSpec("weight_spectra", "run", "adapted", None, category=GEOMETRY, figures=("weight_spectra",),
                 table=TableSpec(keys=("block", "module", "statistic", "k"), extras=("all_zero",),
                                 layer="block")),
    AnalysisSpec("subspaces", "group", "subspace", None, category=GEOMETRY, figures=("subspaces",),
                 table=TableSpec(keys=("differs", "rank_1", "rank_2", "block", "module", "measure"),
                                 extras=("chance", "d_out", "k1", "k2", "all_zero"), layer="block",
                                 unit="pairs", run="group", configuration=SUBSPACE_CONFIGURATION,
                                 measures=SUBSPACE_MEASURES, derived=("rank_1", "rank_2", "measure"))),
    AnalysisSpec("cka", "run", "lora_with_references", "cka", category=CKA, figures=("cka",),
                 table=TableSpec(keys=("block", "module", "level", "comparison", "pairing", "model_a",
                                       "quantity_a", "model_b", "quantity_b", "paper_series", "paper_kernel",
                                       "kernel", "rbf_multiple", "estimator"),
                                 extras=CKA_NULL, layer="block")),
    AnalysisSpec("cka_lora_frozen", "run", "lora_with_frozen", "cka", category=CKA, figures=("cka_heatmap",),
                 table=TableSpec(keys=CKA_LAYER_KEYS, extras=CKA_NULL, layer="layer_a")),
    # A later seed against the grid's first: the seed-to-seed floor (drawn in cka_heatmap).
    AnalysisSpec("cka_seeds", "run", "later_seeds", "cka", category=CKA,
                 table=TableSpec(keys=CKA_LAYER_KEYS, extras=CKA_NULL, layer="layer_a")),
    AnalysisSpec("embeddings", "group", "embedding", "embeddings", category=EMBEDDINGS,
                 figures=("embedding_quality",),
                 outputs=("parquet", "coords.parquet", *FIGURE_SUFFIXES, "pca.png", "pca.svg"),
                 table=TableSpec(keys=("block", "module", "space", "statistic"), extras=("clips",),
                                 layer="block", run="group")),
    # The training dynamics (rules/dynamics.smk): one table per run and kept checkpoint.
    AnalysisSpec("dynamics_representation", "checkpoint", "dynamics", "dynamics_representation",
                 category=DYNAMICS, figures=("dynamics_heatmaps",), outputs=("parquet",),
                 table=TableSpec(keys=("checkpoint", "reference", "layer"),
                                 extras=(*CHECKPOINT_EXTRAS, *CKA_NULL, "clips"), layer="layer",
                                 sample=("checkpoint",))),
    AnalysisSpec("dynamics_readouts", "checkpoint", "dynamics", "dynamics_readouts", category=DYNAMICS,
                 outputs=("parquet",),
                 table=TableSpec(keys=("checkpoint", "readout", "layer", "statistic"),
                                 extras=(*CHECKPOINT_EXTRAS, "clips"), layer="layer", sample=("checkpoint",))),
    AnalysisSpec("dynamics_weights", "checkpoint", "dynamics_lora", None, category=DYNAMICS, outputs=("parquet",),
                 table=TableSpec(keys=("checkpoint", "block", "module", "statistic"), extras=CHECKPOINT_EXTRAS,
                                 layer="block", sample=("checkpoint",))),
    AnalysisSpec("dynamics_intruders", "checkpoint", "dynamics_lora", "dynamics_intruders", category=DYNAMICS,
                 figures=("dynamics_intruders",), outputs=("parquet",),
                 table=TableSpec(keys=("checkpoint", "block", "module", "epsilon"), extras=(*CHECKPOINT_EXTRAS, "k"),
                                 layer="block", sample=("checkpoint",))),
)}

#: The analyses the report pairs LoRA − frozen (paired t and Wilcoxon, Holm across layers).
PAIRED = tuple(name for name, spec in ANALYSES.items() if spec.paired)
#: The analyses whose settings come from each config section (a change of the section reruns them).
SECTIONS = {name: spec.section for name, spec in ANALYSES.items()}
#: The report category of every figure (the category of the analysis that lists it).
FIGURE_CATEGORIES = {figure: spec.category for spec in ANALYSES.values() for figure in spec.figures}


def analysis_spec(name: str) -> AnalysisSpec:
    """The registry entry of analysis ``name``; a KeyError lists the known ones."""
    if name not in ANALYSES:
        raise KeyError(f"unknown analysis {name!r}; known: {sorted(ANALYSES)}")
    return ANALYSES[name]
