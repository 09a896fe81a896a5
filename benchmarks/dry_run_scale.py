"""Benchmark: how long Snakemake takes to plan the whole workflow (``snakemake -n``) as the grid grows.

A user who scales seeds and ranks waits for the DAG before anything runs, often on a login node.
Each grid is config/config.yaml (its whisper-base model, demo corpus) with ``training:`` widened:
folds 1-5 of the 8-speaker loso_speaker protocol, methods lora, frozen, lora_init, lora_random
(a LoRA method runs targets x ranks variants, frozen one):

    100:  2 seeds x 3 ranks x 1 target set  x 5 folds -> 100 training runs (770 jobs)
    500:  5 seeds x 3 ranks x 2 target sets x 5 folds -> 475 (the grid of the earlier benchmark)
    2000: 8 seeds x 4 ranks x 4 target sets x 5 folds -> 1,960

The run count recorded is the number of ``train`` jobs of the dry run, with the job count of
every rule: the whole workflow is planned (training, captures, every analysis, aggregate,
figure and report job). Two modes:

* ``empty``: from an empty working directory (a fresh one per repeat): every job is planned.
* ``noop``: every output of the grid present, so Snakemake must report "Nothing to be done"
  (the benchmark fails loudly otherwise). In a temporary directory the data stage up to the
  fold tables runs for real (demo_corpus, manifest, folds; once, copied to each grid), since the
  ``folds`` checkpoint is read with pandas; every other job's outputs, as a dry run lists them,
  are created empty (a folder for an output the loaded rules mark ``directory()``) in
  topological order with increasing mtimes. Then ``snakemake --touch --forceall`` touches them
  in DAG order and records Snakemake's per-output metadata (.snakemake/metadata: params, code,
  input), which the rerun triggers of a real no-op plan read (a changed lr then reruns the
  trained runs); its 0.1 s pause per job is set to 0 (15,000 jobs in the 2000 grid; equal mtimes
  trigger nothing). ``--no-metadata`` skips this step; the results record the metadata found.
  A real run on a tiny model was ruled out: 770 jobs for the 100 grid, each a new process (the
  model jobs import torch, 5 s on a busy 2-core machine), is tens of minutes, hours for the others.

Each plan is timed as the wall time of its own ``python -m snakemake -n`` process (``--repeats``
times: the minimum and all kept), its peak memory as that process's max RSS (``os.wait4``); one
past ``--timeout`` is killed and recorded as timed out. Goals, on a 2-core machine: the 500 grid
plans in <= 30 s from empty and <= 15 s as a no-op; the 2000 grid within 4.5 x the 500 grid's
time, in both modes. Writes benchmarks/results/dry_run_scale.json (atomically, after each
measurement) with the goals met, the machine, the commit and the date::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/dry_run_scale.py                    # all of it
    PYTHONPATH=$PWD .venv/bin/python benchmarks/dry_run_scale.py --sizes 100 --repeats 1 --out /tmp/x.json
    # before/after on one machine: plan an older checkout's workflow with the same grids
    git worktree add /tmp/before 787e853 && PYTHONPATH=$PWD .venv/bin/python benchmarks/dry_run_scale.py \
        --workflow /tmp/before --out benchmarks/results/dry_run_scale_before.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FOLDS = [1, 2, 3, 4, 5]
METHODS = ["lora", "frozen", "lora_init", "lora_random"]
TARGETS = [["q_proj", "v_proj"], ["v_proj"], ["q_proj"], ["k_proj", "v_proj"]]
GRIDS = {
    "100": {"seeds": [0, 1], "ranks": [4, 8, 16], "targets": TARGETS[:1]},
    "500": {"seeds": [0, 1, 2, 3, 4], "ranks": [4, 8, 16], "targets": TARGETS[:2]},
    "2000": {"seeds": list(range(8)), "ranks": [4, 8, 16, 32], "targets": TARGETS},
}
GOALS = {"500_empty_seconds": 30, "500_noop_seconds": 15, "2000_over_500_ratio": 4.5}
NOTHING_TO_DO = "Nothing to be done"
#: The loralens checkout whose workflow is planned (--workflow: an older commit, for before/after).
WORKFLOW = REPO


def environment() -> dict:
    pythonpath = os.pathsep.join(filter(None, [str(WORKFLOW), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1"}


# The rules' directory() flags, from the workflow as Snakemake loads it (argv: workdir, config, out).
DIRECTORY_FLAGS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.io import is_flagged
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
workdir, config, out, snakefile = sys.argv[1:]
with SnakemakeApi(OutputSettings()) as api:
    settings = ConfigSettings(configfiles=[Path(config)], replace_workflow_config=True)
    workflow = api.workflow(ResourceSettings(cores=1), settings, snakefile=Path(snakefile),
                            workdir=Path(workdir))._workflow
    flags = {rule.name: [is_flagged(f, "directory") for f in rule.output] for rule in workflow.rules}
Path(out).write_text(json.dumps(flags))
"""
# `snakemake --touch` without its 0.1 s pause per job (15,000 jobs in the 2000 grid).
TOUCH = ("import snakemake.cli, snakemake.executors.touch as t; t.Executor.SLEEPING_TIME = 0; "
         "snakemake.cli.main()")


