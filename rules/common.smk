# Shared by every rules file: config validation, the run grid and input functions. Each input
# function is a lookup into structures built once per plan: the Grid (workflow_scripts/grid.py),
# the analysis registry (workflow_scripts/analyses/registry.py) and the typed settings.

import functools
import os
import re
import shlex
import sys

from snakemake_interface_executor_plugins.settings import DeploymentMethod

sys.path.insert(0, workflow.basedir)


from workflow_scripts.analyses.registry import ANALYSES, FIGURE_CATEGORIES, PAIRED, analysis_spec
from workflow_scripts.analyses.settings import SETTINGS_OF_SECTION, analysis_settings
from workflow_scripts.capture.settings import CaptureSettings
from workflow_scripts.cluster import model_job_resources
from workflow_scripts.config import config_hash, validate_config
from workflow_scripts.stage_settings import as_json
from workflow_scripts.data.audio_cache import audio_cache_settings
from workflow_scripts.data.folds import PROTOCOLS, fold_settings
from workflow_scripts.dynamics.plan import BASE as DYNAMICS_BASE, final_checkpoint
from workflow_scripts.dynamics.settings import dynamics_settings
from workflow_scripts.grid import (
    EMBEDDING_GROUP,
    SUBSPACE_GROUP,
    UNTRAINED_REFERENCES,
    GridCache,
    analysis_output,
    frozen_run,
    path_of,
)
from workflow_scripts.report.captions import describe_runs, figure_caption
from workflow_scripts.report.figures.registry import FIGURES
from workflow_scripts.train.checkpoints import CHECKPOINT_PATTERN
from workflow_scripts.runs import (
    LORA_METHODS,
    METHODS,
    NO_TARGETS,
    RUN_PATTERN,
    Run,
    TrainingRunSettings,
    check_training_config,
)

# Fill in the schema's defaults and stop with a readable message on a bad key.
validate_config(config, source="the workflow config")
check_training_config(config)

DATASETS = sorted(config["datasets"])
MODELS = sorted(config["models"])
# One log-mel cache per dataset and mel-bin count that some model needs.
MEL_BINS = sorted({spec["num_mel_bins"] for spec in config["models"].values()})

# Every job runs `python -m workflow_scripts...`: put the package on PYTHONPATH and, outside
# conda environments, the interpreter that runs Snakemake (the project's .venv) first on PATH.
# A conda job activates its own environment instead.
_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
# (Snakemake formats the prefix too, hence the doubled braces.)
_prefix = f"export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
if not _CONDA:
    _prefix += f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; "
shell.prefix(_prefix)


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),
    model="|".join(re.escape(m) for m in MODELS),
    n_mels=r"\d+",
    protocol="|".join(PROTOCOLS),
    method="|".join(METHODS),
    targets=r"[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*",
    rank=r"\d+",
    seed=r"\d+",
    fold=r"\d+",
    analysis="|".join(ANALYSES),
    checkpoint=CHECKPOINT_PATTERN,


# Every stage's settings are a typed, frozen dataclass built once from the validated config
# (workflow_scripts/stage_settings.py); its params() JSON is the rule's param, so a change to it
# reruns the jobs that read it and nothing else.


@functools.cache
def run_params(dataset, method):
    return TrainingRunSettings.from_config(config, dataset, method).params()


@functools.cache
def capture_params(dataset, kind):
    return CaptureSettings.from_config(config, dataset, kind).params()


@functools.cache
def analysis_params(section, dataset=None):
    """The params of the analyses that read ``analyses.<section>`` (erasure's depend on the dataset)."""
    return SETTINGS_OF_SECTION[section].from_config(config, dataset).params()


@functools.cache
def dynamics_params(name):
    """The params of a training-dynamics job (``dynamics:`` and, for the readouts, ``analyses.probes``)."""
    return dynamics_settings(name, config).params()


# The references of every change the dynamics measure: the base (epoch0) and the final checkpoint.
DYNAMICS_FINAL = final_checkpoint(config)


def manifest_spec_json(wildcards):
    """A dataset's settings for its manifest: everything but the fold protocols."""
    spec = config["datasets"][wildcards.dataset]
    return as_json({key: value for key, value in spec.items() if key != "folds"})


def folds_spec_json(wildcards):
    """The settings of one protocol's fold table (classes, val_fraction, seed, ...)."""
    spec = config["datasets"][wildcards.dataset]
    return as_json(fold_settings(spec, wildcards.protocol, wildcards.dataset))


def fold_tables(dataset):
    """The fold table of each protocol configured for ``dataset``."""
    protocols = config["datasets"][dataset]["folds"]["protocols"]
    return [f"results/data/{dataset}/folds/{protocol}.parquet" for protocol in protocols]


