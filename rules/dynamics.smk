# The training dynamics (workflow_scripts/dynamics): each lora and full run's kept checkpoints
# (training.checkpoints), the ones dynamics.checkpoints names captured and analysed checkpoint by
# checkpoint, then summarised over seeds and folds. One job per run and checkpoint in each rule,
# so adding a checkpoint to dynamics.checkpoints schedules only that checkpoint's jobs.

# The pooled arrays of the run's acts store (every clip of its fold, the same order) with the
# run's parameters at {checkpoint}: no frame-level arrays.
rule capture_checkpoint:
    input:
        **capture_inputs,
        checkpoints=CHECKPOINTS_DIR,
    output:
        directory(CHECKPOINT_STORE),
    params:
        spec=capture_spec_json("checkpoint"),
        run_dir=run_dir_of_checkpoints,
    log:
        f"results/logs/capture_checkpoint/{RUN_PATTERN}/{{checkpoint}}.log",
    threads: MODEL_JOB_THREADS
    resources:
        gpu=model_job_resource("gpu"),
        cpus_per_gpu=model_job_resource("cpus_per_gpu"),
        mem_mb=model_job_resource("mem_mb"),
        runtime=model_job_resource("runtime"),
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.dynamics.capture {RUN_ARGS} --checkpoint-id {{wildcards.checkpoint}}"
        " --run-dir {params.run_dir} --checkpoint {input.checkpoint} --features {input.features}"
        " --manifest {input.manifest} --folds {input.folds} --spec {params.spec:q}"
        " --out {output} --gpus {resources.gpu} 2> {log}"


# Linear debiased CKA of the pooled residuals to the base (epoch0) and to the final checkpoint.
rule dynamics_representation:
    input:
        acts=CHECKPOINT_STORE,
        base=checkpoint_store_at(DYNAMICS_BASE),
        final=checkpoint_store_at(DYNAMICS_FINAL),
    output:
        dynamics_output("dynamics_representation"),
    params:
        spec=dynamics_params("dynamics_representation"),
    log:
        f"results/logs/dynamics_representation/{RUN_PATTERN}/{{checkpoint}}.log",
    resources:
        mem_mb=2000,  # pooled arrays of one run, three checkpoints
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.dynamics.representation {RUN_ARGS} --acts {{input.acts}}"
        " --base {input.base} --final {input.final} --spec {params.spec:q} --out {output} 2> {log}"


# Probes and the raw and normed logit lens (with the head at {checkpoint}) per layer.
rule dynamics_readouts:
    input:
        acts=CHECKPOINT_STORE,
        checkpoints=CHECKPOINTS_DIR,
    output:
        dynamics_output("dynamics_readouts"),
    params:
        spec=dynamics_params("dynamics_readouts"),
        run_dir=run_dir_of_checkpoints,
    log:
        f"results/logs/dynamics_readouts/{RUN_PATTERN}/{{checkpoint}}.log",
    resources:
        mem_mb=2000,
        runtime=30,  # a regularisation grid per layer
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.dynamics.readouts {RUN_ARGS} --acts {{input.acts}}"
        " --run-dir {params.run_dir} --checkpoint-id {wildcards.checkpoint} --spec {params.spec:q}"
        " --out {output} 2> {log}"


# ΔW at {checkpoint} against the final ΔW: norms, ranks, direction and column-space convergence.
rule dynamics_weights:
    input:
        checkpoints=CHECKPOINTS_DIR,
    output:
        dynamics_output("dynamics_weights"),
    params:
        run_dir=run_dir_of_checkpoints,
        final=DYNAMICS_FINAL,
    log:
        f"results/logs/dynamics_weights/{RUN_PATTERN}/{{checkpoint}}.log",
    resources:
        mem_mb=2000,  # LoRA factors only (the r x r core): ΔW is never formed
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.dynamics.weights {RUN_ARGS} --run-dir {{params.run_dir}}"
        " --checkpoint-id {wildcards.checkpoint} --final-id {params.final} --out {output} 2> {log}"


# Intruder dimensions of W0 + scaling·B·A at {checkpoint} (Shuttleworth et al. 2024).
rule dynamics_intruders:
    input:
        checkpoints=CHECKPOINTS_DIR,
        checkpoint="results/models/{model}",
    output:
        dynamics_output("dynamics_intruders"),
    params:
        spec=dynamics_params("dynamics_intruders"),
        run_dir=run_dir_of_checkpoints,
    log:
        f"results/logs/dynamics_intruders/{RUN_PATTERN}/{{checkpoint}}.log",
    resources:
        mem_mb=model_job_resource("mem_mb"),  # the base weight matrices, one at a time
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.dynamics.intruders {RUN_ARGS} --run-dir {{params.run_dir}}"
        " --checkpoint-id {wildcards.checkpoint} --checkpoint {input.checkpoint} --spec {params.spec:q}"
        " --out {output} 2> {log}"


# Per run and layer the onset (CKA to the base below the seed-to-seed floor) and the emergence
# checkpoints (lens agreement > one half, probe at 90 % of its final UAR), summarised with the
# seeds nested in the folds, and the findings rows.
rule dynamics_summary:
    input:
        representation=tables_of("dynamics_representation"),
        readouts=tables_of("dynamics_readouts"),
        cka_seeds=tables_of("cka_seeds"),
    output:
        onsets="results/report/tables/dynamics_onsets.parquet",
        summary="results/report/tables/dynamics_summary.parquet",
        findings="results/report/dynamics_findings.csv",
        html=report(
            "results/report/dynamics_summary.html",
            caption="../workflow_scripts/report/captions/dynamics_summary.rst",
            category="6 training dynamics",
        ),
    params:
        spec=dynamics_params("dynamics_summary"),
        runs=report_runs_text,
    log:
        "results/logs/report/dynamics_summary.log",
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.dynamics.summary --representation {input.representation:q}"
        " --readouts {input.readouts:q} --cka-seeds {input.cka_seeds:q} --spec {params.spec:q}"
        " --onsets {output.onsets} --summary {output.summary} --findings {output.findings}"
        " --html {output.html} 2> {log}"
