"""Benchmark: how long Snakemake takes to plan a large grid (``snakemake -n``).

A user who scales seeds and ranks waits for the DAG before anything runs, on a login node. The
grid here is the default config's with 5 seeds x 3 ranks x 2 target sets x 5 folds (every LoRA
method, the frozen baseline and both untrained references: 475 training runs), planned from an
empty working directory, so every job of the workflow is in the DAG. Goal: at most 30 s.

Writes ``benchmarks/results/dry_run_scale.json``::

    .venv/bin/python benchmarks/dry_run_scale.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
GRID = {"seeds": [0, 1, 2, 3, 4], "ranks": [4, 8, 16], "targets": [["q_proj", "v_proj"], ["v_proj"]],
        "folds": [1, 2, 3, 4, 5], "methods": ["lora", "frozen", "lora_init", "lora_random"]}


def dry_run(workdir: Path) -> tuple[float, Counter]:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["training"].update(GRID)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory",
         str(workdir), "--configfile", str(workdir / "config.yaml"), "--replace-workflow-config", "--cores", "2"],
        capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{result.stderr[-3000:]}")
    # The job-stats table of a dry run: "<rule>  <count>" lines after "job count".
    text = result.stdout + result.stderr
    stats = text[text.index("Job stats:"):] if "Job stats:" in text else text
    counts = Counter({m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)})
    return seconds, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dry_run_scale.json"))
    args = parser.parse_args()
    timings, counts = [], Counter()
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, counts = dry_run(Path(tmp))
            timings.append(seconds)
        print(f"snakemake -n: {seconds:.1f} s, {counts.get('total')} jobs ({counts.get('train')} train)", flush=True)
    result = {
        "benchmark": "dry_run_scale",
        "grid": GRID,
        "jobs": dict(counts),
        "seconds": timings,
        "seconds_min": min(timings),
        "goal_seconds": 30,
        "machine": {"processor": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("jobs", "seconds_min")}))


if __name__ == "__main__":
    main()