def dataset_source(wildcards):
    """The corpus the manifest is built from (a rule makes it for the demo corpus)."""
    return config["datasets"][wildcards.dataset]["path"]


def model_spec_json(wildcards):
    """A model's settings for building its checkpoint; `size` only scales cluster resources,
    so changing it must not rebuild the model (and retrain every run of it)."""
    spec = config["models"][wildcards.model]
    return as_json({key: value for key, value in spec.items() if key != "size"})


RUN_DIR = f"results/runs/{RUN_PATTERN}"
ACTS_DIR = f"results/acts/{RUN_PATTERN}"
# A run's wildcards as the arguments a per-run entry point takes (in a rule's shell command).
RUN_ARGS = (
    "--dataset {wildcards.dataset} --protocol {wildcards.protocol} --model {wildcards.model}"
    " --method {wildcards.method} --targets {wildcards.targets} --rank {wildcards.rank}"
    " --seed {wildcards.seed} --fold {wildcards.fold}"
)


def fold_table_of(dataset, protocol):
    """A protocol's fold table, once its checkpoint is done (until then Snakemake waits for it)."""
    return checkpoints.folds.get(dataset=dataset, protocol=protocol).output[0]


def read_folds(table):
    """The fold numbers of a fold table."""
    import pandas as pd

    return sorted(pd.read_parquet(table, columns=["fold"])["fold"].unique().tolist())


# The run grid, expanded once per config and per state of the fold tables it reads; every input
# function below is a lookup into it (workflow_scripts/grid.py).
GRIDS = GridCache(config, fold_table_of, read_folds)


def grid():
    return GRIDS.grid()


def training_runs():
    return grid().runs


def run_metrics(wildcards):
    return [f"results/runs/{run.id}/metrics.json" for run in training_runs()]


def run_spec_json(wildcards):
    return run_params(wildcards.dataset, wildcards.method)


def capture_spec_json(kind):
    """The settings one store kind (acts, grads) of a run reads."""

    def spec(wildcards):
        return capture_params(wildcards.dataset, kind)

    return spec


def erasure_spec_json(wildcards):
    """The settings a run's erasure job reads."""
    return analysis_params("erasure", wildcards.dataset)


# Threads of a job that runs the model (train, capture_acts, capture_grads, erasure). One: on the
# CPU two one-thread jobs side by side get through more than one two-thread job at a time (a
# Whisper-base capture_acts job: 19.3 s with two threads; two one-thread jobs together, 27.7 s);
# on a GPU the model does not run on these threads (cpus_per_gpu feeds it). A fixed count also
# keeps CPU results independent of --cores. A site that wants more: --set-threads train=4.
MODEL_JOB_THREADS = 1


@functools.cache
def _model_resources(model):
    return model_job_resources(config["models"][model], config["gpus"])


def model_job_resource(name):
    """One resource of a job that runs model {model}: GPUs from the config key `gpus`, memory and
    run time by the model's size class (workflow_scripts/cluster.py). Resources are not params:
    changing them reruns nothing."""

    def resource(wildcards):
        return _model_resources(wildcards.model)[name]

    return resource


def run_features(wildcards):
    n_mels = config["models"][wildcards.model]["num_mel_bins"]
    return f"results/features/{wildcards.dataset}/logmel{n_mels}.zarr"


# What a run's captures read: its weights (metrics.json too: it is written last, so a run that
# has it is complete), the base checkpoint, the log-mel cache and the fold table.
capture_inputs = {
    "weights": f"{RUN_DIR}/weights",
    "metrics": f"{RUN_DIR}/metrics.json",
    "checkpoint": "results/models/{model}",
    "features": run_features,
    "manifest": "results/data/{dataset}/manifest.parquet",
    "folds": "results/data/{dataset}/folds/{protocol}.parquet",
}


def frozen_counterpart(name, suffix):
    """``analysis_output`` of the frozen run that shares a LoRA run's dataset, protocol, model,
    seed and fold."""
    frozen = RUN_PATTERN.replace("{method}/{targets}/r{rank}", f"frozen/{NO_TARGETS}/r0")
    return f"results/analyses/{name}/{frozen}.{suffix}"


def frozen_counterpart_store(wildcards):
    """The acts store of the frozen run that shares a LoRA run's dataset, protocol, model, seed and fold."""
    return f"results/acts/{frozen_run(Run.from_wildcards(wildcards)).id}/acts.zarr"


def with_references(pattern, trained_key):
    """Input function: ``pattern`` for the trained LoRA run {wildcards} (key ``trained_key``)
    and for each of its untrained references in the grid (keyed by method)."""

    def inputs(wildcards):
        run = Run.from_wildcards(wildcards)
        references = grid().untrained_references(run)
        return {trained_key: path_of(pattern, run),
                **{method: path_of(pattern, reference) for method, reference in references.items()}}

    return inputs


