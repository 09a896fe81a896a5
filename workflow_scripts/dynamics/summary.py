"""When, and in which layer, a run's specialisation appears: onsets and emergences per layer,
their nested summary over seeds and folds, and the findings rows (issue 20, item 4).

Pure pandas/numpy/scipy: it reads the per-checkpoint tables the dynamics analyses write, never a
checkpoint or a store. Checkpoints are taken in training order (by ``step``, optimiser steps
done; ``epoch`` = step / steps_per_epoch is what the summaries report).

**Per run and layer** (:func:`onset_table`; one row per run, ``quantity`` and ``layer``):

* ``onset``: the first checkpoint whose linear debiased CKA to the base (dynamics_representation,
  ``reference`` "base" = epoch0) falls below the layer's *seed-to-seed floor*: the linear debiased
  CKA, at the same layer, between two seeds of the run's configuration after training (the
  cka_seeds tables: ``layer_a == layer_b``), averaged over the seed pairs of the configuration
  and fold (:func:`seed_floor`). Below the floor, the checkpoint differs from the base more than
  two finished trainings differ from each other. With one seed there is no floor: the onset is
  undefined and the row's note says the floor needs two seeds.
* ``emergence_lens_raw`` / ``emergence_lens_normed``: the first checkpoint whose lens agreement
  with the checkpoint's own final prediction exceeds ``dynamics.lens_agreement`` (0.5);
* ``emergence_probe``: the first checkpoint whose probe test UAR reaches
  ``dynamics.probe_fraction`` (0.9) × the probe UAR at the run's final checkpoint (its largest step).

Each row has the checkpoint id, its step and epoch, the ``threshold`` used, and ``outcome``:
``reached``, ``never`` (the epoch is NaN) or ``undefined`` (no floor, no final UAR; NaN too).

**Summary** (:func:`summary_table`): per configuration, quantity and layer, the epochs summarised
with :func:`workflow_scripts.report.statistics.nested_summaries` (each fold's seeds averaged first,
the interval over the fold means -- or over the seeds with one fold -- as ``interval`` says); runs
that never reach it are left out of the mean and counted in ``never`` (and ``missing``); those
where it is undefined in ``undefined`` (and ``missing``), with the reason in ``note``.

**Findings** (:func:`findings_rows`; the columns of :data:`workflow_scripts.report.findings.COLUMNS`),
per configuration, for the onset and for the probe emergence:

* "do late layers change first or last": per run, Spearman's correlation between layer and epoch
  over the layers that reach it, summarised nested over the runs; negative = late layers first.
  ``detail`` names the mean epoch per layer.
* "is the order the same across seeds": per fold, Kendall's tau between the epochs of two seeds
  across the layers both reach, for every pair of seeds of the fold; ``value`` the mean over the
  pairs and ``ci_low``/``ci_high`` their range (pairs share seeds, so they are not independent
  samples: a range, never a t-interval).

Entry point::

    python -m workflow_scripts.dynamics.summary --representation T.parquet ... --readouts T.parquet ... \\
        --cka-seeds T.parquet ... --spec JSON --onsets OUT.parquet --summary OUT.parquet --findings OUT.csv
"""

from __future__ import annotations

import itertools
import logging
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from workflow_scripts.analyses.registry import CONFIGURATION
from workflow_scripts.errors import InputError, describe_offenders
from workflow_scripts.report.findings import COLUMNS
from workflow_scripts.report.statistics import SUMMARY_COLUMNS, nested_summaries, summarize
from workflow_scripts.train.checkpoints import checkpoint_order

log = logging.getLogger(__name__)

