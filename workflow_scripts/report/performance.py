"""The performance table: UAR, WAR and macro-F1 over folds and seeds, per configuration.

One row per (dataset, protocol, model, method, targets, rank) and selection metric. Folds are
the independent samples; seeds are repeated runs on the same fold, so the seeds of each fold are
averaged first, by the report's one rule (:func:`workflow_scripts.report.statistics.summarize`).
Per metric the table has the mean of the fold means, their sample standard deviation (and the
population std, ``np.std`` as the original printed), the seed-to-seed spread (the pooled
within-fold sample std across seeds) and the interval over the fold means: a 95 % t-interval
(df = folds − 1, clipped to the metrics' range [0, 1]) from 5 folds on, the range of 2-4 fold
means (a range, not a confidence interval), and with one fold the same over its seeds, on fixed
test clips; ``{metric}_interval`` names which. The markdown prints "—" for every quantity that
needs two folds (or two seeds).

Runs whose best epoch was picked on the test fold (``legacy``) are marked, since their numbers
are optimistic, and so is a selection on a metric other than UAR (``select_metric`` in
``metrics.json``; files that lack it selected on UAR).

Above the table, the header says how LoRA's alpha was chosen across ranks, as the runs recorded
it (``lora_alpha`` and ``lora_alpha_policy`` in ``metrics.json``): fixed for every rank, as the
original notebook, or proportional to the rank. With ``--reference`` (``report.paper_reference``)
it also gives the paper's T1 (mean ± std over its folds, the std with ddof 0, ``np.std``) and the
table gains the population std (ddof 0) of UAR and WAR over the fold means, to compare like with
like.

Writes ``performance.csv`` (every number) and ``performance.md`` (shaped like the paper's table).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from workflow_scripts.analyses.registry import CONFIGURATION as ANALYSIS_CONFIGURATION
from workflow_scripts.atomic import atomic_path, write_table
from workflow_scripts.cli import entry_parser, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.report.statistics import summarize
from workflow_scripts.report.html import table_page
from workflow_scripts.report.performance_header import alpha_line, paper_line

log = logging.getLogger(__name__)

CONFIGURATION = list(ANALYSIS_CONFIGURATION)  # the columns of a configuration, as every report table has them
METRICS = {"uar": "UAR", "war": "WAR", "macro_f1": "macro-F1"}
METRIC_RANGE = (0.0, 1.0)  # every metric in METRICS is a proportion
DEFAULT_SELECT_METRIC = "uar"  # what runs recorded before metrics.json carried select_metric used
NOT_ESTIMABLE = "—"
NO_SELECTION = "none"  # select_metric of the untrained references, which select no epoch
SUMMARY = ("mean", "std", "seed_std", "ci_low", "ci_high", "interval")  # per metric, from the nested summary


def collect(paths: list[str]) -> pd.DataFrame:
    """One row per run: its configuration, selection metric, seed, fold, test metrics, parameter counts."""
    rows = []
    for path in paths:
        metrics = json.loads(Path(path).read_text())
        select_metric = metrics.get("select_metric", DEFAULT_SELECT_METRIC)
        if select_metric is None:  # an untrained reference: no epoch was selected
            select_metric = NO_SELECTION
        elif select_metric not in METRICS:
            raise InputError(f"{path}: select_metric is {select_metric!r}; expected one of {sorted(METRICS)}")
        rows.append({
            **{k: metrics[k] for k in CONFIGURATION + ["seed", "fold"]},
            "select_metric": select_metric,
            **{k: metrics["test"][k] for k in METRICS},
            "trainable_parameters": metrics["trainable_parameters"],
            "selected_on_test": metrics["selected_on_test"],
            # Files written before the run recorded its alpha lack these (None: not printed).
            "lora_alpha": metrics.get("lora_alpha"),
            "lora_alpha_policy": metrics.get("lora_alpha_policy"),
        })
    return pd.DataFrame(rows)


def performance_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration and selection metric; per metric ``{metric}_{mean, std, std_ddof0,
    seed_std, ci_low, ci_high, interval}`` of the nested summary (the interval clipped to [0, 1]);
    ``std_ddof0`` is the population std of the same units as ``std`` (0 with one)."""
    rows = []
    for key, group in runs.groupby(CONFIGURATION + ["select_metric"], sort=True):
        row = dict(zip(CONFIGURATION + ["select_metric"], key))
        row.update({"runs": len(group), "seeds": group["seed"].nunique(), "folds": group["fold"].nunique(),
                    "trainable_parameters": int(group["trainable_parameters"].iloc[0]),
                    "selected_on_test": bool(group["selected_on_test"].any())})
        for metric in METRICS:
            summary = summarize(group[metric].to_numpy(dtype=float), group["fold"].to_numpy(), bounds=METRIC_RANGE)
            units = summary["units"]
            std_ddof0 = summary["std"] * math.sqrt((units - 1) / units) if units >= 2 else 0.0
            row.update({f"{metric}_{k}": summary[k] for k in SUMMARY})
            row[f"{metric}_std_ddof0"] = std_ddof0
        row["units"] = summary["units"]
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value: float) -> str:
    return NOT_ESTIMABLE if pd.isna(value) else f"{value:.3f}"