def reference_args(wildcards, input):
    """``--reference METHOD=PATH`` for each untrained reference among a rule's inputs."""
    return " ".join(f"--reference {name}={shlex.quote(str(path))}" for name, path in input.items()
                    if name in UNTRAINED_REFERENCES)


def first_seed_counterpart(pattern):
    def inputs(wildcards):
        return path_of(pattern, grid().first_seed_run(Run.from_wildcards(wildcards)))

    return inputs


def subspace_weights(wildcards):
    """The weights/ folders of a subspace group's runs, keyed by run id."""
    return {run.id: f"results/runs/{run.id}/weights" for run in grid().subspace_groups[path_of(SUBSPACE_GROUP, wildcards)]}


def run_args(wildcards, input):
    """``--run RUN_ID=PATH`` for each of a rule's inputs (keyed by run id)."""
    return " ".join(f"--run {shlex.quote(f'{name}={path}')}" for name, path in input.items())


def embedding_stores(wildcards):
    """The acts stores of an embedding group's runs, keyed by rank."""
    runs = grid().embedding_groups[path_of(EMBEDDING_GROUP, wildcards)]
    return {f"r{rank}": f"results/acts/{run.id}/acts.zarr" for rank, run in sorted(runs.items())}


def rank_args(wildcards, input):
    """``--acts RANK=PATH`` for each of a rule's inputs (keyed r<rank>)."""
    return " ".join(f"--acts {name[1:]}={shlex.quote(str(path))}" for name, path in input.items())


def run_outputs(run):
    """Every output of the run's `train` job (weights/, metrics.json, ...)."""
    return [path_of(str(path), run) for path in rules.train.output]


# ---- the training dynamics (rules/dynamics.smk) ----

CHECKPOINTS_DIR = f"{RUN_DIR}/checkpoints"
CHECKPOINT_STORE = f"{ACTS_DIR}/checkpoints/{{checkpoint}}.zarr"


def dynamics_output(name):
    """Where a dynamics analysis writes its table for run {wildcards} at {checkpoint}."""
    return f"results/analyses/{name}/{RUN_PATTERN}/{{checkpoint}}.parquet"


def checkpoint_store_at(checkpoint):
    """Input function: the run's checkpoint store at a fixed checkpoint (the base, the final)."""

    def store(wildcards):
        return path_of(CHECKPOINT_STORE, {**dict(wildcards.items()), "checkpoint": checkpoint})

    return store


def run_dir_of_checkpoints(wildcards, input):
    """The run's folder, from its checkpoints/ input (the steps read the checkpoint files there)."""
    return os.path.dirname(os.path.normpath(input.checkpoints))


# ---- the report ----

def tables_of(name):
    """Input function: every table of analysis ``name`` (the grid may wait for a checkpoint)."""

    def tables(wildcards):
        return grid().tables(name)

    return tables


def aggregate_tables(wildcards):
    return grid().tables(wildcards.analysis)


@functools.cache
def _expectations(grid, name):
    hashes = [f"{d}={config_hash(analysis_settings(name, config, d))}" for d in grid.datasets_of(name)]
    return " ".join(["--expected-runs", *map(shlex.quote, grid.units(name)), "--expected-hash", *hashes])


def aggregate_expectations(wildcards):
    """What the aggregation checks its tables against: the ids of the runs (or groups) the grid
    computes the analysis for, and the hash of the settings the config gives it (per dataset:
    erasure's depend on the dataset's classes)."""
    return _expectations(grid(), wildcards.analysis)


def report_analyses():
    """The analyses with at least one table in the grid (the others have nothing to aggregate)."""
    return [name for name in ANALYSES if grid().units(name)]


def report_outputs():
    """What the report reads: the aggregate of every analysis in the grid, the paired tables, the
    findings and the config page."""
    analyses = report_analyses()
    outputs = [f"results/report/tables/{name}.parquet" for name in analyses]
    outputs += [f"results/report/tables/{name}.paired.parquet" for name in PAIRED if name in analyses]
    outputs += [f"results/report/figures/{name}.{suffix}" for name in report_figures() for suffix in ("png", "svg")]
    outputs += ["results/report/findings.csv", "results/report/findings.html", "results/report/config.html"]
    if grid().runs_in("dynamics"):
        outputs += DYNAMICS_SUMMARY_OUTPUTS
    return outputs


#: What the dynamics summary writes (rules/dynamics.smk), when the grid has dynamics.
DYNAMICS_SUMMARY_OUTPUTS = ["results/report/tables/dynamics_onsets.parquet",
                            "results/report/tables/dynamics_summary.parquet",
                            "results/report/dynamics_findings.csv", "results/report/dynamics_summary.html"]