def write_config(workdir: Path, size: str) -> Path:
    config = yaml.safe_load((WORKFLOW / "config" / "config.yaml").read_text())
    config["training"].update(GRIDS[size], folds=FOLDS, methods=METHODS)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir / "config.yaml"


def snakemake(workdir: Path, *args: str, code: str | None = None) -> list[str]:
    head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "snakemake"]
    return [*head, "--snakefile", str(WORKFLOW / "Snakefile"), "--directory", str(workdir), "--configfile",
            str(workdir / "config.yaml"), "--replace-workflow-config", "--cores", "2", *args]


def run(command: list[str], timeout: float, cwd: Path) -> dict:
    """Runs ``command``; its wall time, max RSS (its own, by wait4), exit status and output."""
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=environment(),
                                   start_new_session=True)
        timer = threading.Timer(timeout, os.killpg, (process.pid, signal.SIGKILL))
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    return {"seconds": seconds, "max_rss_mib": usage.ru_maxrss / 1024, "returncode": process.returncode,
            "timed_out": seconds >= timeout and process.returncode < 0, "text": text}


def job_stats(text: str) -> dict:
    """{rule: count, "total": n} from a dry run's "Job stats" table."""
    if "Job stats:" not in text:
        return {}
    table = text[text.index("Job stats:"):].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def planned_jobs(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(rule, inputs, outputs) of each job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:\n)", text)[1:]:
        lines = block.splitlines()
        fields = dict(m.groups() for m in map(re.compile(r"    (\w+): (.*)").fullmatch, lines[1:]) if m)
        split = lambda key: fields[key].split(", ") if fields.get(key) else []  # noqa: E731
        jobs.append((lines[0].split()[1].rstrip(":"), split("input"), split("output")))
    return jobs


def topological(jobs: list) -> list:
    """``jobs`` ordered so that each comes after the jobs that make its inputs."""
    maker = {path: i for i, (_, _, outputs) in enumerate(jobs) for path in outputs}
    order, state = [], {}
    for start in range(len(jobs)):
        stack = [(start, False)]
        while stack:
            i, done = stack.pop()
            if done:
                state[i] = 2
                order.append(jobs[i])
            elif i not in state:
                state[i] = 1
                stack.append((i, True))
                stack += [(maker[p], False) for p in jobs[i][1] if p in maker and maker[p] not in state]
    return order


def fail(message: str, text: str = "") -> None:
    raise RuntimeError(f"{message}\n{text[-4000:]}")


def check(result: dict, message: str) -> None:
    if result["returncode"] != 0:
        fail(message + (" (timed out)" if result["timed_out"] else ""), result["text"])


def prepare_data(base: Path, timeout: float) -> None:
    """The real data stage up to the fold tables, once (copied to each grid's directory)."""
    config = yaml.safe_load(write_config(base, "100").read_text())
    tables = [f"results/data/{dataset}/folds/{protocol}.parquet" for dataset in config["datasets"]
              for protocol in config["training"]["protocols"]]
    check(run(snakemake(base, *tables), timeout, base), "the data stage failed")
    import pandas as pd

    for table in tables:
        folds = set(pd.read_parquet(base / table, columns=["fold"])["fold"].tolist())
        if not set(FOLDS) <= folds:
            fail(f"{table} has folds {sorted(folds)}; the grids need {FOLDS}")


