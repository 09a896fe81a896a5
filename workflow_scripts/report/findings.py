"""The findings table: the paper's claims as numbers computed from this run's tables, each with
its interval over runs. Nothing here is written by hand; every row is a function of the tables.

Rows (``finding``, per configuration):

* ``first layer the normed lens agrees`` (paper F2, "delayed specialisation"): per run, the first
  residual layer whose normed-lens top-1 prediction agrees with the final decision on more than
  half of the test clips; summarised over the runs of each configuration (mean, interval).
  A run where no layer does counts as missing (``missing``) and is left out of the mean.
* ``blocks where LoRA − frozen exceeds the seed spread`` (paper F1): per LoRA configuration and
  contribution statistic, the blocks whose paired mean difference LoRA − frozen is larger in
  magnitude than the seed-to-seed spread of the LoRA values (the sample std across seeds, pooled
  within folds). ``value`` is how many blocks; ``detail`` names them with their differences.
  Without two seeds of a fold there is no spread and the row says so.
* ``k90 ratio untrained / trained`` (paper F4, per quantity U, V, gU, gV): the mean k90 of the
  ``lora_random`` reference over the trained run's, over every adapted matrix, summarised over
  runs (the paper's "Ratio": 5.5, 10.4, 1.7, 0.4).
* ``UAR LoRA − frozen``: the paired difference of test UAR over matched seeds and folds, from
  each run's ``metrics.json``.

Writes ``findings.csv`` (every number) and ``findings.html`` (the same as a table, for the report).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.atomic import atomic_path, write_table
from workflow_scripts.cli import entry_parser, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.report.aggregate import CONFIGURATION
from workflow_scripts.report.html import table_page
from workflow_scripts.report.statistics import summarize
from workflow_scripts.report.performance import collect

log = logging.getLogger(__name__)

AGREEMENT_THRESHOLD = 0.5
QUANTITY_NAMES = {"a_out": "U (A output)", "b_out": "V (B output)", "a_grad": "gU (A gradient)",
                  "b_grad": "gV (B gradient)"}
PAPER_K90_RATIO = {"a_out": 5.5, "b_out": 10.4, "a_grad": 1.7, "b_grad": 0.4}
COLUMNS = ["finding", *CONFIGURATION, "quantity", "value", "ci_low", "ci_high", "interval", "runs", "missing",
           "detail", "paper"]
MATCH = ["dataset", "protocol", "model", "seed", "fold"]


def _configuration(frame: pd.DataFrame) -> list[str]:
    return [column for column in CONFIGURATION if column in frame.columns]


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputError(f"findings: the {what} table lacks columns {missing}")


def _row(finding: str, configuration: dict, quantity: str, summary: dict, detail: str = "",
         paper: float | str = "") -> dict:
    return {"finding": finding, **configuration, "quantity": quantity, "value": summary["mean"],
            "ci_low": summary["ci_low"], "ci_high": summary["ci_high"], "interval": summary["interval"],
            "runs": summary["runs"], "missing": summary.get("missing", 0), "detail": detail, "paper": paper}


def first_agreeing_layer(lens: pd.DataFrame, threshold: float = AGREEMENT_THRESHOLD, seed: int = 0) -> list[dict]:
    """Per configuration: the first layer where the normed lens agrees with the final decision on
    more than ``threshold`` of the clips, per run, summarised over runs."""
    _require(lens, ["run", "lens", "layer", "statistic", "value"], "logit_lens")
    normed = lens[(lens["lens"] == "normed") & (lens["statistic"] == "agreement")]
    rows = []
    for configuration, part in normed.groupby(_configuration(normed), sort=True, dropna=False):
        firsts = []
        for _, run in part.groupby("run", sort=True):
            above = run.loc[run["value"] > threshold, "layer"]
            firsts.append(float(above.min()) if len(above) else np.nan)
        summary = summarize(np.array(firsts), seed=seed)
        never = int(np.isnan(firsts).sum())
        detail = f"per run: {', '.join('never' if np.isnan(v) else str(int(v)) for v in firsts)}"
        rows.append(_row("first layer the normed lens agrees (> half the clips)",
                         dict(zip(_configuration(normed), configuration)), "agreement", summary,
                         detail + (f"; {never} run(s) never agree" if never else "")))
    return rows


def seed_spread(values: pd.DataFrame) -> float:
    """The seed-to-seed sample std pooled within folds (NaN without two seeds in any fold)."""
    squares, dof = 0.0, 0
    for _, fold in values.groupby("fold"):
        if len(fold) > 1:
            squares += float(((fold["value"] - fold["value"].mean()) ** 2).sum())
            dof += len(fold) - 1
    return float(np.sqrt(squares / dof)) if dof else np.nan


def contribution_beyond_spread(contribution: pd.DataFrame, paired: pd.DataFrame) -> list[dict]:
    """Per LoRA configuration and statistic: the blocks whose paired LoRA − frozen difference
    exceeds the seed-to-seed spread of the LoRA values."""
    _require(contribution, ["method", "seed", "fold", "block", "statistic", "value"], "contribution")
    _require(paired, ["block", "statistic", "mean_difference", "pairs"], "paired contribution")
    lora = contribution[contribution["method"] == "lora"]
    keys = [c for c in _configuration(paired) if c != "method"]
    rows = []
    for configuration, part in paired.groupby(keys + ["statistic"], sort=True, dropna=False):
        *configuration, statistic = configuration
        where = dict(zip(keys, configuration))
        runs = lora
        for column, value in where.items():
            runs = runs[runs[column] == value]
        runs = runs[runs["statistic"] == statistic]
        exceeding, spreads = [], []
        for _, block in part.sort_values("block").iterrows():
            spread = seed_spread(runs[runs["block"] == block["block"]])
            spreads.append(spread)
            if np.isfinite(spread) and abs(block["mean_difference"]) > spread:
                exceeding.append(f"{int(block['block'])} ({block['mean_difference']:+.3f} vs {spread:.3f})")
        pairs = int(part["pairs"].max()) if len(part) else 0
        if not np.isfinite(spreads).any():
            detail, count = "no spread: fewer than two seeds in every fold", np.nan
        else:
            detail, count = ("blocks " + ", ".join(exceeding)) if exceeding else "no block", float(len(exceeding))
        summary = {"mean": count, "ci_low": np.nan, "ci_high": np.nan, "interval": "none", "runs": pairs}
        rows.append(_row("blocks where LoRA − frozen exceeds the seed spread", {**where, "method": "lora"},
                         statistic, summary, detail))
    return rows


def k90_ratios(spectra_comparison: pd.DataFrame, seed: int = 0) -> list[dict]:
    """Per trained configuration and quantity: lora_random's mean k90 over the trained run's."""
    _require(spectra_comparison, ["run", "label", "quantity", "module", "statistic", "value"], "spectra_comparison")
    ratios = spectra_comparison[(spectra_comparison["label"] == "lora_random")
                                & (spectra_comparison["module"] == "all")
                                & (spectra_comparison["statistic"] == "ratio_mean_k90")]
    rows = []
    for configuration, part in ratios.groupby(_configuration(ratios) + ["quantity"], sort=True, dropna=False):
        *configuration, quantity = configuration
        summary = summarize(part.sort_values("run")["value"].to_numpy(dtype=float), seed=seed)
        rows.append(_row("k90 ratio untrained / trained", dict(zip(_configuration(ratios), configuration)),
                         QUANTITY_NAMES.get(quantity, quantity), summary, paper=PAPER_K90_RATIO.get(quantity, "")))
    return rows


def uar_difference(performance_runs: pd.DataFrame, seed: int = 0) -> list[dict]:
    """Per LoRA configuration: test UAR LoRA − frozen over matched seeds and folds."""
    _require(performance_runs, [*MATCH, "method", "targets", "rank", "uar"], "performance runs")
    lora = performance_runs[performance_runs["method"] == "lora"]
    frozen = performance_runs[performance_runs["method"] == "frozen"][[*MATCH, "uar"]]
    rows = []
    for (targets, rank), part in lora.groupby(["targets", "rank"], sort=True):
        matched = part.merge(frozen, on=MATCH, suffixes=("", "_frozen"))
        if matched.empty:
            continue
        differences = (matched["uar"] - matched["uar_frozen"]).to_numpy(dtype=float)
        configuration = {c: part[c].iloc[0] for c in CONFIGURATION}
        rows.append(_row("UAR LoRA − frozen", configuration, "uar", summarize(differences, seed=seed),
                         f"{len(matched)} matched seed × fold pairs"))
    return rows


def findings_table(lens: pd.DataFrame, contribution: pd.DataFrame, paired_contribution: pd.DataFrame,
                   spectra_comparison: pd.DataFrame, performance_runs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rows = (first_agreeing_layer(lens, seed=seed) + contribution_beyond_spread(contribution, paired_contribution)
            + k90_ratios(spectra_comparison, seed=seed) + uar_difference(performance_runs, seed=seed))
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def _number(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


SHOWN = ["finding", "method", "targets", "rank", "quantity", "value", "ci_low", "ci_high", "interval", "runs",
         "missing", "paper", "detail"]


def findings_html(table: pd.DataFrame) -> str:
    """The table as one HTML page (the report embeds it)."""
    rows = [[_number(row[c]) for c in SHOWN] for _, row in table.iterrows()]
    return table_page("loralens findings", SHOWN, rows,
                      "value: the mean over runs (for the seed-spread finding, the number of blocks); "
                      "ci_low, ci_high: its 95 % interval (interval: t over runs, bootstrap under 5 runs, "
                      "none for one); paper: the paper's number where it has one.")


def read_runs(paths: list[str], what: str) -> pd.DataFrame:
    frames = []
    for path in paths:
        try:
            frames.append(pd.read_parquet(path))
        except (OSError, ValueError) as error:
            raise InputError(f"findings: cannot read the {what} table {path}: {error}") from error
    if not frames:
        raise InputError(f"findings: no {what} tables given")
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.report.findings", __doc__, settings=False)
    parser.add_argument("--logit-lens", nargs="+", required=True, help="per-run logit_lens tables")
    parser.add_argument("--contribution", nargs="+", required=True, help="per-run contribution tables")
    parser.add_argument("--paired-contribution", required=True, help="the paired LoRA − frozen contribution table")
    parser.add_argument("--spectra-comparison", nargs="+", required=True, help="per-run spectra_comparison tables")
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json of every run")
    parser.add_argument("--seed", type=int, default=0, help="of the bootstrap intervals")
    parser.add_argument("--out", required=True, help="findings.csv; findings.html goes beside it")
    args = parser.parse_args(argv)

    from workflow_scripts.provenance import provenance

    table = findings_table(read_runs(args.logit_lens, "logit_lens"), read_runs(args.contribution, "contribution"),
                           read_runs([args.paired_contribution], "paired contribution"),
                           read_runs(args.spectra_comparison, "spectra_comparison"),
                           collect(args.metrics), seed=args.seed)
    out = Path(args.out)
    write_table(out, table, provenance=provenance("findings", {"seed": args.seed}))
    with atomic_path(out.with_suffix(".html")) as tmp:
        Path(tmp).write_text(findings_html(table))
    log.info("wrote %s (%d findings)", out, len(table))


if __name__ == "__main__":
    run_main(main)
