"""The report figures' table helpers: the columns every aggregated and paired table has, the
checks that name the figure and the missing column, the configurations drawn in a figure (order,
labels, colours) and the titles' text, from the tables' own ``runs``/``seeds``/``folds``/
``interval`` columns. The drawing helpers are in :mod:`.style`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.figure_style import MODULES
from workflow_scripts.report.statistics import ONE_FOLD

CONFIGURATION = ("dataset", "protocol", "model", "method", "targets", "rank")
PAIRED_CONFIGURATION = ("dataset", "protocol", "model", "targets", "rank")
SUMMARY = ("runs", "mean", "ci_low", "ci_high", "interval")
PAIRED_SUMMARY = ("pairs", "mean_difference", "ci_low", "ci_high", "interval", "t_p_holm")
#: The paired tests' level: a block is starred when its Holm-corrected p is below it.
ALPHA = 0.05
#: Order of the methods in legends and colours: the baseline first, then the trained LoRA.
METHOD_ORDER = ("frozen", "full", "lora", "lora_random", "lora_init")
PAPER_MODULE = "v_proj"  # the paper adapted v_proj only: its figures show that module
HOLM_LABEL = f"Holm-corrected paired t p < {ALPHA:g}"


# -- checks --------------------------------------------------------------------------------------

def require_columns(table: pd.DataFrame | None, figure: str, what: str, columns) -> None:
    """Raise an InputError naming ``figure`` when ``table`` (the ``what`` table) is absent or
    lacks any of ``columns``."""
    if table is None:
        raise InputError(f"figure {figure}: needs the {what} table")
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InputError(f"figure {figure}: the {what} table lacks column(s) {missing} "
                         f"(it has {list(table.columns)})")
    if table.empty:
        raise InputError(f"figure {figure}: the {what} table has no rows")


def require_values(table: pd.DataFrame, figure: str, what: str, column: str, values) -> None:
    """Raise an InputError naming ``figure`` when ``table[column]`` lacks any of ``values``."""
    present = set(table[column].dropna().unique())
    missing = [value for value in values if value not in present]
    if missing:
        raise InputError(f"figure {figure}: the {what} table has no rows with {column} {missing} "
                         f"(it has {sorted(map(str, present))})")


def _numbers(values) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)


# -- configurations, colours, titles -------------------------------------------------------------

def _field_text(field: str, value) -> str:
    """How a configuration field reads in a label ("r8"; nothing for frozen's rank 0 and targets)."""
    if pd.isna(value):
        return ""
    if field == "rank":
        return "" if int(value) == 0 else f"r{int(value)}"
    if field == "targets":
        return "" if value == "none" else str(value)
    return str(value)


def _sort_key(field: str, value):
    if field == "method":
        return (METHOD_ORDER.index(value) if value in METHOD_ORDER else len(METHOD_ORDER), str(value))
    if field == "rank":
        return (0, float(value)) if pd.notna(value) else (1, 0.0)
    return (0, str(value))


class Configurations:
    """The configurations drawn in one figure: a stable order, a label per configuration from
    the fields that differ between them, a colour each, and the text of the fields they share."""

    def __init__(self, tables, fields=CONFIGURATION):
        tables = [t for t in tables if t is not None and len(t)]
        self.fields = [f for f in fields if all(f in t.columns for t in tables)]
        rows = pd.concat([t[self.fields] for t in tables], ignore_index=True).drop_duplicates()
        keys = [tuple(row) for row in rows.itertuples(index=False)]
        self.keys = sorted(keys, key=lambda key: [_sort_key(f, v) for f, v in zip(self.fields, key)])
        # A field varies when its non-blank texts differ: frozen's targets "none" and rank 0 read
        # as blank, so LoRA r4, r8 and frozen are "lora r4", "lora r8", "frozen".
        self.varying = [f for i, f in enumerate(self.fields) if len(self._texts(i)) > 1]
        import seaborn as sns

        palette = sns.color_palette("colorblind", max(len(self.keys), 1))
        self._colours = {key: palette[i % len(palette)] for i, key in enumerate(self.keys)}

    def _texts(self, index: int) -> set[str]:
        return {text for key in self.keys if (text := _field_text(self.fields[index], key[index]))}

    def key(self, row: dict) -> tuple:
        return tuple(row[f] for f in self.fields)

    def label(self, key: tuple) -> str:
        parts = [_field_text(f, key[self.fields.index(f)]) for f in self.varying]
        text = " ".join(p for p in parts if p)
        if text:
            return text
        if "method" in self.fields:  # one configuration, or only frozen's blank fields differ
            return str(key[self.fields.index("method")])
        return "all runs"

    def colour(self, key: tuple):
        return self._colours.get(key, "grey")

    def zorder(self, key: tuple) -> float:
        """Lines of earlier configurations (the baseline first) on top: a frozen curve that an
        identical lora_init curve (B = 0) would cover stays visible."""
        position = self.keys.index(key) if key in self.keys else len(self.keys)
        return 2.0 + (len(self.keys) - position) / (len(self.keys) + 1)

    def common(self) -> str:
        """The fields every configuration shares, e.g. ``demo / loso_speaker / whisper-base``."""
        shared = [next(iter(self._texts(i)), "") for i, f in enumerate(self.fields) if f not in self.varying]
        return " / ".join(p for p in shared if p)

    def groups(self, table: pd.DataFrame):
        """``(key, rows)`` of ``table`` per configuration, in this set's order."""
        for key in self.keys:
            rows = table[self.mask(table, key)]
            if len(rows):
                yield key, rows

    def mask(self, table: pd.DataFrame, key: tuple) -> np.ndarray:
        """Which rows of ``table`` belong to configuration ``key`` (field by field: a Series
        compared with a tuple would compare element-wise)."""
        match = np.ones(len(table), dtype=bool)
        for field, value in zip(self.fields, key):
            column = table[field]
            match &= (column.isna() if pd.isna(value) else column == value).to_numpy(dtype=bool)
        return match


def _span(values: pd.Series, noun: str) -> str:
    numbers = _numbers(values)
    numbers = numbers[np.isfinite(numbers)].astype(int)
    if numbers.size == 0:
        return f"? {noun}"
    low, high = numbers.min(), numbers.max()
    count = f"{low}" if low == high else f"{low}–{high}"
    return f"{count} {noun}{'' if high == 1 else 's'}"


def _interval_description(kind: str) -> str:
    """An ``interval`` label as words: ``t95 over folds`` -> ``95 % t-interval over fold means``."""
    name, _, over = kind.partition(" over ")
    over = {"folds": "fold means", "fold pairs": "fold-pair means", ONE_FOLD: "seeds on one fold"}.get(over, over)
    if name.startswith("t") and name[1:].isdigit():
        return f"{name[1:]} % t-interval over {over}"
    return f"{name} over {over}"


def _interval_text(intervals: pd.Series) -> str:
    """What the bands are, from the tables' ``interval`` labels; with one fold, that the spread is
    over seeds on fixed test clips."""
    kinds = sorted(set(intervals.dropna().astype(str)) - {"none"})
    if not kinds:
        return "no band (one run)"
    text = "band: " + " and ".join(_interval_description(kind) for kind in kinds)
    if any(kind.endswith(ONE_FOLD) for kind in kinds):
        text += " (fixed test clips: says nothing about other speakers)"
    if (intervals.astype(str) == "none").any():
        text += ", none where one run"
    return text


def _summary_rows(tables, count: str) -> pd.DataFrame:
    tables = [t for t in tables if t is not None and len(t)]
    return pd.concat([t.reindex(columns=[count, "seeds", "folds", "interval"]) for t in tables], ignore_index=True)


def count_text(tables, count: str = "runs", noun: str = "run") -> str:
    """"mean over N runs (S seeds × F folds, seeds averaged within folds)" from the tables' own columns."""
    rows = _summary_rows(tables, count)
    text = f"mean over {_span(rows[count], noun)}"
    if rows["seeds"].notna().any() and rows["folds"].notna().any():
        text += f" ({_span(rows['seeds'], 'seed')} × {_span(rows['folds'], 'fold')}, seeds averaged within folds)"
    elif noun == "run":
        text += " (seeds × folds)"
    return text


def runs_text(tables, count: str = "runs", noun: str = "run") -> str:
    """"mean over N runs (S seeds × F folds, ...), band: 95 % t-interval over fold means" from the
    tables' own columns."""
    return f"{count_text(tables, count, noun)}, {_interval_text(_summary_rows(tables, count)['interval'])}"


def paired_text(paired: pd.DataFrame) -> str:
    """The paired table's line of a title: pairs, interval, the star's meaning."""
    return (f"LoRA − frozen: mean over {_span(paired['pairs'], 'paired run')} (same seed and fold; "
            "per fold the seeds' differences averaged, tests over folds), "
            f"{_interval_text(paired['interval'])}; ★ {HOLM_LABEL}")


def title_text(heading: str, configurations: Configurations, *lines: str) -> str:
    """Heading — shared fields; the configurations when several; then ``lines``."""
    common = configurations.common()
    listed = ""
    if len(configurations.keys) > 1:
        listed = f"{len(configurations.keys)} configurations: " + "; ".join(
            configurations.label(key) for key in configurations.keys)
    return "\n".join([heading + (f" — {common}" if common else ""), *[line for line in (listed, *lines) if line]])


# -- the module a figure shows --------------------------------------------------------------------

def _choose_module(table: pd.DataFrame, module: str | None, figure: str, what: str) -> str:
    modules = sorted(table["module"].dropna().unique(), key=lambda m: (MODULES.index(m) if m in MODULES else 99, m))
    if module is None:
        if not modules:
            raise InputError(f"figure {figure}: the {what} table has no modules")
        return PAPER_MODULE if PAPER_MODULE in modules else modules[0]
    if module not in modules:
        raise InputError(f"figure {figure}: module {module!r} is not in the {what} table (it has {modules})")
    return module

