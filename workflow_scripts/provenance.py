"""Provenance stamped into every output: what produced it, from which settings and code.

Parquet tables carry it in their key-value metadata (key ``loralens``) and Zarr stores in
their attributes, so it travels with the file. Print it with
``python -m workflow_scripts.provenance FILE``.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from workflow_scripts.config import config_hash

PACKAGES = (
    "torch", "torchaudio", "transformers", "peft", "zarr", "numpy", "pandas", "pyarrow",
    "scikit-learn", "soundfile", "snakemake",
)
METADATA_KEY = b"loralens"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The repository's commit, with ``-dirty`` when tracked files have uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(step: str, settings: Any, **extra: Any) -> dict:
    """A provenance record for output of ``step`` made with ``settings`` (a config slice)."""
    return {
        "step": step,
        "config_hash": config_hash(settings),
        "settings": settings,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "command": sys.argv,
        **extra,
    }


def read_provenance(path: str | Path) -> dict:
    """Read the record back from a Parquet file or a Zarr store."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
    import zarr

    return dict(zarr.open_group(str(path), mode="r").attrs.get("provenance", {}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workflow_scripts.provenance", description=__doc__)
    parser.add_argument("path", help="a .parquet file or a .zarr store written by loralens")
    args = parser.parse_args(argv)
    print(json.dumps(read_provenance(args.path), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