# The paper's values read from its figures (data kept in the repository).
PAPER_REFERENCE = os.path.join(workflow.basedir, "config", "paper_reference.csv")


def report_figures():
    """The figures whose tables the grid has."""
    analyses = set(report_analyses())
    return [name for name, spec in FIGURES.items() if set(spec.tables) | set(spec.paired) <= analyses]


def figure_inputs(wildcards):
    """A figure's aggregated tables (table_<analysis>), paired tables (paired_<analysis>) and,
    with report.paper_reference, the paper's values."""
    spec, analyses = FIGURES[wildcards.figure], set(report_analyses())
    inputs = {f"table_{name}": f"results/report/tables/{name}.parquet" for name in spec.tables}
    inputs |= {f"paired_{name}": f"results/report/tables/{name}.paired.parquet"
               for name in (*spec.paired, *spec.optional_paired) if name in analyses}
    if config["report"]["paper_reference"] and spec.paper != "new":
        inputs["reference"] = PAPER_REFERENCE
    return inputs


def figure_args(wildcards, input):
    """--table / --paired / --reference of the figure entry point, from its inputs; for F4 with
    analyses.spectra.legacy_svd_panel_bug, the original's B-gradient panel (an --option)."""
    args = []
    for name, path in input.items():
        kind, _, analysis = name.partition("_")
        flag = {"table": "--table", "paired": "--paired"}.get(kind)
        args += [flag, f"{analysis}={path}"] if flag else ["--reference", str(path)]
    if wildcards.figure == "energy" and config["analyses"]["spectra"]["legacy_svd_panel_bug"]:
        args += ["--option", "legacy_svd_panel_bug=true"]
    return " ".join(map(shlex.quote, args))


@functools.cache
def paper_reference():
    """The paper's values, checked against the figures' vocabulary (an error names the file and
    row while the workflow is planned, before any figure job), with report.paper_reference."""
    from workflow_scripts.report.figures.reference import read_reference

    return read_reference(PAPER_REFERENCE) if config["report"]["paper_reference"] else None


@functools.cache
def _caption(grid, figure):
    spec = FIGURES[figure]
    runs = {run.id: run for name in spec.tables for run in grid.unit_runs(name)}
    return figure_caption(spec.caption, sorted(runs.values(), key=lambda run: run.id), paper_reference(), spec.paper)


def figure_caption_text(wildcards):
    """The figure's caption file with its runs described (and the paper's values, if asked)."""
    return _caption(grid(), wildcards.figure)


def figure_category(wildcards):
    return FIGURE_CATEGORIES[wildcards.figure]


def figure_subcategory(wildcards):
    paper = FIGURES[wildcards.figure].paper
    return f"paper {paper}" if paper != "new" else "new"


@functools.cache
def _runs_text(grid):
    return describe_runs(grid.runs)


def report_runs_text(wildcards):
    """The runs behind the report, described for a caption."""
    return _runs_text(grid())


def analysis_outputs(name):
    """Every file of analysis ``name`` in the grid: each table and the files it comes with."""
    spec = analysis_spec(name)
    return [f"results/analyses/{name}/{unit}.{suffix}" for unit in grid().units(name) for suffix in spec.outputs]


def final_outputs(wildcards):
    """What `snakemake` with no target builds: every output of every step, so that one that
    goes missing (a deleted run folder, a feature cache) is rebuilt, together with what reads it."""
    data = [
        path
        for dataset in DATASETS
        for path in [
            f"results/data/{dataset}/manifest.parquet",
            *fold_tables(dataset),
            f"results/data/{dataset}/audio.zarr",
        ]
    ]
    features = [f"results/features/{d}/logmel{n}.zarr" for d in DATASETS for n in MEL_BINS]
    models = [f"results/models/{model}" for model in MODELS]
    runs = [path for run in training_runs() for path in run_outputs(run)]
    # acts.zarr of every run with readouts (the trained runs, whose comparisons read it too);
    # grads.zarr of every run.
    stores = [f"results/acts/{run.id}/acts.zarr" for run in grid().runs_in("readouts")]
    stores += [f"results/acts/{run.id}/grads.zarr" for run in training_runs()]
    analyses = [path for name in ANALYSES for path in analysis_outputs(name)]
    # The training dynamics: each analysed checkpoint's store (the tables are analyses above).
    stores += [f"results/acts/{run.id}/checkpoints/{checkpoint}.zarr" for run in grid().runs_in("dynamics")
               for checkpoint in grid().dynamics_checkpoints]
    tables = ["results/tables/performance.csv", "results/tables/performance.md", "results/report/performance.html"]
    return data + features + models + runs + stores + analyses + tables + report_outputs()
