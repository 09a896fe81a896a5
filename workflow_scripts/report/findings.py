"""The findings table: the paper's claims as numbers computed from this run's tables, each with
its interval. Nothing here is written by hand; every row is a function of the tables.

Every finding is grouped by every configuration column (dataset, protocol, model, targets, rank)
and, where it compares methods, all but the method; every summary nests the seeds in the folds
(:func:`workflow_scripts.report.statistics.summarize`: per fold the seeds are averaged; the
interval is over the fold means, a range from 2 to 4 of them, and over the seeds on fixed test
clips with one fold -- ``interval`` says which). Rows (``finding``, per configuration):

* ``first layer the raw lens agrees`` and ``first layer the normed lens agrees`` (paper F2,
  "delayed specialisation"): per run, the first residual layer whose lens top-1 prediction agrees
  with the final decision on more than half of the test clips; summarised over the runs. A run
  where no layer does counts as missing (``missing``) and is left out of the mean. The raw lens
  (no final LayerNorm) is the paper's; the normed lens's last layer *is* the model's decision,
  so it agrees there by construction. Layer indexing: 0 = the embeddings, L = the output of block
  L − 1 (blocks counted from 0) = the paper's layer L − 1 (its layers 0..31 are the blocks'
  outputs); ``detail`` says so.
* ``blocks where LoRA − frozen exceeds the seed spread`` (paper F1): per LoRA configuration and
  contribution statistic, the blocks whose paired mean difference LoRA − frozen (the paired
  table's, over fold-level differences) is larger in magnitude than the seed-to-seed spread of the
  LoRA values (the nested aggregate's ``seed_std``: the sample std across seeds, pooled within
  folds). ``value`` is how many blocks; ``detail`` names them with their differences. Without two
  seeds of a fold there is no spread and the row says so.
* ``k90 ratio untrained / trained`` (paper F4, per quantity U, V, gU, gV): the mean k90 of the
  ``lora_random`` reference over the trained run's, over every adapted matrix, summarised over
  runs (the paper's "Ratio": 5.5, 10.4, 1.7, 0.4).
* ``UAR LoRA − frozen``: the difference of test UAR between each LoRA run and the frozen run of
  the same dataset, protocol, model, seed and fold (from each run's ``metrics.json``), per
  dataset, protocol, model, targets and rank.

Rows made elsewhere in the same columns are appended after these, unchanged (``--dynamics``: the
training-dynamics findings of :mod:`workflow_scripts.dynamics.summary`).

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
from workflow_scripts.report.statistics import nested_summaries, summarize
from workflow_scripts.report.performance import collect

log = logging.getLogger(__name__)

AGREEMENT_THRESHOLD = 0.5
LAYER_INDEXING = "layer 0 = the embeddings, L = the output of block L − 1 (blocks from 0) = the paper's layer L − 1"
NORMED_AT_THE_END = "the normed lens's last layer is the model's own decision: it agrees there by construction"
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


def first_agreeing_layer(lens: pd.DataFrame, threshold: float = AGREEMENT_THRESHOLD) -> list[dict]:
    """Per configuration and lens (raw, normed): the first layer where the lens agrees with the
    final decision on more than ``threshold`` of the clips, per run, summarised over runs."""
    _require(lens, ["run", "fold", "lens", "layer", "statistic", "value"], "logit_lens")
    agreement = lens[lens["statistic"] == "agreement"]
    configuration_columns = _configuration(agreement)
    rows = []
    for key, part in agreement.groupby([*configuration_columns, "lens"], sort=True, dropna=False):
        *configuration, lens_name = key
        firsts, folds = [], []
        for (_, fold), run in part.groupby(["run", "fold"], sort=True):
            above = run.loc[run["value"] > threshold, "layer"]
            firsts.append(float(above.min()) if len(above) else np.nan)
            folds.append(fold)
        summary = summarize(np.array(firsts), folds)
        never = int(np.isnan(firsts).sum())
        detail = f"per run: {', '.join('never' if np.isnan(v) else str(int(v)) for v in firsts)}"
        detail += f"; {never} run(s) never agree" if never else ""
        detail += f"; {LAYER_INDEXING}" + (f"; {NORMED_AT_THE_END}" if lens_name == "normed" else "")
        rows.append(_row(f"first layer the {lens_name} lens agrees (> half the clips)",
                         dict(zip(configuration_columns, configuration)), "agreement", summary, detail))
    return rows


def lora_seed_spread(contribution: pd.DataFrame) -> pd.DataFrame:
    """The LoRA runs' seed-to-seed spread per configuration, block and statistic: the pooled
    within-fold sample std of the nested summary, as ``lora_seed_std`` (the paired table's own
    ``seed_std`` is that of the differences)."""
    by = [*CONFIGURATION, "block", "statistic"]
    lora = contribution[contribution["method"] == "lora"]
    if lora.empty:
        return pd.DataFrame(columns=[*by, "lora_seed_std"])
    grouped = lora.groupby(by, sort=True, dropna=False)
    keys = grouped.size().reset_index()[by]
    summary = nested_summaries(grouped.ngroup().to_numpy(), lora["fold"].to_numpy(),
                               lora["value"].to_numpy(dtype=float), len(keys))
    return keys.assign(lora_seed_std=summary["seed_std"].to_numpy())


def contribution_beyond_spread(contribution: pd.DataFrame, paired: pd.DataFrame) -> list[dict]:
    """Per LoRA configuration and statistic: the blocks whose paired LoRA − frozen difference
    exceeds the seed-to-seed spread of the LoRA values (the nested aggregate's ``seed_std``)."""
    _require(contribution, ["run", *CONFIGURATION, "seed", "fold", "block", "statistic", "value"], "contribution")
    _require(paired, [*CONFIGURATION, "block", "statistic", "mean_difference", "pairs"], "paired contribution")
    with_spread = paired.merge(lora_seed_spread(contribution), on=[*CONFIGURATION, "block", "statistic"], how="left")
    keys = [c for c in CONFIGURATION if c != "method"]
    rows = []
    for key, part in with_spread.groupby([*keys, "statistic"], sort=True, dropna=False):
        *configuration, statistic = key
        part = part.sort_values("block")
        spreads = part["lora_seed_std"].to_numpy(dtype=float)
        exceeding = [f"{int(block)} ({difference:+.3f} vs {spread_:.3f})" for block, difference, spread_
                     in zip(part["block"], part["mean_difference"], spreads)
                     if np.isfinite(spread_) and abs(difference) > spread_]
        if not np.isfinite(spreads).any():
            detail, count = "no spread: fewer than two seeds in every fold", np.nan
        else:
            detail, count = ("blocks " + ", ".join(exceeding)) if exceeding else "no block", float(len(exceeding))
        summary = {"mean": count, "ci_low": np.nan, "ci_high": np.nan, "interval": "none",
                   "runs": int(part["pairs"].max()) if len(part) else 0}
        rows.append(_row("blocks where LoRA − frozen exceeds the seed spread",
                         {**dict(zip(keys, configuration)), "method": "lora"}, statistic, summary, detail))
    return rows


def k90_ratios(spectra_comparison: pd.DataFrame) -> list[dict]:
    """Per trained configuration and quantity: lora_random's mean k90 over the trained run's."""
    _require(spectra_comparison, ["run", "fold", "label", "quantity", "module", "statistic", "value"],
             "spectra_comparison")
    ratios = spectra_comparison[(spectra_comparison["label"] == "lora_random")
                                & (spectra_comparison["module"] == "all")
                                & (spectra_comparison["statistic"] == "ratio_mean_k90")]
    rows = []
    for configuration, part in ratios.groupby(_configuration(ratios) + ["quantity"], sort=True, dropna=False):
        *configuration, quantity = configuration
        part = part.sort_values("run")
        summary = summarize(part["value"].to_numpy(dtype=float), part["fold"].to_numpy())
        rows.append(_row("k90 ratio untrained / trained", dict(zip(_configuration(ratios), configuration)),
                         QUANTITY_NAMES.get(quantity, quantity), summary, paper=PAPER_K90_RATIO.get(quantity, "")))
    return rows


def uar_difference(performance_runs: pd.DataFrame) -> list[dict]:
    """Per LoRA configuration (dataset, protocol, model, targets, rank): test UAR LoRA − frozen
    over runs matched on seed and fold, seeds nested in folds."""
    _require(performance_runs, [*MATCH, "method", "targets", "rank", "uar"], "performance runs")
    lora = performance_runs[performance_runs["method"] == "lora"]
    frozen = performance_runs[performance_runs["method"] == "frozen"][[*MATCH, "uar"]]
    keys = [c for c in CONFIGURATION if c != "method"]
    rows = []
    for key, part in lora.groupby(keys, sort=True):
        matched = part.merge(frozen, on=MATCH, suffixes=("", "_frozen"))
        if matched.empty:
            continue
        differences = (matched["uar"] - matched["uar_frozen"]).to_numpy(dtype=float)
        configuration = {**dict(zip(keys, key)), "method": "lora"}
        rows.append(_row("UAR LoRA − frozen", configuration, "uar", summarize(differences, matched["fold"].to_numpy()),
                         f"{len(matched)} matched seed × fold pairs over {matched['fold'].nunique()} fold(s)"))
    return rows


def findings_table(lens: pd.DataFrame, contribution: pd.DataFrame, paired_contribution: pd.DataFrame,
                   spectra_comparison: pd.DataFrame, performance_runs: pd.DataFrame,
                   extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every finding; ``extra`` rows (already in :data:`COLUMNS`) appended after them."""
    rows = (first_agreeing_layer(lens) + contribution_beyond_spread(contribution, paired_contribution)
            + k90_ratios(spectra_comparison) + uar_difference(performance_runs))
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    if extra is not None and len(extra):
        table = pd.concat([table, extra.reindex(columns=COLUMNS)], ignore_index=True)
    return table


def _number(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


SHOWN = ["finding", "dataset", "protocol", "model", "method", "targets", "rank", "quantity", "value", "ci_low",
         "ci_high", "interval", "runs", "missing", "paper", "detail"]


def findings_html(table: pd.DataFrame) -> str:
    """The table as one HTML page (the report embeds it)."""
    rows = [[_number(row[c]) for c in SHOWN] for _, row in table.iterrows()]
    return table_page("loralens findings", SHOWN, rows,
                      "value: the mean over runs, each fold's seeds averaged first (for the seed-spread "
                      "finding, the number of blocks); ci_low, ci_high: the interval that `interval` names: "
                      "a 95 % t-interval over 5 or more fold means, the range of 2-4 fold means, and with one "
                      "fold the same over its seeds (fixed test clips: nothing about other speakers); "
                      "none for one run; paper: the paper's number where it has one.")


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


def read_extra_rows(paths: list[str]) -> pd.DataFrame:
    """Findings rows made elsewhere (CSV files in :data:`COLUMNS`, e.g. the dynamics summary's)."""
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError) as error:
            raise InputError(f"findings: cannot read the extra findings rows {path}: {error}") from error
        missing = [column for column in COLUMNS if column not in frame.columns]
        if missing:
            raise InputError(f"findings: {path} is not a table of findings rows: it lacks columns {missing}")
        frames.append(frame[COLUMNS])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.report.findings", __doc__, settings=False)
    parser.add_argument("--logit-lens", nargs="+", required=True, help="per-run logit_lens tables")
    parser.add_argument("--contribution", nargs="+", required=True, help="per-run contribution tables")
    parser.add_argument("--paired-contribution", required=True, help="the paired LoRA − frozen contribution table")
    parser.add_argument("--spectra-comparison", nargs="+", required=True, help="per-run spectra_comparison tables")
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json of every run")
    parser.add_argument("--dynamics", nargs="+", default=[],
                        help="findings rows of the training dynamics (CSV, these columns), appended")
    parser.add_argument("--out", required=True, help="findings.csv; findings.html goes beside it")
    args = parser.parse_args(argv)

    from workflow_scripts.provenance import provenance

    table = findings_table(read_runs(args.logit_lens, "logit_lens"), read_runs(args.contribution, "contribution"),
                           read_runs([args.paired_contribution], "paired contribution"),
                           read_runs(args.spectra_comparison, "spectra_comparison"),
                           collect(args.metrics), read_extra_rows(args.dynamics))
    out = Path(args.out)
    write_table(out, table, provenance=provenance("findings", {"agreement_threshold": AGREEMENT_THRESHOLD}))
    with atomic_path(out.with_suffix(".html")) as tmp:
        Path(tmp).write_text(findings_html(table))
    log.info("wrote %s (%d findings)", out, len(table))


if __name__ == "__main__":
    run_main(main)
