# Shared by every rules file: config validation, the run grid and input functions.

import json
import os
import sys

# Jobs call `python -m workflow_scripts...`: make the package importable and, outside conda
# environments, run it with the interpreter that runs Snakemake (a conda job activates its
# own environment, whose python then comes first).
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in [workflow.basedir, os.environ.get("PYTHONPATH", "")] if p
)
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
sys.path.insert(0, workflow.basedir)

from workflow_scripts.config import validate_config

# Fill in the schema's defaults and stop with a readable message on a bad key.
validate_config(config, source="the workflow config")

DATASETS = sorted(config["datasets"])


wildcard_constraints:
    dataset="|".join(DATASETS),


def as_json(settings):
    """A config slice as one shell-quotable JSON argument; a change to it reruns the rule."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def dataset_spec_json(wildcards):
    return as_json(config["datasets"][wildcards.dataset])


def dataset_source(wildcards):
    """The corpus the manifest is built from (a rule makes it for the demo corpus)."""
    return config["datasets"][wildcards.dataset]["path"]


def final_outputs():
    """What `snakemake` with no target builds."""
    return [
        f"results/data/{dataset}/{name}"
        for dataset in DATASETS
        for name in ("manifest.parquet", "folds.parquet", "audio.zarr")
    ]
