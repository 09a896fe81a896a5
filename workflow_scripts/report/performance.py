"""The performance table: UAR, WAR and macro-F1 over folds and seeds, per configuration.

One row per (dataset, protocol, model, method, targets, rank): the mean, the sample standard
deviation (the population one, ``np.std`` as the original printed, is in the CSV too) and a
95 % t-interval of the mean over every fold and seed that ran. Runs whose best epoch was picked
on the test fold (``legacy``) are marked, since their numbers are optimistic.

Writes ``performance.csv`` (every number) and ``performance.md`` (shaped like the paper's table).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from workflow_scripts.atomic import atomic_path, write_table
from workflow_scripts.cli import entry_parser, run_main
from workflow_scripts.metrics import summarize

log = logging.getLogger(__name__)

CONFIGURATION = ["dataset", "protocol", "model", "method", "targets", "rank"]
METRICS = {"uar": "UAR", "war": "WAR", "macro_f1": "macro-F1"}


def collect(paths: list[str]) -> pd.DataFrame:
    """One row per run: its configuration, seed, fold, test metrics and parameter counts."""
    rows = []
    for path in paths:
        metrics = json.loads(Path(path).read_text())
        rows.append({
            **{k: metrics[k] for k in CONFIGURATION + ["seed", "fold"]},
            **{k: metrics["test"][k] for k in METRICS},
            "trainable_parameters": metrics["trainable_parameters"],
            "selected_on_test": metrics["selected_on_test"],
        })
    return pd.DataFrame(rows)


def performance_table(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for key, group in runs.groupby(CONFIGURATION, sort=True):
        row = dict(zip(CONFIGURATION, key))
        row.update({"runs": len(group), "seeds": group["seed"].nunique(), "folds": group["fold"].nunique(),
                    "trainable_parameters": int(group["trainable_parameters"].iloc[0]),
                    "selected_on_test": bool(group["selected_on_test"].any())})
        for metric in METRICS:
            summary = summarize(group[metric])
            row.update({f"{metric}_{k}": v for k, v in summary.items() if k != "n"})
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if pd.isna(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f} [{row[f'{metric}_ci_low']:.3f}, {row[f'{metric}_ci_high']:.3f}]"


def markdown(table: pd.DataFrame) -> str:
    lines = [
        "| dataset | protocol | model | method | targets | rank | trainable params | runs (seeds × folds) | "
        + " | ".join(METRICS.values()) + " |",
        "|" + "---|" * (8 + len(METRICS)),
    ]
    for _, row in table.iterrows():
        method = row["method"] + (" (selected on test)" if row["selected_on_test"] else "")
        targets = "" if row["targets"] == "none" else row["targets"].replace("+", ", ")
        rank = "" if row["rank"] == 0 else str(row["rank"])
        lines.append(
            f"| {row['dataset']} | {row['protocol']} | {row['model']} | {method} | {targets} | {rank} | "
            f"{row['trainable_parameters']:,} | {row['runs']} ({row['seeds']} × {row['folds']}) | "
            + " | ".join(_cell(row, m) for m in METRICS) + " |"
        )
    lines += ["", "Test-fold metrics: mean ± sample std [95 % t-interval of the mean] over folds and seeds."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.report.performance", __doc__, settings=False)
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json of every run")
    parser.add_argument("--csv", required=True)
    parser.add_argument("--md", required=True)
    args = parser.parse_args(argv)
    table = performance_table(collect(args.metrics))
    write_table(args.csv, table)
    with atomic_path(args.md) as tmp:
        tmp.write_text(markdown(table))
    log.info("performance over %d runs:\n%s", len(args.metrics), markdown(table))


if __name__ == "__main__":
    run_main(main)
