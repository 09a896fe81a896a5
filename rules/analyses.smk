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
        spec=analysis_params("contribution"),
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
        spec=analysis_params("logit_lens"),
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
        spec=analysis_params("probes"),
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
        spec=analysis_params("contribution"),
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
    threads: MODEL_JOB_THREADS
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


# ---- Subspace geometry (paper 3.4-3.7): spectra, ΔW, principal angles, CKA, embeddings ----


# SVD spectra of a LoRA run's A/B outputs and gradients, on the gradient clips.
rule spectra:
    input:
        grads=f"{ACTS_DIR}/grads.zarr",
    output:
        table=analysis_output("spectra", "parquet"),
        png=analysis_output("spectra", "png"),
        svg=analysis_output("spectra", "svg"),
    wildcard_constraints:
        method="|".join(LORA_METHODS),
    params:
        spec=analysis_params("spectra"),
    log:
        f"results/logs/spectra/{RUN_PATTERN}.log",
    resources:
        mem_mb=2000,  # one adapted matrix's Gram (d x d, float64) at a time
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.spectra {RUN_ARGS}"
        " --grads {input.grads} --spec {params.spec:q} --out {output.table} 2> {log}"


# The paper's trained-vs-untrained energy figure (F4) and top-10 energy (F5), with the k90 summary.
rule spectra_comparison:
    input:
        unpack(with_references(analysis_output("spectra", "parquet"), "trained")),
    output:
        table=analysis_output("spectra_comparison", "parquet"),
        png=analysis_output("spectra_comparison", "png"),
        svg=analysis_output("spectra_comparison", "svg"),
        top10_png=analysis_output("spectra_comparison", "top10.png"),
        top10_svg=analysis_output("spectra_comparison", "top10.svg"),
    wildcard_constraints:
        method="lora",
    params:
        spec=analysis_params("spectra"),
        references=reference_args,
    log:
        f"results/logs/spectra_comparison/{RUN_PATTERN}.log",
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.spectra {RUN_ARGS}"
        " --compare {input.trained} {params.references} --spec {params.spec:q} --out {output.table} 2> {log}"


# Singular values of ΔW = (alpha/r)·B·A per adapted matrix, from the r x r core.
rule weight_spectra:
    input:
        weights=f"{RUN_DIR}/weights",
    output:
        table=analysis_output("weight_spectra", "parquet"),
        png=analysis_output("weight_spectra", "png"),
        svg=analysis_output("weight_spectra", "svg"),
    wildcard_constraints:
        method="|".join(LORA_METHODS),
    log:
        f"results/logs/weight_spectra/{RUN_PATTERN}.log",
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.weight_spectra {RUN_ARGS}"
        " --weights {input.weights} --out {output.table} 2> {log}"


# Principal angles between the ΔW column spaces of the trained LoRA runs of one configuration
# across the grid's ranks, seeds and folds (a job per group with at least two runs).
rule subspaces:
    input:
        unpack(subspace_weights),
    output:
        table=f"results/analyses/subspaces/{SUBSPACE_GROUP}.parquet",
        png=f"results/analyses/subspaces/{SUBSPACE_GROUP}.png",
        svg=f"results/analyses/subspaces/{SUBSPACE_GROUP}.svg",
    wildcard_constraints:
        method="lora",
    params:
        runs=run_args,
    log:
        f"results/logs/subspaces/{SUBSPACE_GROUP}.log",
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.analyses.subspaces {params.runs} --out {output.table} 2> {log}"


# CKA on the gradient clips: within the trained LoRA run and its untrained references (U↔V,
# gU↔gV), across them, and the paper's four pairings; frame and utterance level.
rule cka:
    input:
        unpack(with_references(f"{ACTS_DIR}/grads.zarr", "grads")),
    output:
        table=analysis_output("cka", "parquet"),
        png=analysis_output("cka", "png"),
        svg=analysis_output("cka", "svg"),
    wildcard_constraints:
        method="lora",
    params:
        spec=analysis_params("cka"),
        references=reference_args,
    log:
        f"results/logs/cka/{RUN_PATTERN}.log",
    resources:
        mem_mb=4000,  # one adapted matrix's frames of each store, float32
        runtime=30,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.cka {RUN_ARGS}"
        " --grads {input.grads} {params.references} --spec {params.spec:q} --out {output.table} 2> {log}"


# Layer x layer CKA of the pooled residuals: a trained LoRA run against its frozen counterpart.
rule cka_lora_frozen:
    input:
        acts=f"{ACTS_DIR}/acts.zarr",
        other=frozen_counterpart_store,
    output:
        table=analysis_output("cka_lora_frozen", "parquet"),
        png=analysis_output("cka_lora_frozen", "png"),
        svg=analysis_output("cka_lora_frozen", "svg"),
    wildcard_constraints:
        method="lora",
    params:
        spec=analysis_params("cka"),
    log:
        f"results/logs/cka_lora_frozen/{RUN_PATTERN}.log",
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.cka {RUN_ARGS}"
        " --acts {input.acts} --other-acts {input.other} --pairing lora_vs_frozen"
        " --spec {params.spec:q} --out {output.table} 2> {log}"


# The same between two seeds of one configuration (a later seed against the grid's first): the
# seed-to-seed noise floor.
rule cka_seeds:
    input:
        acts=f"{ACTS_DIR}/acts.zarr",
        other=first_seed_counterpart(f"{ACTS_DIR}/acts.zarr"),
    output:
        table=analysis_output("cka_seeds", "parquet"),
        png=analysis_output("cka_seeds", "png"),
        svg=analysis_output("cka_seeds", "svg"),
    params:
        spec=analysis_params("cka"),
    log:
        f"results/logs/cka_seeds/{RUN_PATTERN}.log",
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        f"python -m workflow_scripts.analyses.cka {RUN_ARGS}"
        " --acts {input.acts} --other-acts {input.other} --pairing seed_vs_seed"
        " --spec {params.spec:q} --out {output.table} 2> {log}"


# t-SNE and PCA of the pooled LoRA A outputs across the grid's ranks (paper F3).
rule embeddings:
    input:
        unpack(embedding_stores),
    output:
        table=f"results/analyses/embeddings/{EMBEDDING_GROUP}.parquet",
        coords=f"results/analyses/embeddings/{EMBEDDING_GROUP}.coords.parquet",
        png=report(
            f"results/analyses/embeddings/{EMBEDDING_GROUP}.png",
            caption="../workflow_scripts/report/captions/embedding_grid.rst",
            category="5 embeddings",
            subcategory="t-SNE (F3)",
        ),
        svg=f"results/analyses/embeddings/{EMBEDDING_GROUP}.svg",
        pca_png=report(
            f"results/analyses/embeddings/{EMBEDDING_GROUP}.pca.png",
            caption="../workflow_scripts/report/captions/embedding_pca.rst",
            category="5 embeddings",
            subcategory="PCA",
        ),
        pca_svg=f"results/analyses/embeddings/{EMBEDDING_GROUP}.pca.svg",
    wildcard_constraints:
        method="lora",
    params:
        spec=analysis_params("embeddings"),
        stores=rank_args,
    log:
        f"results/logs/embeddings/{EMBEDDING_GROUP}.log",
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.analyses.embeddings --dataset {wildcards.dataset}"
        " --protocol {wildcards.protocol} --model {wildcards.model} --method {wildcards.method}"
        " --targets {wildcards.targets} --seed {wildcards.seed} --fold {wildcards.fold}"
        " {params.stores} --spec {params.spec:q} --out {output.table} 2> {log}"
