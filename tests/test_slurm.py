"""The tiny pipeline through `snakemake --profile slurm` on a real single-node SLURM cluster.

The session fixture brings the cluster up with `tools/slurm.sh up` (installing it from Debian
packages the first time, as CI does on a clean machine) and stops it at the end. Every check reads
SLURM's own records (sacct, by the job name, which the plugin sets to the run id it prints), not
only what Snakemake says about itself. The tests run in file order on one working directory: a
full run, then one change at a time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_workflow import (
    DYNAMICS_ANALYSES,
    FROZEN_RUN,
    REPORT_RULES,
    RUN,
    TINY,
    TINY_ANALYSES,
    analyses_of,
    jobs_after_training,
    report_jobs,
    with_changes,
)

REPO = Path(__file__).resolve().parent.parent
SLURM_SH = ["bash", str(REPO / "tools" / "slurm.sh")]
PROFILE = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())

pytestmark = pytest.mark.slurm

# The test cluster's site settings, given on the command line as a user fills them into the profile.
SITE_RESOURCES = {"slurm_partition": "debug", "slurm_account": "root"}
# The plugin's first status poll comes this many seconds after a submission (default 40): with 2
# the whole file takes about a third of the time.
FIRST_POLL_SECONDS = 2
# Upper bound of one Snakemake run here; on a hang `timeout` sends SIGINT, on which Snakemake
# cancels its SLURM jobs and exits (SIGTERM would wait for them), and SIGKILL 60 s later.
RUN_TIMEOUT_S = 900


def cluster_action(action: str, fake_gpus: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*SLURM_SH, action], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "SLURM_FAKE_GPUS": str(fake_gpus)})
    if check and result.returncode != 0:
        raise AssertionError(f"tools/slurm.sh {action} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def no_cluster_possible() -> str | None:
    """Why this machine cannot run the test cluster, or None."""
    if sys.platform != "linux":
        return f"tools/slurm.sh needs Linux (Debian 12); this is {sys.platform}"
    if not (shutil.which("apt-get") or shutil.which("slurmctld")):
        return "tools/slurm.sh needs Debian's apt-get to install SLURM, and it is not installed"
    if os.geteuid() != 0 and not (shutil.which("sudo") and subprocess.run(
            ["sudo", "-n", "true"], capture_output=True).returncode == 0):
        return "tools/slurm.sh needs root (or passwordless sudo) to install and start SLURM's daemons"
    return None


@pytest.fixture(scope="session")
def cluster():
    """A running single-node cluster without GPUs; stopped at the end (or, when it already ran
    before the tests, left running as it was found)."""
    reason = no_cluster_possible()
    if reason:
        # CI must run this test: there a machine that cannot is an error, not a skip.
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the SLURM integration test cannot run on this CI machine: {reason}")
        pytest.skip(reason)
    was_running = cluster_action("status", check=False).returncode == 0
    cluster_action("up")
    yield
    if was_running:
        cluster_action("up")  # back to the configuration it had: no fake GPUs
    else:
        cluster_action("stop")


class Run:
    """One `snakemake --profile slurm` run: its output, SLURM run id, submissions and sacct records."""

    def __init__(self, result: subprocess.CompletedProcess, seconds: float):
        self.returncode = result.returncode
        self.output = result.stdout + result.stderr
        self.seconds = seconds
        found = re.search(r"SLURM run ID: (\S+)", self.output)
        self.run_id = found.group(1) if found else None
        # "Job 7 has been submitted with SLURM jobid 42 (log: /.../.snakemake/slurm_logs/rule_x/.../42.log)."
        self.submitted = {
            slurm_id: Path(log)
            for slurm_id, log in re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", self.output)
        }

    def __repr__(self) -> str:
        return f"snakemake exited {self.returncode} after {self.seconds:.0f} s:\n{self.output}"

    def sacct(self) -> dict[str, dict[str, str]]:
        """SLURM's accounting records of this run's jobs, by SLURM job id."""
        assert self.run_id, f"no SLURM run ID printed\n{self}"
        fields = ["JobIDRaw", "State", "Comment", "AllocTRES"]
        # --starttime: sacct's default (midnight today) would miss a run that crossed midnight.
        result = subprocess.run(
            ["sacct", "-X", "-n", "-P", "--name", self.run_id, "--starttime", "now-1days", "--endtime", "now",
             "-o", ",".join(fields)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        records = [dict(zip(fields, line.split("|"))) for line in result.stdout.splitlines() if line]
        return {record["JobIDRaw"]: record for record in records}

    def jobs(self) -> list[Job]:
        """Every job the run executed, from Snakemake's log; a grouped job knows its group job."""
        jobs: list[Job] = []
        groups = 0
        in_printed_log = False
        for line in self.output.splitlines():
            text = line.strip()
            # show-failed-logs prints a failed job's logs between rules of '='; SLURM's log holds the
            # job's own Snakemake output, whose job lines are not jobs of this run.
            if re.fullmatch(r"={40,}", text):
                in_printed_log = not in_printed_log
            if in_printed_log:
                continue
            # "[Sun Nov 29 23:47:39 2026] Group job fold_tables (jobs in lexicogr. order):"
            found = re.search(r"Group job (\S+) \(jobs in", text)
            if found:
                groups += 1
                group = (groups, found.group(1))
            elif re.match(r"(local)?(rule|checkpoint) \S+:$", text):
                # A job inside a group is logged indented under its "Group job" line.
                jobs.append(Job(text.split()[1].rstrip(":"), {}, text.startswith("local"),
                                group if line.startswith(" ") else None))
            elif jobs and text.startswith("wildcards: "):
                jobs[-1].wildcards.update(pair.split("=", 1) for pair in text.removeprefix("wildcards: ").split(", "))
        return jobs

    def expected_slurm_comments(self) -> list[str]:
        """The --comment of each SLURM job the run should have submitted, as the plugin writes it:
        rule and wildcards for a job of its own, group and rules for a group job; none for local
        rules and the target rule `all`."""
        jobs = [job for job in self.jobs() if not job.local and job.rule != "all"]
        comments = []
        for job in jobs:
            if job.group is None:
                wildcards = "_".join(job.wildcards.values()).replace("/", "_")
                comments.append(f"rule_{job.rule}_wildcards_{wildcards}" if wildcards else f"rule_{job.rule}")
        for group in {job.group for job in jobs if job.group}:
            rules = sorted({job.rule for job in jobs if job.group == group})
            # Snakemake names a group job by its first five rules and "..." (GroupJob.name).
            rules = rules[:5] + ["..."] if len(rules) > 5 else rules
            comments.append(f"rule_{group[1]}_{'_'.join(rules)}")
        return comments


