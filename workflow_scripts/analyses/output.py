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


OUT_HELP = "the table (.parquet); the figure goes beside it (.png, .svg)"


def analysis_parser(module: str, doc: str | None, *, acts: bool = True, settings: bool = True):
    """The parser of an analysis entry point: settings (``--spec``/``--config``, unless the
    analysis has none), the run's wildcards, ``--acts`` (unless the analysis reads something
    else) and ``--out``."""
    from workflow_scripts.cli import entry_parser
    from workflow_scripts.runs import add_run_wildcards

    parser = entry_parser(module, doc, settings=settings)
    add_run_wildcards(parser)
    if acts:
        parser.add_argument("--acts", required=True, help="the run's acts.zarr")
    parser.add_argument("--out", required=True, help=OUT_HELP)
    return parser


def publish(table: pd.DataFrame, run: Run, out: str | Path, record: dict, make_figure, title: str) -> None:
    """Write an analysis's outputs: ``table`` with the run's columns and ``record`` (its
    provenance) at ``out``, and ``make_figure(table, title)`` beside it as PNG and SVG."""
    table = with_run_columns(table, run)
    write_analysis(table, out, record)
    save_figure(make_figure(table, f"{title}\n{run.id}"), Path(out).with_suffix(".png"))
