"""What every analysis writes: a tidy table with the run's wildcards, and a figure as PNG and SVG."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from workflow_scripts.atomic import atomic_path, write_table
from workflow_scripts.runs import Run


def with_run_columns(table: pd.DataFrame, run: Run) -> pd.DataFrame:
    """``table`` with the run's wildcards (dataset ... fold) and id as leading columns."""
    fields = {"run": run.id, **asdict(run)}
    return pd.concat([pd.DataFrame({k: [v] * len(table) for k, v in fields.items()}), table.reset_index(drop=True)],
                     axis=1)


def write_analysis(table: pd.DataFrame, out: str | Path, record: dict) -> None:
    """The tidy table, atomically, with its provenance in the Parquet metadata."""
    write_table(Path(out), table, provenance=record)


def save_figure(figure, png: str | Path) -> None:
    """``figure`` as ``png`` and as the SVG beside it (same name), each written atomically."""
    import matplotlib.pyplot as plt

    for path in (Path(png), Path(png).with_suffix(".svg")):
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(figure)