RUN_KEYS = ["run", *CONFIGURATION, "seed", "fold"]
CHECKPOINT_COLUMNS = ["checkpoint", "step", "epoch"]
ONSET = "onset"
LENS_EMERGENCE = {"lens raw": "emergence_lens_raw", "lens normed": "emergence_lens_normed"}
PROBE_EMERGENCE = "emergence_probe"
QUANTITIES = (ONSET, *LENS_EMERGENCE.values(), PROBE_EMERGENCE)
REACHED, NEVER, UNDEFINED = "reached", "never", "undefined"
ONSET_COLUMNS = [*RUN_KEYS, "quantity", "layer", "threshold", *CHECKPOINT_COLUMNS, "outcome", "note"]
SUMMARY_TABLE_COLUMNS = [*CONFIGURATION, "quantity", "layer", "seeds", "folds", "never", "undefined",
                         *[c for c in SUMMARY_COLUMNS if c != "folds"], "note"]
NO_FLOOR = ("no seed-to-seed floor: the onset needs two seeds of the configuration in this fold "
            "(their cka_seeds table)")
#: The seed floor's view of the cka_seeds table (analyses.cka.pairings.layer_cka).
FLOOR_KERNEL, FLOOR_ESTIMATOR = "linear", "debiased"
QUANTITY_TEXT = {ONSET: "onset (CKA to base below the seed-to-seed floor)",
                 PROBE_EMERGENCE: "probe emergence (test UAR reaches the set fraction of its final value)"}
SEED_PAIRS = "range over seed pairs"
#: Relative tolerance of "the probe's UAR reaches the threshold".
ROUNDING = 1e-9


# ---------------------------------------------------------------------------------------------
# Settings and input checks


def dynamics_thresholds(spec: dict | None) -> dict:
    """``lens_agreement`` and ``probe_fraction`` of the ``dynamics`` config section (validated
    against config/schema.yaml, its defaults filled in): what this step reads, and hashes."""
    from workflow_scripts.dynamics.settings import SummarySettings

    return SummarySettings.from_spec(spec).as_dict()


