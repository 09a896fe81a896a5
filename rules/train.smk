# The training grid (one job per run) and the performance table across runs.


rule train:
    input:
        checkpoint="results/models/{model}",
        features=run_features,
        manifest="results/data/{dataset}/manifest.parquet",
        folds="results/data/{dataset}/folds/{protocol}.parquet",
    output:
        weights=directory(f"{RUN_DIR}/weights"),
        metrics=f"{RUN_DIR}/metrics.json",
        predictions=f"{RUN_DIR}/predictions.parquet",
        history=f"{RUN_DIR}/history.csv",
        checkpoints=directory(f"{RUN_DIR}/checkpoints"),
    params:
        spec=run_spec_json,
        out=RUN_DIR,
    log:
        f"results/logs/train/{RUN_PATTERN}.log",
    threads: MODEL_JOB_THREADS
    resources:
        # GPUs from the config key `gpus`; memory and run time by the model's size class.
        gpu=model_job_resource("gpu"),
        cpus_per_gpu=model_job_resource("cpus_per_gpu"),
        mem_mb=model_job_resource("mem_mb"),
        runtime=model_job_resource("runtime"),
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.train.run --dataset {wildcards.dataset}"
        " --protocol {wildcards.protocol} --model {wildcards.model} --method {wildcards.method}"
        " --targets {wildcards.targets} --rank {wildcards.rank} --seed {wildcards.seed}"
        " --fold {wildcards.fold} --checkpoint {input.checkpoint} --features {input.features}"
        " --manifest {input.manifest} --folds {input.folds} --spec {params.spec:q}"
        " --out {params.out} --gpus {resources.gpu} 2> {log}"


rule performance:
    input:
        metrics=run_metrics,
        # With report.paper_reference, the paper's T1 above the table and the ddof-0 std beside it.
        reference=lambda wildcards: [PAPER_REFERENCE] if config["report"]["paper_reference"] else [],
    output:
        csv="results/tables/performance.csv",
        md="results/tables/performance.md",
        html=report(
            "results/report/performance.html",
            caption="../workflow_scripts/report/captions/performance.rst",
            category="1 findings",
        ),
    params:
        runs=report_runs_text,
        reference=lambda wildcards, input: " ".join(
            f"--reference {shlex.quote(path)}" for path in input.reference
        ),
    log:
        "results/logs/performance.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.report.performance --metrics {input.metrics} {params.reference}"
        " --csv {output.csv} --md {output.md} --html {output.html} 2> {log}"
