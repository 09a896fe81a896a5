# The report: every analysis table aggregated across seeds and folds (with intervals), LoRA vs
# frozen paired tests, the paper's figures with bands, the findings table, and what
# `snakemake --report results/report.html` shows (each output marked report(...) below).


# One table per analysis: mean, std and a 95 % interval over runs per configuration. It refuses
# a grid run's missing table and a table whose settings are not the config's (an older config).
rule aggregate:
    input:
        tables=aggregate_tables,
    output:
        "results/report/tables/{analysis}.parquet",
    params:
        expected=aggregate_expectations,
    log:
        "results/logs/report/aggregate/{analysis}.log",
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.report.aggregate --analysis {wildcards.analysis}"
        " --tables {input.tables:q} {params.expected} --out {output} 2> {log}"


# LoRA − frozen over matched seeds and folds: paired t and Wilcoxon, Holm across layers.
rule paired:
    input:
        tables=aggregate_tables,
    output:
        "results/report/tables/{analysis}.paired.parquet",
    params:
        expected=aggregate_expectations,
    log:
        "results/logs/report/paired/{analysis}.log",
    wildcard_constraints:
        analysis="|".join(PAIRED),  # the registry's paired analyses
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.report.aggregate --analysis {wildcards.analysis}"
        " --tables {input.tables:q} {params.expected} --paired-out {output} 2> {log}"


# A figure from the aggregated tables: the paper's F1-F6 and the new analyses', PNG and SVG.
rule figure:
    input:
        unpack(figure_inputs),
    output:
        png=report(
            "results/report/figures/{figure}.png",
            caption="../workflow_scripts/report/captions/figure.rst",
            category=figure_category,
            subcategory=figure_subcategory,
        ),
        svg="results/report/figures/{figure}.svg",
    params:
        caption=figure_caption_text,
        args=figure_args,
    log:
        "results/logs/report/figure/{figure}.log",
    wildcard_constraints:
        figure="|".join(FIGURES),
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.report.figures --figure {wildcards.figure} {params.args}"
        " --out {output.png} 2> {log}"


# The paper's claims as numbers from the tables (no claim written by hand).
rule findings:
    input:
        logit_lens=tables_of("logit_lens"),
        contribution=tables_of("contribution"),
        paired="results/report/tables/contribution.paired.parquet",
        spectra_comparison=tables_of("spectra_comparison"),
        metrics=run_metrics,
        # The training dynamics' rows (layer order of the onsets, its agreement across seeds), if any.
        dynamics=lambda wildcards: ["results/report/dynamics_findings.csv"] if grid().runs_in("dynamics") else [],
    output:
        csv="results/report/findings.csv",
        html=report(
            "results/report/findings.html",
            caption="../workflow_scripts/report/captions/findings.rst",
            category="1 findings",
        ),
    params:
        runs=report_runs_text,
        dynamics=lambda wildcards, input: " ".join(f"--dynamics {shlex.quote(p)}" for p in input.dynamics),
    log:
        "results/logs/report/findings.log",
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.report.findings --logit-lens {input.logit_lens:q}"
        " --contribution {input.contribution:q} --paired-contribution {input.paired}"
        " --spectra-comparison {input.spectra_comparison:q} --metrics {input.metrics:q}"
        " {params.dynamics} --out {output.csv} 2> {log}"


# The configuration the report came from, with its provenance (git commit, packages).
rule report_config:
    output:
        report(
            "results/report/config.html",
            caption="../workflow_scripts/report/captions/config.rst",
            category="9 configuration",
        ),
    params:
        config=as_json(config),
    log:
        "results/logs/report/config.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow_scripts.report.config_page --config-json {params.config:q} --out {output} 2> {log}"