def require_columns(table: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InputError(f"dynamics summary: the {what} table lacks columns {missing} (it has {list(table.columns)})")


def _require_unique(table: pd.DataFrame, by: list[str], what: str) -> None:
    """One value per run, checkpoint and key: a repeat means a table was given twice."""
    repeated = table.duplicated(subset=by, keep=False)
    if repeated.any():
        raise InputError(describe_offenders(
            f"dynamics summary: {int(repeated.sum())} {what} rows repeat a run, checkpoint and key",
            table.loc[repeated, by].drop_duplicates().head(5).to_dict("records"),
            "give each run's table of each checkpoint once"))


def in_training_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by step, ties (a step checkpoint at an epoch's step) by the checkpoint order."""
    order = table["checkpoint"].map(lambda checkpoint: checkpoint_order(str(checkpoint)))
    return table.assign(_order=order).sort_values(["step", "_order"], kind="stable").drop(columns="_order")


def _first(rows: pd.DataFrame, hit: np.ndarray) -> dict:
    """The checkpoint, step and epoch of the first row (rows in training order) where ``hit``."""
    where = np.flatnonzero(hit)
    if where.size == 0:
        return {"checkpoint": None, "step": np.nan, "epoch": np.nan, "outcome": NEVER}
    row = rows.iloc[where[0]]
    return {"checkpoint": str(row["checkpoint"]), "step": float(row["step"]), "epoch": float(row["epoch"]),
            "outcome": REACHED}


def _undefined(note: str) -> dict:
    return {"checkpoint": None, "step": np.nan, "epoch": np.nan, "outcome": UNDEFINED, "note": note}


# ---------------------------------------------------------------------------------------------
# Per run and layer


def seed_floor(cka_seeds: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, fold and layer: the mean over the seed pairs of the linear debiased CKA
    between the same layer of two seeds (``floor``), and how many pairs (``pairs``)."""
    columns = [*CONFIGURATION, "fold", "layer", "floor", "pairs"]
    if cka_seeds is None or cka_seeds.empty:
        return pd.DataFrame(columns=columns)
    require_columns(cka_seeds, [*RUN_KEYS, "layer_a", "layer_b", "kernel", "estimator", "value"], "cka_seeds")
    rows = cka_seeds[(cka_seeds["kernel"] == FLOOR_KERNEL) & (cka_seeds["estimator"] == FLOOR_ESTIMATOR)
                     & (cka_seeds["layer_a"] == cka_seeds["layer_b"])]
    if "pairing" in rows.columns:
        rows = rows[rows["pairing"] == "seed_vs_seed"]
    if rows.empty:
        raise InputError(f"dynamics summary: the cka_seeds tables have no {FLOOR_KERNEL} {FLOOR_ESTIMATOR} rows "
                         "with layer_a == layer_b (analyses.cka.kernels and .estimators must include them)")
    _require_unique(rows, ["run", "layer_a"], "cka_seeds")
    rows = rows.rename(columns={"layer_a": "layer"})
    return (rows.groupby([*CONFIGURATION, "fold", "layer"], dropna=False, sort=True)["value"]
            .agg(floor="mean", pairs="size").reset_index()[columns])


def onsets(representation: pd.DataFrame, floor: pd.DataFrame) -> list[dict]:
    """Per run and layer, the first checkpoint whose CKA to the base is below the seed floor."""
    require_columns(representation, [*RUN_KEYS, *CHECKPOINT_COLUMNS, "reference", "layer", "value"],
                    "dynamics_representation")
    base = representation[representation["reference"] == "base"]
    _require_unique(base, ["run", "checkpoint", "layer"], "dynamics_representation (reference base)")
    floors = {tuple(key): value for *key, value in
              floor[[*CONFIGURATION, "fold", "layer", "floor"]].itertuples(index=False, name=None)}
    result = []
    for (run, layer), rows in base.groupby(["run", "layer"], sort=True):
        rows = in_training_order(rows)
        first = rows.iloc[0]
        common = {**{key: first[key] for key in RUN_KEYS}, "quantity": ONSET, "layer": int(layer)}
        threshold = floors.get((*[first[key] for key in CONFIGURATION], first["fold"], layer), np.nan)
        if not np.isfinite(threshold):
            result.append({**common, "threshold": np.nan, **_undefined(NO_FLOOR)})
            continue
        values = pd.to_numeric(rows["value"]).to_numpy(dtype=float)
        result.append({**common, "threshold": float(threshold), **_first(rows, values < threshold), "note": ""})
    return result


def emergences(readouts: pd.DataFrame, lens_agreement: float, probe_fraction: float) -> list[dict]:
    """Per run and layer, the first checkpoint where each lens's agreement exceeds
    ``lens_agreement``, and where the probe's test UAR reaches ``probe_fraction`` × its final value."""
    require_columns(readouts, [*RUN_KEYS, *CHECKPOINT_COLUMNS, "readout", "layer", "statistic", "value"],
                    "dynamics_readouts")
    _require_unique(readouts, ["run", "checkpoint", "readout", "layer", "statistic"], "dynamics_readouts")
    result = []
    wanted = [(readout, "agreement", quantity) for readout, quantity in LENS_EMERGENCE.items()]
    wanted.append(("probe", "uar", PROBE_EMERGENCE))
    for readout, statistic, quantity in wanted:
        part = readouts[(readouts["readout"] == readout) & (readouts["statistic"] == statistic)]
        for (run, layer), rows in part.groupby(["run", "layer"], sort=True):
            rows = in_training_order(rows)
            first = rows.iloc[0]
            common = {**{key: first[key] for key in RUN_KEYS}, "quantity": quantity, "layer": int(layer)}
            values = pd.to_numeric(rows["value"]).to_numpy(dtype=float)
            if quantity == PROBE_EMERGENCE:
                final = values[-1]
                if not np.isfinite(final):
                    result.append({**common, "threshold": np.nan, **_undefined(
                        f"no probe UAR at the final checkpoint {rows['checkpoint'].iloc[-1]}")})
                    continue
                threshold = probe_fraction * final
                # "Reaches" up to rounding: 0.9 × 0.8 is 0.7200000000000001 in floating point, and a
                # UAR (a mean of count ratios) can equal the threshold exactly.
                hit = values >= threshold - ROUNDING * abs(threshold)
            else:
                threshold = lens_agreement
                hit = values > threshold
            result.append({**common, "threshold": float(threshold), **_first(rows, hit), "note": ""})
    return result


def onset_table(representation: pd.DataFrame, readouts: pd.DataFrame, cka_seeds: pd.DataFrame | None,
                thresholds: dict) -> pd.DataFrame:
    """Every run's onset and emergences per layer (module docstring), one row per run, quantity and layer."""
    rows = onsets(representation, seed_floor(cka_seeds))
    rows += emergences(readouts, thresholds["lens_agreement"], thresholds["probe_fraction"])
    table = pd.DataFrame(rows).reindex(columns=ONSET_COLUMNS)
    table["note"] = table["note"].fillna("")
    for column in ("threshold", "step", "epoch"):
        table[column] = table[column].astype(np.float64)
    order = {quantity: i for i, quantity in enumerate(QUANTITIES)}
    table = table.assign(_q=table["quantity"].map(order)).sort_values(["run", "_q", "layer"], kind="stable")
    return table.drop(columns="_q").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Nested summary


def summary_table(onset_rows: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, quantity and layer: the epochs nested-summarised over the runs (seeds
    averaged within folds), with the runs that ``never`` reach it and those ``undefined``."""
    if onset_rows.empty:
        return pd.DataFrame(columns=SUMMARY_TABLE_COLUMNS)
    by = [*CONFIGURATION, "quantity", "layer"]
    grouped = onset_rows.groupby(by, dropna=False, sort=True)
    codes = grouped.ngroup().to_numpy()
    keys = grouped.size().reset_index()[by]
    summary = nested_summaries(codes, onset_rows["fold"].to_numpy(), onset_rows["epoch"].to_numpy(dtype=float),
                               len(keys))
    counts = onset_rows.assign(
        never=onset_rows["outcome"] == NEVER, undefined=onset_rows["outcome"] == UNDEFINED,
        counted_seed=onset_rows["seed"].where(onset_rows["outcome"] == REACHED)).groupby(
        by, dropna=False, sort=True).agg(never=("never", "sum"), undefined=("undefined", "sum"),
                                         seeds=("counted_seed", "nunique"),
                                         note=("note", lambda notes: "; ".join(sorted({n for n in notes if n})))
                                         ).reset_index(drop=True)
    table = pd.concat([keys, summary, counts], axis=1)
    order = {quantity: i for i, quantity in enumerate(QUANTITIES)}
    table = table.assign(_q=table["quantity"].map(order)).sort_values([*CONFIGURATION, "_q", "layer"], kind="stable")
    return table.drop(columns="_q").reset_index(drop=True)[SUMMARY_TABLE_COLUMNS]


# ---------------------------------------------------------------------------------------------
# Findings


def _finding(finding: str, configuration: dict, quantity: str, value: float, low: float, high: float,
             interval: str, runs: int, missing: int, detail: str) -> dict:
    return {"finding": finding, **configuration, "quantity": quantity, "value": value, "ci_low": low,
            "ci_high": high, "interval": interval, "runs": runs, "missing": missing, "detail": detail, "paper": ""}


def _quiet(test, x, y) -> float:
    """``test(x, y)``'s statistic; NaN below two points or for a constant input (scipy warns then)."""
    if len(x) < 2:
        return np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(test(x, y).statistic)


def _epoch_text(value: float, never: int, undefined: int) -> str:
    """A layer's mean epoch, or why there is none (no run reached it; it is undefined)."""
    if np.isfinite(value):
        return f"{value:.3g}"
    return "undefined" if undefined and not never else "never"


def layer_order_row(configuration: dict, runs: pd.DataFrame, means: pd.DataFrame, quantity: str) -> dict:
    """Per run Spearman(layer, epoch) over the layers it reaches, summarised nested over the runs."""
    correlations, folds = [], []
    for (_, fold), rows in runs.groupby(["run", "fold"], sort=True):
        reached = rows[rows["outcome"] == REACHED]
        correlations.append(_quiet(stats.spearmanr, reached["layer"].to_numpy(dtype=float),
                                   reached["epoch"].to_numpy(dtype=float)))
        folds.append(fold)
    summary = summarize(np.array(correlations), folds)
    per_layer = ", ".join(f"{int(layer)}: {_epoch_text(mean, never, undefined)}" for layer, mean, never, undefined
                          in zip(means["layer"], means["mean"], means["never"], means["undefined"]))
    detail = (f"Spearman of layer and {quantity} epoch per run (negative = late layers first); "
              f"mean epoch per layer: {per_layer}")
    undefined = int(np.isnan(correlations).sum())
    if undefined:
        detail += f"; {undefined} run(s) without a correlation (fewer than 2 layers reached, or one epoch for all)"
    notes = sorted({note for note in runs["note"] if note})
    detail += "".join(f"; {note}" for note in notes)
    return _finding(f"do late layers change first or last ({quantity})", configuration, quantity,
                    summary["mean"], summary["ci_low"], summary["ci_high"], summary["interval"], summary["runs"],
                    summary["missing"], detail)


def seed_order_row(configuration: dict, runs: pd.DataFrame, quantity: str) -> dict:
    """Per fold, Kendall's tau of the epochs of each pair of seeds across the layers both reach;
    the mean over the pairs and their range."""
    taus, parts = [], []
    for fold, of_fold in runs.groupby("fold", sort=True):
        epochs = of_fold.pivot_table(index="layer", columns="seed", values="epoch", aggfunc="first", dropna=False)
        texts = []
        for first, second in itertools.combinations(sorted(epochs.columns), 2):
            both = epochs[[first, second]].dropna()
            tau = _quiet(stats.kendalltau, both[first].to_numpy(), both[second].to_numpy())
            taus.append(tau)
            texts.append(f"seeds {first}~{second} {f'{tau:.3g}' if np.isfinite(tau) else 'undefined'}")
        parts.append(f"fold {fold}: " + (", ".join(texts) if texts else "one seed, no pair"))
    taus = np.array(taus, dtype=float)
    defined = taus[np.isfinite(taus)]
    value = float(defined.mean()) if defined.size else np.nan
    low, high, interval = ((float(defined.min()), float(defined.max()), SEED_PAIRS) if defined.size >= 2
                           else (np.nan, np.nan, "none"))
    detail = f"Kendall's tau of the {quantity} epochs of two seeds of a fold across layers; " + "; ".join(parts)
    if taus.size == 0:
        detail += "; no fold has two seeds"
    return _finding(f"is the {quantity} order the same across seeds", configuration, quantity, value, low, high,
                    interval, int(defined.size), int(taus.size - defined.size), detail)


def findings_rows(onset_rows: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The four findings per configuration (module docstring), in findings.py's columns."""
    rows = []
    for quantity in (ONSET, PROBE_EMERGENCE):
        part = onset_rows[onset_rows["quantity"] == quantity]
        means = summary[summary["quantity"] == quantity]
        for key, runs in part.groupby(list(CONFIGURATION), dropna=False, sort=True):
            configuration = dict(zip(CONFIGURATION, key))
            mask = np.logical_and.reduce([means[c] == v for c, v in configuration.items()])
            of_configuration = means[mask].sort_values("layer")
            rows.append(layer_order_row(configuration, runs, of_configuration, quantity))
            rows.append(seed_order_row(configuration, runs, quantity))
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


# ---------------------------------------------------------------------------------------------
# Entry point


def read_tables(paths: list[str] | None, what: str, required: bool = True) -> pd.DataFrame | None:
    """The tables at ``paths`` as one frame; an unreadable one is an InputError naming it."""
    if not paths:
        if required:
            raise InputError(f"dynamics summary: no {what} tables given")
        return None
    frames = []
    for path in paths:
        try:
            frames.append(pd.read_parquet(path))
        except Exception as error:  # pyarrow raises several types for a file that is not Parquet
            raise InputError(f"dynamics summary: cannot read the {what} table {path}: {error}") from error
    return pd.concat(frames, ignore_index=True)


def summary_html(summary: pd.DataFrame) -> str:
    """The summary as one HTML table for the report: per configuration, quantity and layer, the
    mean epoch, its interval and what it is over, and how many runs never reach it."""
    from workflow_scripts.report.html import table_page

    def number(value) -> str:
        return "" if pd.isna(value) else f"{value:.3g}"

    columns = ["configuration", "quantity", "layer", "mean epoch", "interval", "over", "runs", "never", "undefined",
               "note"]
    rows = []
    for row in summary.itertuples(index=False):
        configuration = f"{row.method} {row.targets} r{row.rank} ({row.dataset}/{row.protocol}/{row.model})"
        bounds = "" if pd.isna(row.ci_low) else f"[{number(row.ci_low)}, {number(row.ci_high)}]"
        rows.append([configuration, row.quantity, row.layer, number(row.mean), bounds, row.interval, row.runs,
                     row.never, row.undefined, row.note])
    note = ("Epochs of the first checkpoint where each quantity is reached (onset: CKA to the base below the "
            "seed-to-seed floor; emergence: lens agreement above the threshold, probe UAR at the fraction of its "
            "final value). Layer 0 = the embeddings, L = the encoder's output. Each fold's seeds are averaged "
            "first; 'over' says what the interval is over (a range for 2-4 values). Runs that never reach it "
            "are left out of the mean and counted.")
    return table_page("training dynamics: onsets and emergences", columns, rows, note)


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.atomic import write_table
    from workflow_scripts.cli import entry_parser, resolve_spec
    from workflow_scripts.dynamics.settings import SummarySettings
    from workflow_scripts.provenance import provenance

    parser = entry_parser("workflow_scripts.dynamics.summary", __doc__)
    parser.add_argument("--representation", nargs="+", required=True, help="dynamics_representation tables")
    parser.add_argument("--readouts", nargs="+", required=True, help="dynamics_readouts tables")
    parser.add_argument("--cka-seeds", nargs="*", default=[],
                        help="the cka_seeds tables (the seed-to-seed floor; none: every onset is undefined)")
    parser.add_argument("--onsets", required=True, help="per run and layer: onset and emergences (.parquet)")
    parser.add_argument("--summary", required=True, help="their nested summary (.parquet)")
    parser.add_argument("--findings", required=True, help="the findings rows (.csv, findings.py's columns)")
    parser.add_argument("--html", help="the summary as an HTML table (for the report)")
    args = parser.parse_args(argv)
    thresholds = dynamics_thresholds(resolve_spec(args, lambda config: SummarySettings.from_config(config).as_dict()))

    representation = read_tables(args.representation, "dynamics_representation")
    readouts = read_tables(args.readouts, "dynamics_readouts")
    cka_seeds = read_tables(args.cka_seeds, "cka_seeds", required=False)
    onset_rows = onset_table(representation, readouts, cka_seeds, thresholds)
    summary = summary_table(onset_rows)
    findings = findings_rows(onset_rows, summary)
    inputs = {"representation": args.representation, "readouts": args.readouts, "cka_seeds": args.cka_seeds}
    write_table(args.onsets, onset_rows, provenance=provenance("dynamics_onsets", thresholds, inputs=inputs))
    write_table(args.summary, summary, provenance=provenance("dynamics_summary", thresholds, inputs=inputs))
    write_table(args.findings, findings)
    if args.html:
        from pathlib import Path

        from workflow_scripts.atomic import atomic_path

        with atomic_path(args.html) as tmp:
            Path(tmp).write_text(summary_html(summary))
    log.info("wrote %s (%d rows), %s (%d rows), %s (%d findings)", args.onsets, len(onset_rows), args.summary,
             len(summary), args.findings, len(findings))


if __name__ == "__main__":
    from workflow_scripts.cli import run_main

    run_main(main)
