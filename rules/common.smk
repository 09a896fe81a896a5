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

from workflow_scripts.analyses.settings import erasure_settings
from workflow_scripts.capture.settings import capture_settings
from workflow_scripts.cluster import model_job_resources
from workflow_scripts.config import validate_config
from workflow_scripts.data.audio_cache import audio_cache_settings
from workflow_scripts.data.folds import PROTOCOLS, fold_settings
from workflow_scripts.runs import (
    METHODS,
    NO_TARGETS,
    RUN_PATTERN,
    TRAINED_METHODS,
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


def frozen_run(run):
    """The frozen run that shares ``run``'s dataset, protocol, model, seed and fold."""
    return replace(run, method="frozen", targets=NO_TARGETS, rank=0)


def run_outputs(run):
    """Every output of the run's `train` job (weights/, metrics.json, ...)."""
    return [str(path).format(**asdict(run)) for path in rules.train.output]


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
    stores = [f"results/acts/{run.id}/{kind}.zarr" for run in training_runs() for kind in ("acts", "grads")]
    runs_by_id = {run.id: run for run in training_runs()}
    analyses = [(name, run) for run in runs_by_id.values() for name in ANALYSES]
    # LoRA − frozen contribution, for each trained LoRA run whose frozen counterpart is in the grid.
    analyses += [("contribution_difference", run) for run in runs_by_id.values()
                 if run.method == "lora" and frozen_run(run).id in runs_by_id]
    analyses += [("erasure", run) for run in erasure_runs()]
    analyses = [analysis_output(name, suffix).format(**asdict(run)) for name, run in analyses
                for suffix in ("parquet", "png", "svg")]
    tables = ["results/tables/performance.csv", "results/tables/performance.md"]
    return data + features + models + runs + stores + analyses + tables
