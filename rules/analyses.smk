# The analyses over each run's activation stores: one rule per analysis, each reading only its
# own settings (config key analyses.<name>), so that changing one reruns only its jobs.



def analysis_output(name, suffix):
    """Where analysis ``name`` writes its table (parquet) or figure (png, svg) for a run."""
    return f"results/analyses/{name}/{RUN_PATTERN}.{suffix}"


rule contribution:
    input:
        acts=f"{ACTS_DIR}/acts.zarr",
    output:
        table=analysis_output("contribution", "parquet"),
        png=analysis_output("contribution", "png"),
        svg=analysis_output("contribution", "svg"),
    params:
        spec=as_json(config["analyses"]["contribution"]),
    log:
        f"results/logs/contribution/{RUN_PATTERN}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.contribution {RUN_ARGS}"
        " --acts {input.acts} --spec {params.spec:q} --out {output.table} 2> {log}"


rule logit_lens:
    input:
        acts=f"{ACTS_DIR}/acts.zarr",
        weights=f"{RUN_DIR}/weights",
        checkpoint="results/models/{model}",
    output:
        table=analysis_output("logit_lens", "parquet"),
        png=analysis_output("logit_lens", "png"),
        svg=analysis_output("logit_lens", "svg"),
    params:
        spec=as_json(config["analyses"]["logit_lens"]),
    log:
        f"results/logs/logit_lens/{RUN_PATTERN}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.logit_lens {RUN_ARGS}"
        " --acts {input.acts} --checkpoint {input.checkpoint} --weights {input.weights}"
        " --spec {params.spec:q} --out {output.table} 2> {log}"
