"""The default run's time, and where it goes: per rule, from Snakemake's own log.

Run the main command (``snakemake --cores 2``) in a clean checkout, or read the log of one that
ran, and write its wall time and, per rule, the jobs and the summed job time (each job from the
log line that starts it to the one that says it finished; one-second resolution). Two checkouts
measured one after the other on one machine give the side-by-side comparison the README quotes
(the issue-20 budget: the training dynamics may add at most 25 % to the default run)::

    python benchmarks/default_run.py --checkout /tmp/base --label before --out benchmarks/results/default_run.json
    python benchmarks/default_run.py --checkout /tmp/new --label after --out benchmarks/results/default_run.json

``--log`` reads an existing log (``.snakemake/log/*.snakemake.log`` or the console output)
instead of running; results of several labels accumulate in one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")
#: The rules of the training dynamics (rules/dynamics.smk) and the report jobs that exist only for it.
DYNAMICS_RULES = ("capture_checkpoint", "dynamics_representation", "dynamics_readouts", "dynamics_weights",
                  "dynamics_intruders", "dynamics_summary")
DYNAMICS_REPORT = ("dynamics_representation", "dynamics_readouts", "dynamics_weights", "dynamics_intruders",
                   "dynamics_heatmaps")


def jobs_of(lines: list[str]) -> list[dict]:
    """Every finished job of a Snakemake log: rule, wildcards, seconds (start line to finish line)."""
    now, pending, started, jobs = None, None, {}, []
    for line in lines:
        line = line.rstrip("\n")
        if stamp := STAMP.match(line):
            now = datetime.strptime(" ".join(stamp.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif start := START.match(line):
            pending = {"rule": start.group(1), "wildcards": {}, "began": now}
        elif (jobid := JOBID.match(line)) and pending:
            started[jobid.group(1)] = pending
        elif (wildcards := WILDCARDS.match(line)) and pending:
            pending["wildcards"] = dict(pair.split("=", 1) for pair in wildcards.group(1).split(", "))
        elif finished := FINISHED.match(line):
            job = started.pop(finished.group(1), {"rule": finished.group(2), "wildcards": {}, "began": now})
            began = job.pop("began")
            jobs.append({**job, "seconds": (now - began).total_seconds() if began and now else 0.0})
    return jobs


def is_dynamics(job: dict) -> bool:
    """A job of the training dynamics: its rules, and the report's aggregates and figures of its tables."""
    wildcards = job["wildcards"]
    return job["rule"] in DYNAMICS_RULES or (wildcards.get("analysis") or wildcards.get("figure")) in DYNAMICS_REPORT


def job_times(jobs: list[dict]) -> dict[str, dict]:
    """{rule: {"jobs": n, "seconds": summed job time}}."""
    per_rule: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0})
    for job in jobs:
        per_rule[job["rule"]]["jobs"] += 1
        per_rule[job["rule"]]["seconds"] += job["seconds"]
    return dict(sorted(per_rule.items()))


def dynamics_share(jobs: list[dict]) -> dict:
    """Job seconds of the training dynamics against the rest of the same run (both ran side by side,
    two at a time, so their ratio is the dynamics' share of the wall time), also per checkpoint."""
    dynamics = [job for job in jobs if is_dynamics(job)]
    rest = sum(job["seconds"] for job in jobs if not is_dynamics(job))
    per_checkpoint = defaultdict(float)
    for job in dynamics:
        per_checkpoint[job["wildcards"].get("checkpoint", "(across checkpoints)")] += job["seconds"]
    seconds = sum(job["seconds"] for job in dynamics)
    return {"dynamics_job_seconds": seconds, "other_job_seconds": rest, "dynamics_jobs": len(dynamics),
            "added_fraction": seconds / rest if rest else None, "per_checkpoint": dict(sorted(per_checkpoint.items()))}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def commit_of(checkout: Path) -> str:
    result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip()


def run_default(checkout: Path, cores: int) -> tuple[list[str], float, int]:
    """``snakemake --cores N`` in ``checkout`` (the README's main command); its log lines, wall
    seconds and exit code."""
    snakemake = Path(sys.executable).with_name("snakemake")
    started = time.monotonic()
    result = subprocess.run([str(snakemake), "--cores", str(cores)], cwd=checkout, capture_output=True, text=True)
    seconds = time.monotonic() - started
    return (result.stdout + result.stderr).splitlines(), seconds, result.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, help="a checkout to run the default in (its results/ empty)")
    parser.add_argument("--log", type=Path, help="read this log instead of running")
    parser.add_argument("--wall-seconds", type=float, help="with --log: the run's wall time, if known")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--label", required=True, help="what this measurement is (before, after, ...)")
    parser.add_argument("--note", default="", help="conditions worth recording (what else ran, ...)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file; labels accumulate in it")
    args = parser.parse_args(argv)
    if (args.checkout is None) == (args.log is None):
        parser.error("give --checkout (run) or --log (read), not both")
    if args.checkout is not None:
        if (args.checkout / "results").exists():
            parser.error(f"{args.checkout / 'results'} exists: the default run is measured from nothing")
        lines, seconds, returncode = run_default(args.checkout, args.cores)
        commit = commit_of(args.checkout)
    else:
        lines, seconds, returncode = args.log.read_text().splitlines(), args.wall_seconds, None
        commit = None
    jobs = jobs_of(lines)
    rules = job_times(jobs)
    record = {
        "label": args.label, "commit": commit, "wall_seconds": seconds, "returncode": returncode,
        "jobs": sum(rule["jobs"] for rule in rules.values()),
        "job_seconds": sum(rule["seconds"] for rule in rules.values()),
        "dynamics": dynamics_share(jobs), "rules": rules, "machine": machine(), "cores": args.cores, "note": args.note,
        "measured": datetime.now().isoformat(timespec="seconds"),
    }
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.label] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "rules"}, indent=1))


if __name__ == "__main__":
    main()