class Job:
    def __init__(self, rule: str, wildcards: dict[str, str], local: bool, group: tuple[int, str] | None):
        self.rule, self.wildcards, self.local, self.group = rule, wildcards, local, group

    def __repr__(self) -> str:
        return f"Job({self.rule}, {self.wildcards}, local={self.local}, group={self.group})"


def slurm_snakemake(workdir: Path, *args: str, config: dict | None = None, env: dict | None = None) -> Run:
    """`snakemake --profile slurm`, from the repository root as a user types it, on ``workdir``,
    with this test cluster's site settings and a short first status poll."""
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    resources = {**PROFILE["default-resources"], **SITE_RESOURCES}
    command = [
        "timeout", "-s", "INT", "-k", "60", str(RUN_TIMEOUT_S),
        sys.executable, "-m", "snakemake", "--profile", "slurm",
        "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), "--replace-workflow-config",
        "--default-resources", *(f"{key}={value}" for key, value in resources.items()),
        "--slurm-init-seconds-before-status-checks", str(FIRST_POLL_SECONDS),
        *args,
    ]
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    return Run(result, time.monotonic() - start)


# The tiny pipeline of the workflow tests (demo corpus of 4 speakers, a tiny random Whisper,
# 1 epoch), asking for no GPU as on a CPU-only cluster. Its holdout protocol has one fold; naming
# it (instead of `all`) means the grid needs no fold table to be expanded, so both fold tables
# are ready at once and the profile's group puts them into one SLURM job. (With `all`, the fold
# table the grid reads is a checkpoint made first, on its own.)
# It keeps no checkpoints (the training dynamics are the same rules under any executor, and
# tests/test_workflow.py runs them): this file's time stays what it was.
CPU_ONLY = with_changes(TINY, gpus=0, training={"folds": [1], "checkpoints": {"epochs": [], "steps": []}},
                        dynamics={"checkpoints": []})
