# Corpus ingestion: the demo corpus, manifest + rejected clips, folds, audio cache.


rule demo_corpus:
    output:
        directory("results/demo_corpus"),
    params:
        spec=as_json(config["demo_corpus"]),
    log:
        "results/logs/demo_corpus.log",
    threads: 2
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.data.demo_corpus --spec {params.spec:q} --out {output} 2> {log}"


rule manifest:
    input:
        dataset_source,
    output:
        manifest="results/data/{dataset}/manifest.parquet",
        rejected="results/data/{dataset}/rejected.csv",
    params:
        spec=manifest_spec_json,
    log:
        "results/logs/manifest/{dataset}.log",
    threads: 2
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.data.manifest --dataset {wildcards.dataset}"
        " --spec {params.spec:q} --manifest {output.manifest} --rejected {output.rejected}"
        " 2> {log}"


# A checkpoint: with `training.folds: all` the run grid reads the number of folds from it.
# One table per protocol, so that adding a protocol retrains nothing.
checkpoint folds:
    input:
        "results/data/{dataset}/manifest.parquet",
    output:
        "results/data/{dataset}/folds/{protocol}.parquet",
    params:
        spec=folds_spec_json,
    log:
        "results/logs/folds/{dataset}/{protocol}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.data.folds --dataset {wildcards.dataset} --protocol {wildcards.protocol}"
        " --spec {params.spec:q} --manifest {input} --out {output} 2> {log}"


rule audio_cache:
    input:
        "results/data/{dataset}/manifest.parquet",
    output:
        directory("results/data/{dataset}/audio.zarr"),
    params:
        spec=as_json(audio_cache_settings(config)),
    log:
        "results/logs/audio_cache/{dataset}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.data.audio_cache --spec {params.spec:q}"
        " --manifest {input} --out {output} 2> {log}"
