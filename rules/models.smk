# Model checkpoints and the log-mel feature cache they read.

# A checkpoint is built where snakemake itself runs (on a cluster: the login node): a hub model
# is downloaded there, since compute nodes often have no network. Converting the offline weights
# takes seconds; a large hub or local model is loaded and saved once, which takes minutes and a
# few GB of the login node's memory.
localrules:
    model,


rule model:
    output:
        directory("results/models/{model}"),
    params:
        spec=model_spec_json,
    log:
        "results/logs/model/{model}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.models.build --model {wildcards.model}"
        " --spec {params.spec:q} --out {output} 2> {log}"


rule features:
    input:
        audio="results/data/{dataset}/audio.zarr",
        manifest="results/data/{dataset}/manifest.parquet",
    output:
        directory("results/features/{dataset}/logmel{n_mels}.zarr"),
    log:
        "results/logs/features/{dataset}_logmel{n_mels}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.features --audio {input.audio} --manifest {input.manifest}"
        " --n-mels {wildcards.n_mels} --out {output} 2> {log}"
