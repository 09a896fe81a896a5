"""Write outputs so that a failed or killed job never leaves one that looks complete.

Everything is written to a hidden temporary sibling first and renamed into place only when
the writer returns without an exception. ``os.replace`` within one directory is atomic on
POSIX file systems, so a reader sees either the old output, no output, or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_permissions(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes the umask allows.

    ``mkdtemp`` makes its folder private (0700) and some writers (safetensors) make private
    files; on a shared cluster other users of the project must be able to read results.
    """
    mask = _current_umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; move it onto ``final`` on success.

    With ``directory=True`` the temporary path is an existing empty directory (for Zarr stores
    and checkpoint folders); otherwise it does not exist yet and the caller creates the file.
    An existing ``final`` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    work = tmp if directory else tmp / final.name
    try:
        yield work
        if not work.exists():
            raise FileNotFoundError(f"the writer did not create {work} (meant for {final})")
        _open_permissions(work)
        if final.is_dir() and not final.is_symlink():
            # os.replace cannot overwrite a non-empty directory: move the old one aside first.
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(work, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, final)
    finally:
        if tmp.exists():
            _remove(tmp)


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_table(path: str | os.PathLike, frame, provenance: dict | None = None) -> None:
    """Write a pandas DataFrame atomically; the format follows the suffix (parquet, csv, tsv).

    A Parquet file carries ``provenance`` in its schema metadata (key ``loralens``).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if provenance is not None:
                meta = dict(table.schema.metadata or {})
                meta[b"loralens"] = json.dumps(provenance, sort_keys=True, default=str).encode()
                table = table.replace_schema_metadata(meta)
            pq.write_table(table, tmp)
        elif path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        elif path.suffix == ".tsv":
            frame.to_csv(tmp, index=False, sep="\t")
        else:
            raise ValueError(f"write_table: unsupported suffix {path.suffix!r} for {path}")
