# loralens: LoRA-adapted Whisper for speech emotion recognition, and what LoRA changes inside it.
# Stages live in rules/*.smk; all logic lives in the workflow_scripts package.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow_scripts/report/captions/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/train.smk"
include: "rules/capture.smk"
include: "rules/analyses.smk"
include: "rules/dynamics.smk"
include: "rules/report.smk"


rule all:
    input:
        final_outputs,
    default_target: True