def prepare_noop(workdir: Path, size: str, base: Path, plans: dict, args) -> dict:
    """``workdir`` with every output of grid ``size`` present (see the module docstring)."""
    shutil.copytree(base, workdir, symlinks=True)
    write_config(workdir, size)
    if size in plans and plans[size] is None:
        fail(f"grid {size}: its plan from empty timed out: no list of its jobs to create")
    if size not in plans:  # no plan from empty measured to list the jobs: plan here
        plan = run(snakemake(workdir, "-n"), args.timeout, workdir)
        check(plan, f"planning grid {size} failed")
        plans[size] = plan["text"]
    out = workdir.parent / f"directory_flags_{size}.json"
    flags = [sys.executable, "-c", DIRECTORY_FLAGS, str(workdir), str(workdir / "config.yaml"), str(out),
             str(WORKFLOW / "Snakefile")]
    check(run(flags, args.timeout, workdir), "loading the rules failed")
    directories = json.loads(out.read_text())
    jobs, created, now = topological(planned_jobs(plans[size])), 0, time.time()
    step = 1e-4  # seconds between successive jobs' mtimes, all in the past
    for i, (rule, _, outputs) in enumerate(jobs):
        if len(outputs) != len(directories[rule]):
            fail(f"rule {rule}: {len(outputs)} outputs listed, {len(directories[rule])} declared")
        mtime = now - (len(jobs) - i) * step
        for path, is_directory in zip(outputs, directories[rule]):
            target = workdir / path
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.mkdir() if is_directory else target.touch()
            os.utime(target, (mtime, mtime))
            created += 1
    info = {"jobs_listed": len(jobs), "outputs_created": created, "touch_seconds": None}
    if args.metadata:
        touch = run(snakemake(workdir, "--touch", "--forceall", code=TOUCH), args.timeout, workdir)
        check(touch, f"snakemake --touch failed for grid {size}")
        info["touch_seconds"] = touch["seconds"]
    # Metadata for every output: all the touched jobs' (else only the data stage's).
    info["metadata_records"] = sum(p.is_file() for p in (workdir / ".snakemake" / "metadata").rglob("*"))
    info["metadata_for_every_output"] = args.metadata
    if args.metadata and info["metadata_records"] < created:
        fail(f"grid {size}: {info['metadata_records']} metadata records for {created} created outputs")
    return info


def measure(size: str, mode: str, args, base: Path, tmp: Path, plans: dict) -> dict:
    entry = {"size": size, "mode": mode, "grid": {**GRIDS[size], "folds": FOLDS, "methods": METHODS},
             "runs": []}
    if mode == "noop":
        workdir = tmp / f"noop_{size}"
        entry["preparation"] = prepare_noop(workdir, size, base, plans, args)
        entry["jobs"] = job_stats(plans[size])  # what the no-op plan finds done
        entry["training_runs"] = entry["jobs"].get("train")
    for _ in range(args.repeats):
        if mode == "empty":
            workdir = tmp / f"empty_{size}_{len(entry['runs'])}"
            write_config(workdir, size)
        result = run(snakemake(workdir, "-n"), args.timeout, workdir)
        text = result.pop("text")
        if result["timed_out"]:
            result["seconds"] = None
            if mode == "empty":
                plans.setdefault(size, None)  # the no-op mode cannot list this grid's jobs
        elif result["returncode"] != 0:
            fail(f"snakemake -n failed (grid {size}, {mode})", text)
        elif mode == "noop" and NOTHING_TO_DO not in text:
            fail(f"grid {size}: the no-op plan wants to run jobs ({job_stats(text).get('total')})", text)
        elif mode == "empty":
            plans[size] = text
            entry["jobs"] = job_stats(text)
            entry["training_runs"] = entry["jobs"].get("train")
        entry["runs"].append(result)
        took = "timed out" if result["timed_out"] else f"{result['seconds']:.1f} s"
        print(f"grid {size} {mode}: {took}, {result['max_rss_mib']:.0f} MiB, "
              f"{entry.get('training_runs')} training runs", flush=True)
        if result["timed_out"]:
            break
    done = [r for r in entry["runs"] if r["seconds"] is not None]
    entry["seconds_min"] = min((r["seconds"] for r in done), default=None)
    entry["max_rss_mib"] = max((r["max_rss_mib"] for r in done), default=None)
    entry["timed_out"] = len(done) < len(entry["runs"])
    return entry


