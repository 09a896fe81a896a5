"""End-to-end Snakemake runs of the data stage on a tiny demo corpus (espeak-ng, 4 speakers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]

pytestmark = pytest.mark.workflow

TINY = {
    "demo_corpus": {"speakers": 4, "utterances_per_speaker_per_emotion": 2},
    "models": {"tiny": {"source": "tiny_random", "layers": 2, "d_model": 32, "heads": 2, "ffn_dim": 64}},
    "training": {"protocols": ["holdout"], "folds": "all", "methods": ["lora", "frozen", "lora_init"], "ranks": [4],
                 "epochs": 1, "lr": 1e-3, "device": "cpu",
                 # The training dynamics: step1 is kept but not analysed (adding it is tested below).
                 "checkpoints": {"epochs": [0, 1], "steps": [1]}},
    "dynamics": {"checkpoints": ["epoch0", "epoch1"]},
    "datasets": {
        "demo": {"layout": "generic", "path": "results/demo_corpus", "classes": ["neutral", "happy", "angry", "sad"],
                 "folds": {"protocols": ["loso_speaker", "holdout"], "val_fraction": 0.3}},
    },
}


def snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
         "--replace-workflow-config", "--cores", "2", *args],
        capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def jobs_run(result: subprocess.CompletedProcess) -> set[str]:
    """Names of the rules that a run executed (from Snakemake's log)."""
    return {rule for rule, _ in jobs_listed(result)}


def jobs_listed(result: subprocess.CompletedProcess) -> list[tuple[str, dict[str, str]]]:
    """Each job a run executed (or a dry run would execute): its rule and wildcards."""
    jobs = []
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith(("rule ", "localrule ", "checkpoint ", "localcheckpoint ")):
            jobs.append((line.split()[1].rstrip(":"), {}))
        elif jobs and line.strip().startswith("wildcards: "):
            pairs = line.strip().removeprefix("wildcards: ").split(", ")
            jobs[-1][1].update(pair.split("=", 1) for pair in pairs)
    return jobs


def with_changes(config: dict, **sections: dict) -> dict:
    """A copy of ``config`` with keys of its top-level sections replaced (nested dicts merged)."""
    def merge(base, change):
        return {**base, **{k: merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in change.items()}}

    return merge(config, sections)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("workflow")


@pytest.fixture(scope="module")
def tiny_run(workdir):
    """The tiny workflow, run to completion once; the tests below (in file order) change one thing at a time."""
    return snakemake(workdir, config=TINY)


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_dry_run_of_the_default_config_lists_the_dag(tmp_path):
    result = subprocess.run([*SNAKEMAKE, "-n", "--directory", str(tmp_path), "--configfile",
                             str(REPO / "config" / "config.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert {"demo_corpus", "manifest", "folds", "audio_cache", "features", "model", "train", "performance",
            "all"} <= jobs_run(result)
    assert "results/models/whisper-base" in result.stdout


RUN = Path("results/runs/demo/holdout/tiny/lora/q_proj+v_proj/r4/seed0/fold1")
FROZEN_RUN = Path("results/runs/demo/holdout/tiny/frozen/none/r0/seed0/fold1")
INIT_RUN = Path("results/runs/demo/holdout/tiny/lora_init/q_proj+v_proj/r4/seed0/fold1")


def test_full_data_stage(workdir, tiny_run):
    assert jobs_run(tiny_run) >= {"demo_corpus", "manifest", "folds", "audio_cache", "features", "model", "train",
                                  "performance", *(rule for rule, _ in jobs_after_training({"lora", "frozen",
                                                                                            "lora_init"}))}
    data = workdir / "results" / "data" / "demo"
    manifest = pd.read_parquet(data / "manifest.parquet")
    assert len(manifest) == 32 and manifest["speaker"].nunique() == 4
    for protocol, n_folds in (("loso_speaker", 4), ("holdout", 1)):  # one table per protocol
        folds = pd.read_parquet(data / "folds" / f"{protocol}.parquet")
        assert list(folds.columns) == ["protocol", "fold", "utt_id", "split"]
        assert set(folds["protocol"]) == {protocol} and folds["fold"].nunique() == n_folds
    assert (data / "audio.zarr" / "zarr.json").is_file()
    assert pd.read_csv(data / "rejected.csv").empty
    from workflow_scripts.features import FeatureStore

    features = FeatureStore(str(workdir / "results" / "features" / "demo" / "logmel80.zarr"))
    assert features.utt_ids == manifest["utt_id"].tolist() and features.n_mels == 80
    assert (workdir / "results" / "models" / "tiny" / "model.safetensors").is_file()
    for log in ("demo_corpus.log", "manifest/demo.log", "folds/demo/loso_speaker.log", "folds/demo/holdout.log",
                "audio_cache/demo.log", "features/demo_logmel80.log", "model/tiny.log"):
        assert (workdir / "results" / "logs" / log).is_file()

    tables = workdir / "results" / "tables"
    performance = pd.read_csv(tables / "performance.csv")
    assert sorted(performance["method"]) == ["frozen", "lora", "lora_init"]
    assert performance["runs"].tolist() == [1, 1, 1]
    assert "| demo | holdout | tiny | lora | q_proj, v_proj | 4 |" in (tables / "performance.md").read_text()
    assert sorted(p.name for p in (workdir / RUN).iterdir()) == ["checkpoints", "history.csv", "metrics.json",
                                                                 "predictions.parquet", "weights"]

    from workflow_scripts.capture.store import CaptureStore, validate_store

    for run in (RUN, FROZEN_RUN):
        stores = workdir / "results" / "acts" / run.relative_to("results/runs")
        for kind in ("acts", "grads"):
            assert validate_store(stores / f"{kind}.zarr") == []
            assert (workdir / "results" / "logs" / f"capture_{kind}" / f"{run.relative_to('results/runs')}.log").is_file()
        predictions = pd.read_parquet(workdir / run / "predictions.parquet").set_index("utt_id")
        acts = CaptureStore(stores / "acts.zarr", kind="acts")
        position = {u: i for i, u in enumerate(acts.utt_ids)}
        np.testing.assert_allclose(acts.logits()[[position[u] for u in predictions.index]],
                                   np.stack(predictions["logits"]), atol=1e-4)
    for analysis in ("contribution", "logit_lens", "probes", "erasure"):
        for run in (RUN, FROZEN_RUN):
            base = workdir / "results" / "analyses" / analysis / run.relative_to("results/runs")
            table = pd.read_parquet(f"{base}.parquet")
            assert set(table["run"]) == {str(run.relative_to("results/runs"))} and not table["value"].isna().any()
            assert Path(f"{base}.png").stat().st_size > 0 and Path(f"{base}.svg").stat().st_size > 0
    difference = pd.read_parquet(workdir / "results" / "analyses" / "contribution_difference"
                                 / f"{RUN.relative_to('results/runs')}.parquet")
    np.testing.assert_allclose(difference["value"], difference["value_lora"] - difference["value_frozen"])
    lens = pd.read_parquet(workdir / "results" / "analyses" / "logit_lens" / f"{RUN.relative_to('results/runs')}.parquet")
    last = lens[(lens["lens"] == "normed") & (lens["layer"] == lens["layer"].max())].set_index("statistic")["value"]
    assert last["kl_final_layer"] == pytest.approx(0, abs=1e-8) and last["agreement"] == 1.0
    analyses = workdir / "results" / "analyses"
    run_id, init_id = str(RUN.relative_to("results/runs")), str(INIT_RUN.relative_to("results/runs"))
    outputs = [f"{name}/{run_id}.{suffix}" for name in ("spectra", "weight_spectra", "spectra_comparison", "cka",
                                                          "cka_lora_frozen") for suffix in ("parquet", "png", "svg")]
    outputs += [f"{name}/{init_id}.{suffix}" for name in ("spectra", "weight_spectra") for suffix in ("parquet", "png")]
    outputs += [f"spectra_comparison/{run_id}.top10.{suffix}" for suffix in ("png", "svg")]
    group = "demo/holdout/tiny/lora/q_proj+v_proj/seed0/fold1"
    outputs += [f"embeddings/{group}.{suffix}" for suffix in ("parquet", "coords.parquet", "png", "svg", "pca.png")]
    for output in outputs:
        assert (analyses / output).stat().st_size > 0, output
    # lora_init's B = 0: its B outputs and A gradients are flagged as identically zero, not divided by.
    init_spectra = pd.read_parquet(analyses / "spectra" / f"{init_id}.parquet")
    zero = init_spectra.groupby("quantity")["all_zero"].all()
    assert zero["b_out"] and zero["a_grad"] and not zero["a_out"] and not zero["b_grad"], zero
    assert set(pd.read_parquet(analyses / "cka" / f"{run_id}.parquet")["run"]) == {run_id}
    lora_grads = CaptureStore(workdir / "results" / "acts" / RUN.relative_to("results/runs") / "grads.zarr")
    frozen_grads = CaptureStore(workdir / "results" / "acts" / FROZEN_RUN.relative_to("results/runs") / "grads.zarr")
    assert lora_grads.utt_ids == frozen_grads.utt_ids and lora_grads.adapted() and not frozen_grads.adapted()

    # The training dynamics: the LoRA run's kept checkpoints, their stores and tables.
    from workflow_scripts.train.checkpoints import checkpoint_metadata

    kept = sorted(p.name for p in (workdir / RUN / "checkpoints").glob("*.safetensors"))
    assert kept == ["epoch0.safetensors", "epoch1.safetensors", "step1.safetensors"]
    assert checkpoint_metadata(workdir / RUN / "checkpoints" / "step1.safetensors")["step"] == 1
    assert list((workdir / FROZEN_RUN / "checkpoints").glob("*.safetensors")) == []
    acts = workdir / "results" / "acts" / RUN.relative_to("results/runs")
    for checkpoint in ANALYSED:
        store = acts / "checkpoints" / f"{checkpoint}.zarr"
        assert validate_store(store) == []
        assert CaptureStore(store, kind="acts").attrs["checkpoint"] == checkpoint
        for name in DYNAMICS_ANALYSES:
            table = pd.read_parquet(analyses / name / run_id / f"{checkpoint}.parquet")
            assert set(table["checkpoint"]) == {checkpoint} and set(table["run"]) == {run_id}, name
    assert not (acts / "checkpoints" / "step1.zarr").exists()  # kept, not analysed
    representation = pd.read_parquet(analyses / "dynamics_representation" / run_id / "epoch0.parquet")
    to_base = representation[representation["reference"] == "base"]["value"]
    np.testing.assert_allclose(to_base, 1.0, atol=1e-9)  # epoch0 is the base

    # The report's tables, figures and pages (one run per configuration: no interval).
    report = workdir / "results" / "report"
    from workflow_scripts.report.figures.registry import FIGURES

    for name in TINY_ANALYSES:
        aggregated = pd.read_parquet(report / "tables" / f"{name}.parquet")
        assert len(aggregated) and set(aggregated["interval"]) <= {"none"}, name
    paired = pd.read_parquet(report / "tables" / "probes.paired.parquet")
    assert set(paired["pairs"]) == {1} and set(paired["targets"]) == {"q_proj+v_proj"}
    drawn = sorted(p.stem for p in (report / "figures").glob("*.png"))
    assert drawn == sorted(name for name, spec in FIGURES.items() if set(spec.tables) <= TINY_ANALYSES)
    findings = pd.read_csv(report / "findings.csv")
    assert {"first layer the normed lens agrees (> half the clips)", "UAR LoRA − frozen"} <= set(findings["finding"])
    assert {"do late layers change first or last (onset)"} <= set(findings["finding"])  # the dynamics' rows
    for page in ("findings.html", "config.html", "performance.html", "dynamics_summary.html"):
        assert "<table>" in (report / page).read_text(), page

    again = snakemake(workdir)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_the_report_is_one_page_that_renders_in_a_real_browser(workdir, tiny_run):
    from workflow_scripts.report.browser import check_report

    page = workdir / "results" / "report.html"
    snakemake(workdir, "--report", str(page))
    check = check_report(page, workdir / "report.png")
    assert check.ok, check.problems
    shown = {Path(figure.path).name for figure in check.figures}
    expected = {p.name for p in (workdir / "results" / "report" / "figures").glob("*.png")}
    expected |= {"findings.html", "config.html", "performance.html", "dynamics_summary.html"}
    assert expected <= shown, expected - shown


def test_a_report_with_a_missing_result_is_not_written(workdir, tiny_run):
    import shutil

    figure = workdir / "results" / "report" / "figures" / "probes.png"
    kept = workdir / "probes.png.kept"
    shutil.copy2(figure, kept)
    figure.unlink()
    try:
        page = workdir / "results" / "broken_report.html"
        result = snakemake(workdir, "--report", str(page), check=False)
        assert result.returncode != 0
        assert "probes.png" in result.stdout + result.stderr
        assert not page.exists()
    finally:
        shutil.copy2(kept, figure)  # the later tests plan from a complete run


# What a trained run's training is followed by: its two captures and the readouts of its stores;
# an untrained reference's: its grads.zarr (readouts on references only with
# analyses.reference_readouts).
DOWNSTREAM = ("capture_acts", "capture_grads", "contribution", "logit_lens", "probes")


#: The training dynamics' rules: one job per LoRA run and analysed checkpoint.
DYNAMICS_RULES = ("capture_checkpoint", "dynamics_representation", "dynamics_readouts", "dynamics_weights",
                  "dynamics_intruders")
DYNAMICS_ANALYSES = {"dynamics_representation", "dynamics_readouts", "dynamics_weights", "dynamics_intruders"}
ANALYSED = ("epoch0", "epoch1")


def job_key(rule: str, wildcards: dict) -> tuple[str, str]:
    """(rule, method) of a job; a dynamics job's method carries its checkpoint (``lora@epoch1``)."""
    checkpoint = wildcards.get("checkpoint")
    return rule, wildcards["method"] + (f"@{checkpoint}" if checkpoint else "")


def dynamics_jobs(rules=DYNAMICS_RULES, checkpoints=ANALYSED) -> set[tuple[str, str]]:
    return {(rule, f"lora@{checkpoint}") for rule in rules for checkpoint in checkpoints}


def jobs_after_training(methods: set[str], dynamics: bool = True) -> set[tuple[str, str]]:
    """(rule, method) of each job that follows when TINY's runs of ``methods`` (lora, frozen,
    lora_init; one rank, seed and fold) are trained anew: their own jobs, the comparisons of
    the LoRA run with a side that changed and, with ``dynamics``, its checkpoints' jobs (the
    report's jobs: :func:`report_jobs`)."""
    jobs = {(rule, method) for method in methods - {"lora_init"} for rule in ("train", *DOWNSTREAM)}
    jobs |= {("train", "lora_init"), ("capture_grads", "lora_init")} if "lora_init" in methods else set()
    jobs |= {(rule, method) for method in methods & {"lora", "lora_init"} for rule in ("spectra", "weight_spectra")}
    jobs |= {("erasure", method) for method in methods & {"lora", "frozen"}}
    if "lora" in methods:
        jobs.add(("embeddings", "lora"))
    if methods & {"lora", "frozen"}:
        jobs |= {("contribution_difference", "lora"), ("cka_lora_frozen", "lora")}
    if methods & {"lora", "lora_init"}:
        jobs |= {("spectra_comparison", "lora"), ("cka", "lora")}
    if dynamics and "lora" in methods:  # its checkpoints, captured and analysed again
        jobs |= dynamics_jobs()
    return jobs


# The report's rules, and the analyses whose tables the findings read (with the runs' metrics).
REPORT_RULES = ("aggregate", "paired", "figure", "findings", "report_config", "dynamics_summary")
# (the findings read the dynamics summary's rows, which read these tables)
FINDINGS_READS = {"contribution", "logit_lens", "spectra_comparison", "dynamics_representation", "dynamics_readouts"}
SUMMARY_READS = {"dynamics_representation", "dynamics_readouts", "cka_seeds"}
# The analyses TINY's grid (one LoRA run, its frozen run and lora_init) makes: no comparison across
# seeds or ranks.
TINY_ANALYSES = {"contribution", "contribution_difference", "logit_lens", "probes", "erasure", "spectra",
                 "spectra_comparison", "weight_spectra", "cka", "cka_lora_frozen", "embeddings", *DYNAMICS_ANALYSES}


def report_jobs(changed: set[str], available: set[str] = TINY_ANALYSES, trained: bool = False,
                config_changed: bool = True) -> set[tuple[str, str]]:
    """(rule, analysis or figure) of each report job that follows when the tables of the analyses
    ``changed`` change (and, if ``trained``, the runs' metrics): their aggregates and paired
    tables, the figures that read them, the findings if they read one; the config page if the
    config changed."""
    from workflow_scripts.report.aggregate import PAIRED
    from workflow_scripts.report.figures.registry import FIGURES

    changed = changed & available
    jobs = {("aggregate", name) for name in changed} | {("paired", name) for name in changed & set(PAIRED)}
    for name, spec in FIGURES.items():
        reads = set(spec.tables) | set(spec.paired) | set(spec.optional_paired)
        if set(spec.tables) | set(spec.paired) <= available and reads & changed:
            jobs.add(("figure", name))
    if trained or changed & FINDINGS_READS:
        jobs.add(("findings", ""))
    if changed & SUMMARY_READS:
        jobs.add(("dynamics_summary", ""))
    if config_changed:
        jobs.add(("report_config", ""))
    return jobs


def report_jobs_listed(jobs) -> set[tuple[str, str]]:
    return {(rule, w.get("analysis") or w.get("figure") or "") for rule, w in jobs if rule in REPORT_RULES}


def analyses_of(jobs: set[tuple[str, str]]) -> set[str]:
    """The analysis rules among (rule, method) jobs."""
    return {rule for rule, _ in jobs} - {"train", "capture_acts", "capture_grads", "capture_checkpoint"}


def trained_methods(jobs) -> set[str]:
    return {wildcards["method"] for rule, wildcards in jobs if rule == "train"}


def test_a_new_protocol_makes_only_its_fold_table(workdir, tiny_run):
    demo = TINY["datasets"]["demo"]
    config = with_changes(TINY, datasets={"demo": {"folds": {"protocols": [*demo["folds"]["protocols"],
                                                                           "loso_session"]}}})
    jobs = jobs_listed(snakemake(workdir, "-n", config=config))
    # (and the report's config page, which shows the whole config)
    assert [job for job in jobs if job[0] not in ("all", "report_config")] == [
        ("folds", {"dataset": "demo", "protocol": "loso_session"})]


@pytest.mark.parametrize("change, trains, untouched", [
    # The untrained references use no optimisation setting.
    ({"training": {"lr": 5e-3}}, {"lora", "frozen"}, {"lora_init"}),
    # frozen has no LoRA.
    ({"training": {"lora": {"dropout": 0.2}}}, {"lora", "lora_init"}, {"frozen"}),
    # Only the training runs crop clips: the audio and feature caches stay.
    ({"audio": {"max_seconds": 20}}, {"lora", "frozen", "lora_init"}, set()),
], ids=["lr", "lora_dropout", "max_seconds"])
def test_a_changed_setting_reruns_only_what_uses_it(workdir, tiny_run, change, trains, untouched):
    jobs = jobs_listed(snakemake(workdir, "-n", config=with_changes(TINY, **change)))
    assert trained_methods(jobs) == trains
    assert not trained_methods(jobs) & untouched
    # A retrained run's stores are captured again and analysed again, and so are the comparisons
    # that read it; erasure is computed for the trained runs only (analyses.erasure.references: false).
    assert sorted(job_key(rule, w) for rule, w in jobs if rule not in ("all", "performance", *REPORT_RULES)) == sorted(
        jobs_after_training(trains))
    assert {rule for rule, _ in jobs} >= {"performance", "all"}
    # The report: the aggregates, paired tables and figures of what changed, the findings, the config page.
    assert report_jobs_listed(jobs) == report_jobs(analyses_of(jobs_after_training(trains)), trained=True)


@pytest.mark.parametrize("change, rules", [
    ({"capture": {"grads_per_class": 5}}, {"capture_grads", "spectra", "spectra_comparison", "cka"}),
    ({"capture": {"frame_dtype": "float16"}}, {"capture_acts", "contribution", "logit_lens", "probes",
                                               "contribution_difference", "cka_lora_frozen", "embeddings"}),
    ({"capture": {"batch_size": 4}}, {"capture_acts", "capture_grads", "contribution", "logit_lens", "probes",
                                      "contribution_difference", "cka_lora_frozen", "embeddings", "spectra",
                                      "spectra_comparison", "cka", "capture_checkpoint", "dynamics_representation",
                                      "dynamics_readouts"}),
    # (the checkpoints' probes are the run's probes)
    ({"analyses": {"probes": {"c_grid": [0.1, 1.0]}}}, {"probes", "dynamics_readouts"}),
    ({"analyses": {"erasure": {"batch_size": 4}}}, {"erasure"}),
    ({"analyses": {"logit_lens": {"split": "val"}}}, {"logit_lens"}),
    ({"analyses": {"contribution": {"split": "val"}}}, {"contribution", "contribution_difference"}),
    ({"analyses": {"spectra": {"center": False}}}, {"spectra", "spectra_comparison"}),
    ({"analyses": {"cka": {"permutations": 5}}}, {"cka", "cka_lora_frozen"}),
    ({"analyses": {"embeddings": {"perplexity": 5}}}, {"embeddings"}),
    ({"dynamics": {"permutations": 5}}, {"dynamics_representation"}),
    ({"dynamics": {"intruders": {"k": 5}}}, {"dynamics_intruders"}),
    ({"dynamics": {"lens_agreement": 0.6}}, set()),  # the summary only (a report rule)
], ids=["grads_per_class", "frame_dtype", "batch_size", "probes_c_grid", "erasure_batch_size",
    "logit_lens_split", "contribution_split", "spectra_center", "cka_permutations", "embeddings_perplexity",
    "dynamics_permutations", "intruders_k", "lens_agreement"])
def test_a_changed_capture_or_analysis_setting_reruns_only_those_jobs(workdir, tiny_run, change, rules):
    jobs = jobs_listed(snakemake(workdir, "-n", config=with_changes(TINY, **change)))
    assert {rule for rule, _ in jobs} - set(REPORT_RULES) == rules | {"all"}
    for rule in rules:  # every run's jobs of that rule (a comparison's: the LoRA run's), nothing else
        expected = {"erasure": ["frozen", "lora"], "spectra": ["lora", "lora_init"],
                    "capture_grads": ["frozen", "lora", "lora_init"]}.get(
            rule, ["lora"] if rule in LORA_RUN_COMPARISONS else ["frozen", "lora"])
        if rule in DYNAMICS_RULES:  # the LoRA run's analysed checkpoints
            expected = [f"lora@{checkpoint}" for checkpoint in ANALYSED]
        assert sorted(job_key(name, w)[1] for name, w in jobs if name == rule) == expected
    # ... and the report's jobs that read those tables (the dynamics summary: its thresholds too).
    expected_report = report_jobs(rules)
    if set(change.get("dynamics", {})) & {"lens_agreement", "probe_fraction"}:  # the summary's own settings
        expected_report.add(("dynamics_summary", ""))
        expected_report.add(("findings", ""))
    assert report_jobs_listed(jobs) == expected_report


def test_adding_a_checkpoint_to_dynamics_schedules_only_its_jobs(workdir, tiny_run):
    # step1 is kept (training.checkpoints) but not analysed: adding it retrains nothing and
    # schedules its capture and its four analyses, and what reads their tables.
    jobs = jobs_listed(snakemake(workdir, "-n", config=with_changes(
        TINY, dynamics={"checkpoints": ["epoch0", "step1", "epoch1"]})))
    assert sorted(job_key(rule, w) for rule, w in jobs if rule not in ("all", *REPORT_RULES)) == sorted(
        dynamics_jobs(checkpoints=("step1",)))
    assert report_jobs_listed(jobs) == report_jobs(DYNAMICS_ANALYSES)
    # A checkpoint the runs do not keep stops the plan, naming both keys.
    result = snakemake(workdir, "-n", config=with_changes(TINY, dynamics={"checkpoints": ["step2"]}), check=False)
    assert result.returncode != 0
    assert "dynamics.checkpoints: ['step2'] are not kept by training.checkpoints" in result.stdout + result.stderr


# The analyses made once per trained LoRA run (or its group), comparing it with other runs.
LORA_RUN_COMPARISONS = ("contribution_difference", "spectra_comparison", "cka", "cka_lora_frozen", "embeddings")


def test_a_lost_run_is_rebuilt_with_the_table(workdir, tiny_run):
    import shutil

    tables = workdir / "results" / "tables"
    table_before = (tables / "performance.csv").stat().st_mtime_ns
    lora_before = (workdir / RUN / "metrics.json").stat().st_mtime_ns
    shutil.rmtree(workdir / FROZEN_RUN)
    rerun = snakemake(workdir, config=TINY)
    jobs = jobs_listed(rerun)
    # The frozen run's jobs, and the LoRA − frozen comparisons, whose frozen side changed.
    assert sorted(job_key(rule, w) for rule, w in jobs if rule not in ("all", "performance", *REPORT_RULES)) == sorted(
        jobs_after_training({"frozen"}))
    assert "performance" in {rule for rule, _ in jobs}
    assert report_jobs_listed(jobs) == report_jobs(analyses_of(jobs_after_training({"frozen"})), trained=True,
                                                   config_changed=False)
    assert sorted(p.name for p in (workdir / FROZEN_RUN).iterdir()) == ["checkpoints", "history.csv", "metrics.json",
                                                                        "predictions.parquet", "weights"]
    assert (tables / "performance.csv").stat().st_mtime_ns > table_before
    assert (workdir / RUN / "metrics.json").stat().st_mtime_ns == lora_before


def test_more_seeds_train_only_the_new_runs(workdir, tiny_run):
    # Scale the seeds: only the new seed's runs and the table are made; seed 0 is not touched.
    tables = workdir / "results" / "tables"
    before = (workdir / RUN / "metrics.json").stat().st_mtime_ns
    more_seeds = with_changes(TINY, training={"seeds": [0, 1]})
    rerun = snakemake(workdir, config=more_seeds)
    jobs = jobs_listed(rerun)
    # The new seed's runs and their analyses; the two seeds compared (the layer x layer CKA of the
    # trained runs, the LoRA subspaces across seeds); nothing of seed 0.
    per_seed = [job_key(rule, w) for rule, w in jobs if "seed" in w]
    assert sorted(per_seed) == sorted(jobs_after_training({"lora", "frozen", "lora_init"})
                                      | {("cka_seeds", "lora"), ("cka_seeds", "frozen")}), rerun
    assert {w["seed"] for _, w in jobs if "seed" in w} == {"1"}
    assert sorted(rule for rule, w in jobs if "seed" not in w and rule not in REPORT_RULES) == [
        "all", "performance", "subspaces"]
    # Every table gains a seed: the whole report, now with the comparisons across seeds.
    across_seeds = TINY_ANALYSES | {"subspaces", "cka_seeds"}
    assert report_jobs_listed(jobs) == report_jobs(across_seeds, across_seeds, trained=True)
    subspaces = pd.read_parquet(workdir / "results" / "analyses" / "subspaces" / "demo/holdout/tiny/lora/q_proj+v_proj.parquet")
    assert set(subspaces["differs"]) == {"seed"}
    assert (workdir / RUN / "metrics.json").stat().st_mtime_ns == before
    assert pd.read_csv(tables / "performance.csv")["runs"].tolist() == [2, 2, 2]


def test_user_config_replaces_the_default_datasets(tmp_path):
    """--replace-workflow-config: a user's config names exactly the corpora it runs."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.csv").write_text("path,label,speaker\n")
    config = {"datasets": {"mine": {"layout": "generic", "path": str(corpus), "classes": ["a", "b"]}}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    result = snakemake(tmp_path, "-n", config=config)
    text = result.stdout + result.stderr
    assert "results/data/mine/manifest.parquet" in text
    assert "results/data/demo" not in text and "demo_corpus" not in text


def test_invalid_config_stops_before_any_job(tmp_path):
    result = snakemake(tmp_path, config={"audio": {"sample_rate": "fast"}}, check=False)
    assert result.returncode != 0
    assert "audio.sample_rate: 'fast' is not of type 'integer'" in result.stderr
    assert not (tmp_path / "results").exists()


def test_bad_clip_message_reaches_the_console_and_no_manifest_is_left(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "wav").mkdir(parents=True)
    (corpus / "wav" / "broken.wav").write_bytes(b"this is not audio")
    (corpus / "manifest.csv").write_text("path,label,speaker\nwav/broken.wav,a,s1\nwav/gone.wav,b,s2\n")
    config = {"datasets": {"mine": {"layout": "generic", "path": str(corpus), "classes": ["a", "b"]}}}
    result = snakemake(tmp_path, config=config, check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "2 clips of dataset 'mine' cannot be used" in text
    assert "broken (" in text and "unreadable or corrupt audio" in text
    assert "gone (" in text and "file not found" in text
    assert not (tmp_path / "results" / "data" / "mine" / "manifest.parquet").exists()