WITHOUT_DYNAMICS = TINY_ANALYSES - DYNAMICS_ANALYSES
# A downstream setting: only the trained runs (not the untrained reference) and the table read it.
LR_CHANGED = with_changes(CPU_ONLY, training={"lr": 5e-3})
GPU_REQUESTED = with_changes(LR_CHANGED, gpus=1)
# The full run makes the report too (its jobs grouped with the performance table); the reruns
# after a change leave it out, to keep this file's time down: what they check is upstream of it.
WITHOUT_REPORT = ("--omit-from", *REPORT_RULES)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="module")
def full_run(cluster, workdir) -> Run:
    """The whole default target through SLURM, once; the tests below change one thing at a time."""
    return slurm_snakemake(workdir, config=CPU_ONLY)


def completed_as_logged(run: Run) -> dict[str, dict[str, str]]:
    """Check that SLURM ran exactly the jobs the run reports, each to COMPLETED; return sacct's records."""
    assert run.returncode == 0, run
    records = run.sacct()
    assert set(records) == set(run.submitted), f"sacct: {records}\n{run}"
    assert {record["State"] for record in records.values()} == {"COMPLETED"}, records
    assert sorted(record["Comment"] for record in records.values()) == sorted(run.expected_slurm_comments()), run
    return records


def ran(run: Run) -> list[tuple[str, str | None]]:
    """The rules a run executed outside the target rule, with the method of each training run."""
    return sorted((job.rule, job.wildcards.get("method")) for job in run.jobs() if job.rule != "all")


GROUPED_ANALYSES = ("contribution", "contribution_difference", "logit_lens", "probes", "spectra", "spectra_comparison",
                    "weight_spectra", "subspaces", "cka", "cka_lora_frozen", "cka_seeds", "embeddings",
                    *sorted(DYNAMICS_ANALYSES))
assert set(GROUPED_ANALYSES) == {rule for rule, group in PROFILE["groups"].items() if group == "analyses"}


def test_every_job_of_the_pipeline_goes_through_sbatch_and_completes(workdir, full_run):
    records = completed_as_logged(full_run)
    jobs = full_run.jobs()
    assert {job.rule for job in jobs if not job.local} >= {"demo_corpus", "manifest", "folds", "audio_cache",
                                                           "features", "train", "capture_acts", "capture_grads",
                                                           "performance"}
    # Each run's two stores are captured in jobs of their own (they run the model, as train does),
    # and so is its erasure.
    for model_job in ("capture_acts", "capture_grads", "erasure"):
        methods = ["frozen", "lora", "lora_init"] if model_job == "capture_grads" else ["frozen", "lora"]
        assert sorted(job.wildcards["method"] for job in jobs if job.rule == model_job and job.group is None) == \
            methods, full_run
    # Every analysis that does not run the model is in the profile's `analyses` group; a run's
    # readouts become ready together (when its acts store is written) and share one SLURM job...
    analyses = [job for job in jobs if job.rule in GROUPED_ANALYSES]
    assert sorted((job.rule, job.wildcards["method"]) for job in analyses) == sorted(
        job for job in jobs_after_training({"frozen", "lora", "lora_init"}, dynamics=False)
        if job[0] in GROUPED_ANALYSES), full_run
    assert all(job.group and job.group[1] == "analyses" for job in analyses), full_run
    for method in ("frozen", "lora"):
        assert len({job.group for job in analyses if job.wildcards["method"] == method
                    and job.rule in ("contribution", "logit_lens", "probes")}) == 1, full_run
    # The report's aggregates, figures and findings are grouped with the performance table.
    report = [job for job in jobs if job.rule in REPORT_RULES]
    assert {(job.rule, job.wildcards.get("analysis") or job.wildcards.get("figure") or "") for job in report} == \
        report_jobs(analyses_of(jobs_after_training({"frozen", "lora", "lora_init"}, dynamics=False)),
                    WITHOUT_DYNAMICS, trained=True), full_run
    assert all(job.group and job.group[1] == "tables" for job in report), full_run
    # ... which asks for no more CPUs than the profile's `cores` (2, this node's size): its jobs run
    # at most two at a time, instead of asking for the sum of them all.
    for record in records.values():
        cpus = dict(item.split("=", 1) for item in record["AllocTRES"].split(","))["cpu"]
        assert int(cpus) <= PROFILE["cores"], record
    # The model is built on the login node (a local rule), and `all` only collects; everything
    # else ran on the compute node.
    assert {job.rule for job in jobs if job.local} == {"model", "all"}
    # The profile groups the two fold tables (loso_speaker, holdout) into one SLURM job.
    folds = [job for job in jobs if job.rule == "folds"]
    assert len(folds) == 2 and len({job.group for job in folds}) == 1 and folds[0].group is not None, full_run
    assert [record["Comment"] for record in records.values()].count("rule_fold_tables_folds") == 1, records
    assert (workdir / "results" / "tables" / "performance.md").is_file()
    assert sorted(p.name for p in (workdir / RUN).iterdir()) == ["checkpoints", "history.csv", "metrics.json",
                                                                 "predictions.parquet", "weights"]
    from workflow_scripts.capture.store import validate_store

    for kind in ("acts", "grads"):
        assert validate_store(workdir / "results" / "acts" / RUN.relative_to("results/runs") / f"{kind}.zarr") == []