def goals(results: dict) -> dict:
    """Each goal: its value, bound and whether it was met (false if a plan it needs timed out,
    null if one was not measured)."""
    def best(size: str, mode: str) -> tuple[float | None, bool]:
        entry = results.get(f"{size}_{mode}") or {}
        return entry.get("seconds_min"), bool(entry.get("timed_out"))

    checks = {}
    for mode in ("empty", "noop"):
        checks[f"500_{mode}_seconds"] = (*best("500", mode), GOALS[f"500_{mode}_seconds"])
        (large, late), (small, _) = best("2000", mode), best("500", mode)
        ratio = large / small if large and small else None
        checks[f"2000_over_500_ratio_{mode}"] = (ratio, late and bool(small), GOALS["2000_over_500_ratio"])
    return {name: {"value": value, "goal_at_most": goal, "timed_out": late,
                   "met": False if late else None if value is None else value <= goal}
            for name, (value, late, goal) in checks.items()}


def git(*command: str) -> str:
    return subprocess.run(["git", *command], cwd=WORKFLOW, capture_output=True, text=True).stdout.strip()


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
    os.replace(handle.name, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,500,2000", help="grids, of " + ",".join(GRIDS))
    parser.add_argument("--modes", default="empty,noop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per snakemake process")
    parser.add_argument("--no-metadata", dest="metadata", action="store_false", help="skip snakemake --touch")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument("--workflow", type=Path, default=REPO,
                        help="the loralens checkout to plan (default: this one; an older commit for before/after)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dry_run_scale.json")
    args = parser.parse_args()
    global WORKFLOW
    WORKFLOW = args.workflow.resolve()
    sizes, modes = args.sizes.split(","), args.modes.split(",")
    if not set(sizes) <= set(GRIDS) or not set(modes) <= {"empty", "noop"}:
        parser.error(f"--sizes: of {list(GRIDS)}; --modes: of empty, noop")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    data = {"benchmark": "dry_run_scale", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "workflow": str(WORKFLOW), "commit": git("rev-parse", "HEAD"),
            "worktree_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "machine": {"processor": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
                        "snakemake": metadata.version("snakemake"), "load_average_at_start": os.getloadavg()},
            "settings": {"repeats": args.repeats, "timeout_s": args.timeout, "metadata": args.metadata},
            "results": {}, "goals": {}}
    tmp = Path(tempfile.mkdtemp(prefix="dry_run_scale_"))
    base, plans, failed, data_error = tmp / "data_stage", {}, False, None
    try:
        try:
            if "noop" in modes:
                prepare_data(base, args.timeout)
        except RuntimeError as error:
            data_error = error
        for size in sizes:
            for mode in modes:
                try:
                    if mode == "noop" and data_error:
                        raise data_error
                    data["results"][f"{size}_{mode}"] = measure(size, mode, args, base, tmp, plans)
                except RuntimeError as error:
                    failed = True
                    print(f"grid {size} {mode}: FAILED: {error}", file=sys.stderr, flush=True)
                    message = str(error)
                    data["results"][f"{size}_{mode}"] = {"size": size, "mode": mode, "error": message[:4000],
                                                         "timed_out": "timed out" in message.splitlines()[0]}
                data["goals"] = goals(data["results"])
                data["machine"]["load_average_at_end"] = os.getloadavg()
                write(args.out, data)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for key, entry in data["results"].items():
        print(key, {k: entry.get(k) for k in ("training_runs", "seconds_min", "max_rss_mib")},
              (entry.get("error") or "").split("\n")[0])
    print(json.dumps({name: goal["met"] for name, goal in data["goals"].items()}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
