# The analyses over each run's activation stores: one rule per analysis, each reading only its
# own settings (config key analyses.<name>), so that changing one reruns only its jobs.


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
    resources:
        mem_mb=2000,  # pooled arrays of one run
        runtime=15,
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
    resources:
        # It loads the run's model (for its head) on the CPU: memory by model size.
        mem_mb=model_job_resource("mem_mb"),
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.logit_lens {RUN_ARGS}"
        " --acts {input.acts} --checkpoint {input.checkpoint} --weights {input.weights}"
        " --spec {params.spec:q} --out {output.table} 2> {log}"


rule probes:
    input:
        acts=f"{ACTS_DIR}/acts.zarr",
    output:
        table=analysis_output("probes", "parquet"),
        png=analysis_output("probes", "png"),
        svg=analysis_output("probes", "svg"),
    params:
        spec=as_json(config["analyses"]["probes"]),
    log:
        f"results/logs/probes/{RUN_PATTERN}.log",
    resources:
        mem_mb=2000,  # pooled arrays of one run
        runtime=30,  # a regularisation grid per layer
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.probes {RUN_ARGS}"
        " --acts {input.acts} --spec {params.spec:q} --out {output.table} 2> {log}"


# LoRA − frozen, for each trained LoRA run whose frozen counterpart (same dataset, protocol,
# model, seed and fold) is in the grid: the difference the paper plots.
rule contribution_difference:
    input:
        lora=analysis_output("contribution", "parquet"),
        frozen=frozen_counterpart("contribution", "parquet"),
    output:
        table=analysis_output("contribution_difference", "parquet"),
        png=analysis_output("contribution_difference", "png"),
        svg=analysis_output("contribution_difference", "svg"),
    wildcard_constraints:
        method="lora",
    params:
        spec=as_json(config["analyses"]["contribution"]),
    log:
        f"results/logs/contribution_difference/{RUN_PATTERN}.log",
    resources:
        mem_mb=2000,  # pooled arrays of one run
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.contribution {RUN_ARGS}"
        " --difference {input.lora} {input.frozen} --spec {params.spec:q} --out {output.table} 2> {log}"


# Erasure runs the model again (4L + 1 batched passes over the test split), so it asks for what
# the other model jobs ask for; by default only for the trained runs (analyses.erasure.references).
rule erasure:
    input:
        checkpoint="results/models/{model}",
        features=run_features,
        manifest="results/data/{dataset}/manifest.parquet",
        folds="results/data/{dataset}/folds/{protocol}.parquet",
        weights=f"{RUN_DIR}/weights",
        metrics=f"{RUN_DIR}/metrics.json",
    output:
        table=analysis_output("erasure", "parquet"),
        png=analysis_output("erasure", "png"),
        svg=analysis_output("erasure", "svg"),
    params:
        spec=erasure_spec_json,
    log:
        f"results/logs/erasure/{RUN_PATTERN}.log",
    threads: 2
    resources:
        gpu=model_job_resource("gpu"),
        cpus_per_gpu=model_job_resource("cpus_per_gpu"),
        mem_mb=model_job_resource("mem_mb"),
        runtime=model_job_resource("runtime"),
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.erasure {RUN_ARGS}"
        " --checkpoint {input.checkpoint} --features {input.features} --manifest {input.manifest}"
        " --folds {input.folds} --weights {input.weights} --spec {params.spec:q} --out {output.table}"
        " --gpus {resources.gpu} 2> {log}"