def test_a_changed_training_setting_resubmits_only_the_affected_jobs(workdir, full_run):
    rerun = slurm_snakemake(workdir, *WITHOUT_REPORT, config=LR_CHANGED)
    records = completed_as_logged(rerun)
    # The untrained reference (lora_init) does not read the learning rate; nothing upstream does.
    # The retrained runs' stores are captured again.
    assert ran(rerun) == sorted([("performance", None), *jobs_after_training({"frozen", "lora"}, dynamics=False)]), rerun
    assert not set(records) & set(full_run.submitted)


def test_a_failed_job_names_its_logs_and_the_rerun_resubmits_only_it_and_its_dependents(workdir, full_run):
    # The frozen run is lost and, in its place, a regular file sits where the run keeps its resume
    # state folder: the job fails inside SLURM after its first epoch.
    shutil.rmtree(workdir / FROZEN_RUN)
    blocker = workdir / FROZEN_RUN / ".resume"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder\n")
    # The run and the table that reads it (the run's own downstream jobs are the test above's).
    targets = (str(FROZEN_RUN / "metrics.json"), "results/tables/performance.csv")
    failed = slurm_snakemake(workdir, *targets, config=LR_CHANGED)
    assert failed.returncode != 0, failed
    assert ran(failed) == [("train", "frozen")], failed
    [(slurm_id, record)] = failed.sacct().items()
    assert record["State"] == "FAILED", record
    # Both logs are named: SLURM's own (kept, since the job failed) and the rule's.
    slurm_log = failed.submitted[slurm_id]
    assert slurm_log.is_file() and slurm_log.parent.parent.name == "rule_train", slurm_log
    assert f"{slurm_log}" in failed.output.split("Error in rule train", 1)[-1], failed
    rule_log = "results/logs/train/demo/holdout/tiny/frozen/none/r0/seed0/fold1.log"
    assert f"log: {rule_log}" in failed.output, failed
    assert (workdir / rule_log).is_file()
    # show-failed-logs: the rule's log, with the cause, is on the console.
    assert "FileExistsError" in failed.output and ".resume" in failed.output, failed

    blocker.unlink()
    rerun = slurm_snakemake(workdir, *targets, config=LR_CHANGED)
    completed_as_logged(rerun)
    assert ran(rerun) == [("performance", None), ("train", "frozen")], rerun


# One training run, forced to run again with a GPU requested. A GPU job asks for cpus_per_gpu
# CPUs per GPU (4 by default), more than this 2-core node has: the site's override sets 1.
GPU_JOB = (str(RUN / "metrics.json"), "--forcerun", "train", "--set-resources", "train:cpus_per_gpu=1")


def test_a_gpu_request_on_a_cluster_without_gpus_fails_at_submission(workdir, full_run):
    run = slurm_snakemake(workdir, *GPU_JOB, config=GPU_REQUESTED)
    assert run.returncode != 0, run
    assert "sbatch: error: Invalid generic resource (gres) specification" in run.output, run
    assert "--gpus=1" in run.output
    assert not run.submitted
    # At once: nothing waits in a queue for a GPU that no node has.
    assert run.seconds < 60, run


def test_with_fake_gpus_the_gpu_request_is_scheduled_and_the_job_stops_without_cuda(workdir, full_run):
    cluster_action("up", fake_gpus=1)
    run = slurm_snakemake(workdir, *GPU_JOB, config=GPU_REQUESTED)
    assert ran(run) == [("train", "lora")], run
    [(slurm_id, record)] = run.sacct().items()
    assert "gres/gpu=1" in record["AllocTRES"].split(","), record
    # The fake GPU has no CUDA behind it: the job stops at once, saying so, instead of training on
    # the CPU (workflow_scripts.cluster.check_gpu_allocation).
    assert run.returncode != 0 and record["State"] == "FAILED", run
    assert f"SLURM job {slurm_id} asked for 1 GPU(s)" in run.output and "torch sees 0" in run.output, run