def _cell(row: pd.Series, metric: str) -> str:
    """``mean ± std [t-interval]``, or ``mean ± std (range low–high)`` for 2-4 units."""
    low, high = (_number(row[f"{metric}_ci_{end}"]) for end in ("low", "high"))
    spread = f"{row[f'{metric}_mean']:.3f} ± {_number(row[f'{metric}_std'])}"
    if str(row[f"{metric}_interval"]).startswith("range"):
        return f"{spread} (range {low}–{high})"
    return f"{spread} [{low}, {high}]"


def _interval_cell(row: pd.Series) -> str:
    """What the interval is over, with how many: ``t95 over 5 folds``, ``range over 2 seeds (1 fold)``."""
    interval = str(row["uar_interval"])
    return interval if interval == "none" else interval.replace(" over ", f" over {row['units']} ", 1)


def _method(row: pd.Series) -> str:
    """The method, marked when its best epoch was chosen on the test fold or not on UAR."""
    if row["select_metric"] == NO_SELECTION:
        return row["method"]
    by = "" if row["select_metric"] == DEFAULT_SELECT_METRIC else f" by {METRICS[row['select_metric']]}"
    if row["selected_on_test"]:
        return f"{row['method']} (selected on test{by})"
    return f"{row['method']} (selected{by})" if by else row["method"]


COLUMNS = ["dataset", "protocol", "model", "method", "targets", "rank", "trainable params", "runs (seeds × folds)",
           "interval over", *METRICS.values(), "UAR seed std"]
# With the paper's values beside the table: its std is np.std (ddof 0), so the same, over the fold means.
DDOF0_METRICS = ("uar", "war")
DDOF0_COLUMNS = [f"{METRICS[m]} std (ddof 0)" for m in DDOF0_METRICS]
NOTE = ("Test-fold metrics: mean ± sample std of the fold means, each fold's seeds averaged first, then "
        "[the 95 % t-interval of the mean, df = folds − 1, clipped to [0, 1]] from 5 folds, or (the range) of "
        "2-4 fold means: a range, not a confidence interval. With one fold the same runs over its seeds, on "
        "fixed test clips: it says nothing about other speakers. 'interval over' names which, and over how "
        "many. UAR seed std: the pooled within-fold sample std across seeds. "
        f"{NOT_ESTIMABLE}: needs at least 2 folds (2 seeds for the seed std).")


def columns(ddof0: bool = False) -> list[str]:
    """:data:`COLUMNS`, with the population std columns when the paper's values are beside them."""
    return COLUMNS + DDOF0_COLUMNS if ddof0 else list(COLUMNS)


def cells(table: pd.DataFrame, ddof0: bool = False) -> list[list[str]]:
    """The table's rows as the text of :func:`columns`."""
    rows = []
    for _, row in table.iterrows():
        targets = "" if row["targets"] == "none" else row["targets"].replace("+", ", ")
        rank = "" if row["rank"] == 0 else str(row["rank"])
        rows.append([row["dataset"], row["protocol"], row["model"], _method(row), targets, rank,
                     f"{row['trainable_parameters']:,}", f"{row['runs']} ({row['seeds']} × {row['folds']})",
                     _interval_cell(row), *(_cell(row, m) for m in METRICS), _number(row["uar_seed_std"]),
                     *([_number(row[f"{m}_std_ddof0"]) for m in DDOF0_METRICS] if ddof0 else [])])
    return rows


def markdown(table: pd.DataFrame, header: tuple[str, ...] | list[str] = (), ddof0: bool = False) -> str:
    """The table under the ``header`` lines (alpha, the paper's values), above :data:`NOTE`."""
    names = columns(ddof0)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(row) + " |" for row in cells(table, ddof0)]
    top = [line for text in header for line in (text, "")]
    return "\n".join([*top, *lines, "", NOTE]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.report.performance", __doc__, settings=False)
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json of every run")
    parser.add_argument("--csv", required=True)
    parser.add_argument("--md", required=True)
    parser.add_argument("--html", help="the table as a page for the report")
    parser.add_argument("--reference", help="the paper's values (config/paper_reference.csv, rows T1): "
                                            "printed above the table, with the population std beside it")
    args = parser.parse_args(argv)
    runs = collect(args.metrics)
    table = performance_table(runs)
    header = [line for line in (alpha_line(runs), args.reference and paper_line(args.reference)) if line]
    ddof0 = args.reference is not None
    write_table(args.csv, table)
    with atomic_path(args.md) as tmp:
        tmp.write_text(markdown(table, header, ddof0))
    if args.html:
        with atomic_path(args.html) as tmp:
            tmp.write_text(table_page("loralens performance", columns(ddof0), cells(table, ddof0),
                                      " ".join([*header, NOTE])))
    log.info("performance over %d runs:\n%s", len(args.metrics), markdown(table))


if __name__ == "__main__":
    run_main(main)
