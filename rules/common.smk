# Shared by every rules file: config validation, the run grid and input functions.

import json
import os
import re
import shlex
import sys
from dataclasses import asdict, replace

from snakemake_interface_executor_plugins.settings import DeploymentMethod

sys.path.insert(0, workflow.basedir)

import pandas as pd

from workflow_scripts.analyses.settings import SECTIONS as ANALYSIS_SECTIONS
from workflow_scripts.analyses.settings import analysis_settings, erasure_settings
from workflow_scripts.capture.settings import capture_settings
from workflow_scripts.cluster import model_job_resources
from workflow_scripts.report.captions import describe_runs, figure_caption
from workflow_scripts.report.figures.registry import FIGURES
from workflow_scripts.config import config_hash, validate_config
from workflow_scripts.data.audio_cache import audio_cache_settings
from workflow_scripts.data.folds import PROTOCOLS, fold_settings
from workflow_scripts.runs import (
    LORA_METHODS,
    METHODS,
    NO_TARGETS,
    RUN_PATTERN,
    TRAINED_METHODS,
    Run,
    check_training_config,
    expand_grid,
    run_settings,
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
    analysis="|".join(ANALYSIS_SECTIONS),


def as_json(settings):
    """A config slice as one shell-quotable JSON argument; a change to it reruns the rule."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


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
# The per-run analyses (rules/analyses.smk; one rule each, named as the analysis).
ANALYSES = ("contribution", "logit_lens", "probes")
ACTS_DIR = f"results/acts/{RUN_PATTERN}"
# A run's wildcards as the arguments a per-run entry point takes (in a rule's shell command).
RUN_ARGS = (
    "--dataset {wildcards.dataset} --protocol {wildcards.protocol} --model {wildcards.model}"
    " --method {wildcards.method} --targets {wildcards.targets} --rank {wildcards.rank}"
    " --seed {wildcards.seed} --fold {wildcards.fold}"
)


def folds_of(dataset, protocol):
    """Fold numbers of a protocol, read from its fold table (built first: a checkpoint)."""
    table = checkpoints.folds.get(dataset=dataset, protocol=protocol).output[0]
    return sorted(pd.read_parquet(table, columns=["fold"])["fold"].unique().tolist())


def training_runs():
    return expand_grid(config, folds_of)


def run_metrics(wildcards):
    return [f"results/runs/{run.id}/metrics.json" for run in training_runs()]


def run_spec_json(wildcards):
    return as_json(run_settings(config, wildcards.dataset, wildcards.method))


def capture_spec_json(kind):
    """The settings one store kind (acts, grads) of a run reads."""

    def spec(wildcards):
        return as_json(capture_settings(config, wildcards.dataset, kind))

    return spec


def erasure_spec_json(wildcards):
    """The settings a run's erasure job reads."""
    return as_json(erasure_settings(config, wildcards.dataset))


def erasure_runs():
    """The runs erasure is computed for: the trained ones, and the untrained references if
    analyses.erasure.references is set."""
    return [run for run in training_runs()
            if run.method in TRAINED_METHODS or config["analyses"]["erasure"]["references"]]


# Threads of a job that runs the model (train, capture_acts, capture_grads, erasure). One: on the
# CPU two one-thread jobs side by side get through more than one two-thread job at a time (a
# Whisper-base capture_acts job: 19.3 s with two threads; two one-thread jobs together, 27.7 s);
# on a GPU the model does not run on these threads (cpus_per_gpu feeds it). A fixed count also
# keeps CPU results independent of --cores. A site that wants more: --set-threads train=4.
MODEL_JOB_THREADS = 1


def model_job_resource(name):
    """One resource of a job that runs model {model}: GPUs from the config key `gpus`, memory and
    run time by the model's size class (workflow_scripts/cluster.py). Resources are not params:
    changing them reruns nothing."""

    def resource(wildcards):
        return model_job_resources(config["models"][wildcards.model], config["gpus"])[name]

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


def analysis_output(name, suffix):
    """Where analysis ``name`` writes its table (parquet) or figure (png, svg) for a run."""
    return f"results/analyses/{name}/{RUN_PATTERN}.{suffix}"


def frozen_counterpart(name, suffix):
    """``analysis_output`` of the frozen run that shares a LoRA run's dataset, protocol, model,
    seed and fold."""
    frozen = RUN_PATTERN.replace("{method}/{targets}/r{rank}", f"frozen/{NO_TARGETS}/r0")
    return f"results/analyses/{name}/{frozen}.{suffix}"


def frozen_counterpart_store(wildcards):
    """The acts store of the frozen run that shares a LoRA run's dataset, protocol, model, seed and fold."""
    return f"results/acts/{frozen_run(Run.from_wildcards(wildcards)).id}/acts.zarr"


def frozen_run(run):
    """The frozen run that shares ``run``'s dataset, protocol, model, seed and fold."""
    return replace(run, method="frozen", targets=NO_TARGETS, rank=0)


# The analyses that compare runs: each is made only where the runs it compares are in the grid.
# The untrained LoRA references of a trained LoRA run share everything with it but the method.
UNTRAINED_REFERENCES = ("lora_random", "lora_init")
# A comparison group of trained LoRA runs across ranks, seeds and folds (principal angles), and
# across ranks (embeddings).
SUBSPACE_GROUP = "{dataset}/{protocol}/{model}/{method}/{targets}"
EMBEDDING_GROUP = "{dataset}/{protocol}/{model}/{method}/{targets}/seed{seed}/fold{fold}"


def grid_by_id():
    return {run.id: run for run in training_runs()}


def path_of(pattern, run):
    """``pattern`` filled in with a run's (or a job's) wildcards."""
    return pattern.format(**(asdict(run) if isinstance(run, Run) else dict(run.items())))


def untrained_references(run):
    """{method: run} of the untrained references of a trained LoRA run that are in the grid."""
    grid = grid_by_id()
    references = {method: replace(run, method=method) for method in UNTRAINED_REFERENCES}
    return {method: reference for method, reference in references.items() if reference.id in grid}


def with_references(pattern, trained_key):
    """Input function: ``pattern`` for the trained LoRA run {wildcards} (key ``trained_key``)
    and for each of its untrained references in the grid (keyed by method)."""

    def inputs(wildcards):
        run = Run.from_wildcards(wildcards)
        references = untrained_references(run)
        return {trained_key: path_of(pattern, run),
                **{method: path_of(pattern, reference) for method, reference in references.items()}}

    return inputs


def reference_args(wildcards, input):
    """``--reference METHOD=PATH`` for each untrained reference among a rule's inputs."""
    return " ".join(f"--reference {name}={shlex.quote(str(path))}" for name, path in input.items()
                    if name in UNTRAINED_REFERENCES)


def first_seed():
    return min(config["training"]["seeds"])


def seed_pairs():
    """(run, the same configuration at the grid's first seed) for each trained run of a later seed:
    the seed-to-seed noise floor of the layer x layer CKA."""
    grid = grid_by_id()
    pairs = [(run, replace(run, seed=first_seed())) for run in grid.values()
             if run.method in TRAINED_METHODS and run.seed != first_seed()]
    return [(run, reference) for run, reference in pairs if reference.id in grid]


def first_seed_counterpart(pattern):
    def inputs(wildcards):
        return path_of(pattern, replace(Run.from_wildcards(wildcards), seed=first_seed()))

    return inputs


def subspace_groups():
    """{group id: its trained LoRA runs} for the groups with at least two runs."""
    groups = {}
    for run in training_runs():
        if run.method == "lora":
            groups.setdefault(path_of(SUBSPACE_GROUP, run), []).append(run)
    return {group: runs for group, runs in groups.items() if len(runs) >= 2}


def subspace_weights(wildcards):
    """The weights/ folders of a subspace group's runs, keyed by run id."""
    return {run.id: f"results/runs/{run.id}/weights" for run in subspace_groups()[path_of(SUBSPACE_GROUP, wildcards)]}


def run_args(wildcards, input):
    """``--run RUN_ID=PATH`` for each of a rule's inputs (keyed by run id)."""
    return " ".join(f"--run {shlex.quote(f'{name}={path}')}" for name, path in input.items())


def embedding_groups():
    """{group id: {rank: run}} of trained LoRA runs, one group per configuration across ranks."""
    groups = {}
    for run in training_runs():
        if run.method == "lora":
            groups.setdefault(path_of(EMBEDDING_GROUP, run), {})[run.rank] = run
    return groups


def embedding_stores(wildcards):
    """The acts stores of an embedding group's runs, keyed by rank."""
    runs = embedding_groups()[path_of(EMBEDDING_GROUP, wildcards)]
    return {f"r{rank}": f"results/acts/{run.id}/acts.zarr" for rank, run in sorted(runs.items())}


def rank_args(wildcards, input):
    """``--acts RANK=PATH`` for each of a rule's inputs (keyed r<rank>)."""
    return " ".join(f"--acts {name[1:]}={shlex.quote(str(path))}" for name, path in input.items())


def run_outputs(run):
    """Every output of the run's `train` job (weights/, metrics.json, ...)."""
    return [path_of(str(path), run) for path in rules.train.output]


def analysis_runs():
    """{analysis: the runs it is computed for} of every per-run analysis: each is made only where
    the runs it compares are in the grid."""
    grid = grid_by_id()
    runs = list(grid.values())
    lora_with_frozen = [run for run in runs if run.method == "lora" and frozen_run(run).id in grid]
    lora_with_references = [run for run in runs if run.method == "lora" and untrained_references(run)]
    adapted = [run for run in runs if run.method in LORA_METHODS]
    readouts = [run for run in runs if run.method in TRAINED_METHODS or config["analyses"]["reference_readouts"]]
    return {
        **{name: readouts for name in ANALYSES},
        "contribution_difference": lora_with_frozen,  # LoRA − frozen
        "erasure": erasure_runs(),
        "spectra": adapted,
        "weight_spectra": adapted,
        "spectra_comparison": lora_with_references,
        "cka": lora_with_references,
        "cka_lora_frozen": lora_with_frozen,
        "cka_seeds": [run for run, _ in seed_pairs()],
    }


def analysis_ids(name):
    """The ids of what analysis ``name`` has one table of: runs, or comparison groups."""
    if name == "subspaces":
        return sorted(subspace_groups())
    if name == "embeddings":
        return sorted(embedding_groups())
    return sorted(run.id for run in analysis_runs()[name])


def analysis_tables(name):
    """Every table of analysis ``name`` in the grid."""
    if name in ("subspaces", "embeddings"):
        return [f"results/analyses/{name}/{group}.parquet" for group in analysis_ids(name)]
    return [path_of(analysis_output(name, "parquet"), run) for run in analysis_runs()[name]]


# ---- the report ----

# The analyses compared LoRA − frozen over matched seeds and folds (paired tests).
PAIRED_ANALYSES = ("contribution", "logit_lens", "probes", "erasure")


def tables_of(name):
    """Input function: every table of analysis ``name`` (the grid may wait for a checkpoint)."""

    def tables(wildcards):
        return analysis_tables(name)

    return tables


def aggregate_tables(wildcards):
    return analysis_tables(wildcards.analysis)


def aggregate_expectations(wildcards):
    """What the aggregation checks its tables against: the ids of the runs (or groups) the grid
    computes the analysis for, and the hash of the settings the config gives it (per dataset:
    erasure's depend on the dataset's classes)."""
    name = wildcards.analysis
    datasets = sorted({run.dataset for run in analysis_runs().get(name, training_runs())})
    hashes = [f"{d}={config_hash(analysis_settings(name, config, d))}" for d in datasets]
    return " ".join(["--expected-runs", *map(shlex.quote, analysis_ids(name)), "--expected-hash", *hashes])


def report_analyses():
    """The analyses with at least one table in the grid (the others have nothing to aggregate)."""
    return [name for name in ANALYSIS_SECTIONS if analysis_ids(name)]


def report_outputs():
    """What the report reads: the aggregate of every analysis in the grid, the paired tables, the
    findings and the config page."""
    analyses = report_analyses()
    outputs = [f"results/report/tables/{name}.parquet" for name in analyses]
    outputs += [f"results/report/tables/{name}.paired.parquet" for name in PAIRED_ANALYSES if name in analyses]
    outputs += [f"results/report/figures/{name}.{suffix}" for name in report_figures() for suffix in ("png", "svg")]
    outputs += ["results/report/findings.csv", "results/report/findings.html", "results/report/config.html"]
    return outputs


# Where each figure sits in the report (categories sort by their number).
REPORT_CATEGORIES = {
    "contribution": "2 readouts", "logit_lens": "2 readouts", "lens_comparison": "2 readouts",
    "probes": "2 readouts", "erasure": "2 readouts",
    "energy": "3 subspace geometry", "top10": "3 subspace geometry", "weight_spectra": "3 subspace geometry",
    "subspaces": "3 subspace geometry",
    "cka": "4 CKA", "cka_heatmap": "4 CKA",
    "embedding_quality": "5 embeddings",
}
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
    """--table / --paired / --reference of the figure entry point, from its inputs."""
    args = []
    for name, path in input.items():
        kind, _, analysis = name.partition("_")
        flag = {"table": "--table", "paired": "--paired"}.get(kind)
        args += [flag, f"{analysis}={path}"] if flag else ["--reference", str(path)]
    return " ".join(map(shlex.quote, args))


def runs_of(analysis):
    """The runs behind analysis ``analysis``'s tables (a comparison group's runs for the group tables)."""
    if analysis == "subspaces":
        return [run for runs in subspace_groups().values() for run in runs]
    if analysis == "embeddings":
        return [run for runs in embedding_groups().values() for run in runs.values()]
    return analysis_runs()[analysis]


def figure_caption_text(wildcards):
    """The figure's caption file with its runs described (and the paper's values, if asked)."""
    spec = FIGURES[wildcards.figure]
    runs = {run.id: run for name in spec.tables for run in runs_of(name)}
    reference = pd.read_csv(PAPER_REFERENCE) if config["report"]["paper_reference"] else None
    return figure_caption(spec.caption, sorted(runs.values(), key=lambda run: run.id), reference, spec.paper)


def figure_category(wildcards):
    return REPORT_CATEGORIES[wildcards.figure]


def figure_subcategory(wildcards):
    paper = FIGURES[wildcards.figure].paper
    return f"paper {paper}" if paper != "new" else "new"


def report_runs_text(wildcards):
    """The runs behind the report, described for a caption."""
    return describe_runs(training_runs())


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
    stores = [f"results/acts/{run.id}/acts.zarr" for run in analysis_runs()["contribution"]]
    stores += [f"results/acts/{run.id}/grads.zarr" for run in training_runs()]
    analyses = [path_of(analysis_output(name, suffix), run) for name, runs in analysis_runs().items()
                for run in runs for suffix in ("parquet", "png", "svg")]
    analyses += [path_of(analysis_output("spectra_comparison", suffix), run)
                 for run in analysis_runs()["spectra_comparison"] for suffix in ("top10.png", "top10.svg")]
    analyses += [f"results/analyses/subspaces/{group}.{suffix}" for group in subspace_groups()
                 for suffix in ("parquet", "png", "svg")]
    analyses += [f"results/analyses/embeddings/{group}.{suffix}" for group in embedding_groups()
                 for suffix in ("parquet", "coords.parquet", "png", "svg", "pca.png", "pca.svg")]
    tables = ["results/tables/performance.csv", "results/tables/performance.md", "results/report/performance.html"]
    return data + features + models + runs + stores + analyses + tables + report_outputs()
