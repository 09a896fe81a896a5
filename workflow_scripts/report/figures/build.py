"""Drawing a figure of the registry from its tables: :func:`read_table` and :func:`build_figure`,
which checks the tables and options against the figure's :class:`~.registry.FigureSpec` and calls
its function (imported only now)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.report.figures.registry import FIGURES


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A table (.parquet or .csv) or an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: {path} does not exist")
    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as error:  # pyarrow and pandas raise several types for an unreadable file
        raise InputError(f"{what}: {path} is not a readable {'CSV' if path.suffix.lower() == '.csv' else 'Parquet'} "
                         f"table ({error})") from error


def build_figure(name: str, tables: dict[str, pd.DataFrame], paired: dict[str, pd.DataFrame] | None = None,
                 reference: pd.DataFrame | None = None, options: dict | None = None):
    """Figure ``name`` of the registry from its tables (InputError when one is missing or extra)."""
    if name not in FIGURES:
        raise InputError(f"unknown figure {name!r}; known: {sorted(FIGURES)}")
    spec, paired, options = FIGURES[name], paired or {}, options or {}
    missing = [t for t in spec.tables if t not in tables]
    missing += [f"paired {t}" for t in spec.paired if t not in paired]
    if missing:
        raise InputError(f"figure {name}: missing table(s) {missing}; it takes --table {list(spec.tables)}"
                         + (f" and --paired {list(spec.paired + spec.optional_paired)}" if spec.paired
                            or spec.optional_paired else ""))
    extra = sorted(set(tables) - set(spec.tables)) + [f"paired {t}" for t in sorted(
        set(paired) - set(spec.paired + spec.optional_paired))]
    if extra:
        raise InputError(f"figure {name}: does not take table(s) {extra}")
    function = spec.draw
    parameters = inspect.signature(function).parameters
    arguments = [tables[t] for t in spec.tables] + [paired[t] for t in spec.paired]
    arguments += [paired.get(t) for t in spec.optional_paired]
    keywords = dict(options)
    if reference is not None:
        if spec.paper == "new":
            raise InputError(f"figure {name} has no counterpart in the paper: no --reference")
        keywords["reference"] = reference
    taken = list(parameters)[len(arguments):]
    unknown = sorted(set(keywords) - set(taken))
    if unknown:
        options_taken = [p for p in taken if p != "reference"]
        raise InputError(f"figure {name}: unknown option(s) {unknown}; it takes {options_taken}")
    return function(*arguments, **keywords)
