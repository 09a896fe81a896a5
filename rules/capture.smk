# The activation stores of every run (docs/activation-store.md): acts.zarr, a forward pass over
# every clip of the run's fold, and grads.zarr, forward and backward over a class-balanced
# training subset. Two rules, so that a setting of one store reruns only that store's jobs.


rule capture_acts:
    input:
        **capture_inputs,
    output:
        directory(f"{ACTS_DIR}/acts.zarr"),
    params:
        spec=capture_spec_json("acts"),
    log:
        f"results/logs/capture_acts/{RUN_PATTERN}.log",
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
        f"python -m workflow_scripts.capture.run --store acts {RUN_ARGS}"
        " --checkpoint {input.checkpoint} --weights {input.weights} --features {input.features}"
        " --manifest {input.manifest} --folds {input.folds} --spec {params.spec:q}"
        " --out {output} --gpus {resources.gpu} 2> {log}"


rule capture_grads:
    input:
        **capture_inputs,
    output:
        directory(f"{ACTS_DIR}/grads.zarr"),
    params:
        spec=capture_spec_json("grads"),
    log:
        f"results/logs/capture_grads/{RUN_PATTERN}.log",
    threads: MODEL_JOB_THREADS
    resources:
        gpu=model_job_resource("gpu"),
        cpus_per_gpu=model_job_resource("cpus_per_gpu"),
        mem_mb=model_job_resource("mem_mb"),
        runtime=model_job_resource("runtime"),
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.capture.run --store grads {RUN_ARGS}"
        " --checkpoint {input.checkpoint} --weights {input.weights} --features {input.features}"
        " --manifest {input.manifest} --folds {input.folds} --spec {params.spec:q}"
        " --out {output} --gpus {resources.gpu} 2> {log}"
