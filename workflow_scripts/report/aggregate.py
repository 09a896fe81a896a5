"""Every per-run analysis table aggregated over seeds and folds, and LoRA against frozen, paired.

**Aggregate** (:func:`aggregate`): one row per configuration (dataset, protocol, model, method,
targets, rank) and per value the analysis reports (its :class:`TableSpec` keys: a layer, a
statistic, a module, ...), summarised with the seeds nested in the folds
(:func:`workflow_scripts.report.statistics.nested_summaries`): runs of one fold share their test
clips, so each fold's seeds are averaged first and the interval is over the fold means (a 95 %
t-interval from 5 folds, their range from 2 to 4, none for 1; with one fold, over its seeds, on
fixed test clips). ``interval`` names the kind and what it is over (``t95 over folds``,
``range over seeds (1 fold)``, ...), ``units`` how many values it is over, ``std`` their
sample std and ``seed_std`` the seed-to-seed spread (the pooled within-fold std). NaN values (an
undefined k90 of an all-zero spectrum, ...) are left out and counted in ``missing``; ``runs``,
``seeds`` and ``folds`` count the values that were averaged. Numeric side columns (a CKA value's
permutation null, the clip counts, ...) are averaged alongside as ``<column>_mean``.

Per analysis (:data:`TABLES`):

* spectra and weight_spectra: the per-matrix scalars (k90, top-10 energy, effective and stable
  rank, ...; ``k`` empty) and the curves (``sigma``, ``cumulative_energy`` per ``k``) alike,
  ``k`` being a key;
* subspaces: a row is a *pair* of runs (``unit = "pairs"``), and the table has two measures, the
  mean cos² and the largest cosine of the principal angles. They are stacked into a ``measure``
  key column (values ``mean_cos2``, ``max_cos``) with the number in ``value``, so the aggregate has
  one row per measure; each pair's ranks (``rank_1``, ``rank_2``, from its run ids) are keys, so
  that rank-4 and rank-8 seed pairs are not pooled. ``runs`` counts pairs there, and ``seeds``
  and ``folds`` the distinct seeds and folds of the paired runs. A pair is nested in its fold when
  both runs share it, else in its fold pair (``interval``: ``... over fold pairs``). The sample
  id (``group``) is the comparison group, ``dataset/protocol/model/method/targets``;
* embeddings: a table per group of runs across ranks; every row carries its rank, so the
  configuration is as usual; the group id (``group``) plays the run id.

**Paired** (:func:`paired_differences`, for :data:`PAIRED`): each LoRA run's value minus that of
the frozen run with the same dataset, protocol, model, seed and fold, per LoRA configuration and
key; per fold the seeds' differences are averaged, and the mean difference, its interval and the
tests are over those fold-level differences (over the seeds' differences with one fold): the
paired t-test from 5 units and the Wilcoxon signed-rank test from 6, each Holm-corrected across
the layers of one quantity (:func:`workflow_scripts.report.statistics.paired_tests`,
:func:`~workflow_scripts.report.statistics.holm`).

**Input checks** (:func:`read_tables`): each table must have the columns its analysis needs, come
from the expected settings (``--expected-hash``: the ``config_hash`` in its provenance), and
together the tables must cover exactly the expected runs (``--expected-runs``): a missing run, a
run outside the grid or a run in two tables is an :class:`~workflow_scripts.errors.InputError`
naming the file, and nothing is written.

Entry point::

    python -m workflow_scripts.report.aggregate --analysis probes --tables T1.parquet T2.parquet ... \\
        --out probes.parquet [--paired-out probes.paired.parquet] [--expected-hash H] \\
        [--expected-runs RUN_ID ...]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.analyses.registry import ANALYSES, CONFIGURATION, PAIRED, SUBSPACE_CONFIGURATION, TableSpec
from workflow_scripts.atomic import write_table
from workflow_scripts.cli import entry_parser, run_main
from workflow_scripts.errors import InputError, describe_offenders
from workflow_scripts.report.statistics import (
    CONFIDENCE,
    T_FROM,
    WILCOXON_MIN_UNITS,
    fold_units,
    grouped_paired_tests,
    holm,
    nested_summaries,
    summarize,
)

log = logging.getLogger(__name__)

__all__ = [
    "CONFIGURATION", "PAIRED", "RUN_COLUMNS", "TABLES", "T_FROM", "TableSpec", "WILCOXON_MIN_UNITS",
    "aggregate", "paired_differences", "prepare_table", "read_tables", "summarize", "holm", "main",
]

RUN_COLUMNS = ["run", "seed", "fold"]
#: How each analysis's table is aggregated, and which are paired: from the analysis registry.
TABLES: dict[str, TableSpec] = {name: spec.table for name, spec in ANALYSES.items()}
LORA, FROZEN = "lora", "frozen"
#: What a LoRA run shares with its frozen counterpart (the frozen run has no targets and rank 0).
PAIR_MATCH = ["dataset", "protocol", "model", "seed", "fold"]
STALE_HINT = "rerun the analysis (a table from an older config?)"


def table_spec(analysis: str) -> TableSpec:
    if analysis not in TABLES:
        raise InputError(f"unknown analysis {analysis!r}; expected one of {sorted(TABLES)}")
    return TABLES[analysis]


def summary_columns(analysis: str) -> list[str]:
    """The columns of :func:`aggregate`'s table, in order."""
    spec = table_spec(analysis)
    return [*spec.configuration, *spec.keys, "runs", "seeds", "folds", "units", "missing", "mean", "std", "seed_std",
            "ci_low", "ci_high", "interval", *(f"{extra}_mean" for extra in spec.extras)]


def paired_columns(analysis: str) -> list[str]:
    """The columns of :func:`paired_differences`'s table, in order."""
    spec = table_spec(analysis)
    return [*spec.configuration, *spec.keys, "pairs", "seeds", "folds", "units", "missing", "lora_mean",
            "frozen_mean", "mean_difference", "std", "seed_std", "ci_low", "ci_high", "interval", "t_statistic", "t_p", "t_p_holm",
            "wilcoxon_statistic", "wilcoxon_p", "wilcoxon_p_holm", "test_note"]


# ---------------------------------------------------------------------------------------------
# Preparing a table


def _missing_columns(frame: pd.DataFrame, spec: TableSpec) -> list[str]:
    return [column for column in spec.required_columns if column not in frame.columns]


def _subspace_group_ids(frame: pd.DataFrame) -> pd.Series:
    return frame[list(SUBSPACE_CONFIGURATION)].astype(str).agg("/".join, axis=1)


def sample_ids(frame: pd.DataFrame, analysis: str) -> list[str]:
    """The distinct run ids (group ids for embeddings and subspaces; ``run/checkpoint`` for the
    training dynamics) a table has rows of."""
    spec = table_spec(analysis)
    ids = _subspace_group_ids(frame) if analysis == "subspaces" else frame[spec.run].astype(str)
    for column in spec.sample:  # a run's checkpoint: "<run id>/<checkpoint>", the grid's unit id
        ids = ids + "/" + frame[column].astype(str)
    return sorted(pd.unique(ids.astype(str)))


def prepare_table(table: pd.DataFrame, analysis: str, source: str = "the table") -> pd.DataFrame:
    """``table`` (as the analysis wrote it, one or many runs) ready for aggregation: its columns
    checked, and for subspaces the group id, each pair's ranks, seeds and folds added and the two
    measures stacked into ``measure``/``value``."""
    from workflow_scripts.runs import Run

    spec = table_spec(analysis)
    missing = _missing_columns(table, spec)
    if missing:
        raise InputError(f"{source}: not a {analysis} table: it lacks the column(s) {missing} "
                         f"(it has {list(table.columns)})")
    frame = table.reset_index(drop=True)
    if analysis != "subspaces":
        return frame
    frame = frame.copy()
    frame["group"] = _subspace_group_ids(frame) if len(frame) else pd.Series(dtype=str)
    for side in ("1", "2"):
        runs = {run_id: Run.from_id(run_id) for run_id in pd.unique(frame[f"run_{side}"])}
        for field in ("rank", "seed", "fold"):
            frame[f"{field}_{side}"] = frame[f"run_{side}"].map(
                {run_id: getattr(run, field) for run_id, run in runs.items()}).astype("int64")
    others = [column for column in frame.columns if column not in spec.measures]
    return frame.melt(id_vars=others, value_vars=list(spec.measures), var_name="measure", value_name=spec.value)


def _check_unique(frame: pd.DataFrame, spec: TableSpec, analysis: str, by: list[str], source: str) -> None:
    """One value per sample and key: a repeated one means a table was read twice or a key is missing."""
    samples = ["run_1", "run_2"] if spec.unit == "pairs" else [spec.run]
    repeated = frame.duplicated(subset=[*samples, *by], keep=False)
    if repeated.any():
        example = frame.loc[repeated, [*samples, *spec.keys]].drop_duplicates().head(5)
        raise InputError(describe_offenders(
            f"{source}: {int(repeated.sum())} {analysis} rows repeat a value of one run and key",
            example.to_dict("records"), "each run must appear in one table, once per key"))


def _numbers(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column).to_numpy(dtype=np.float64, na_value=np.nan)


def _group_codes(frame: pd.DataFrame, by: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Each row's group code (0.. in sorted key order; NaN keys a group of their own) and the
    groups' key values, one row per code."""
    codes = frame.groupby(by, dropna=False, sort=True).ngroup().to_numpy()
    _, first = np.unique(codes, return_index=True)
    return codes, frame.iloc[first][by].reset_index(drop=True)


def _distinct_counts(codes: np.ndarray, labels: Iterable[np.ndarray], n_groups: int) -> np.ndarray:
    """How many distinct labels each group has (over several label columns together)."""
    labels = list(labels)
    pairs = pd.DataFrame({"group": np.concatenate([codes] * len(labels)), "label": np.concatenate(labels)})
    pairs = pairs.drop_duplicates()
    return np.bincount(pairs["group"].to_numpy(dtype=np.int64), minlength=n_groups)


def _group_means(codes: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    present = ~np.isnan(values)
    sums = np.bincount(codes[present], weights=values[present], minlength=n_groups)
    counts = np.bincount(codes[present], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _seed_fold_labels(frame: pd.DataFrame, spec: TableSpec, rows: np.ndarray) -> tuple[list, list]:
    if spec.unit == "pairs":
        return ([frame["seed_1"].to_numpy()[rows], frame["seed_2"].to_numpy()[rows]],
                [frame["fold_1"].to_numpy()[rows], frame["fold_2"].to_numpy()[rows]])
    return [frame["seed"].to_numpy()[rows]], [frame["fold"].to_numpy()[rows]]


# ---------------------------------------------------------------------------------------------
# Aggregate


def _fold_labels(frame: pd.DataFrame, spec: TableSpec) -> np.ndarray:
    """Each row's fold label, the level its seeds are nested in: the run's fold; for a subspace
    pair, its fold when both runs share it, else the fold pair (``"1|2"``): pairs that cross the
    same two folds share both test sets."""
    if spec.unit != "pairs":
        return frame["fold"].to_numpy(dtype=object)
    first, second = frame["fold_1"].to_numpy(), frame["fold_2"].to_numpy()
    low, high = np.minimum(first, second), np.maximum(first, second)
    return np.array([str(a) if a == b else f"{a}|{b}" for a, b in zip(low, high)], dtype=object)


def _fold_nouns(codes: np.ndarray, folds: np.ndarray, n_groups: int) -> list[str]:
    """What each group's units are when they are fold-level means: folds, or fold pairs."""
    crosses = np.zeros(n_groups, dtype=bool)
    crossing = np.array(["|" in str(label) for label in folds], dtype=bool)
    crosses[codes[crossing]] = True
    return ["fold pairs" if cross else "folds" for cross in crosses]


def aggregate(table: pd.DataFrame, analysis: str) -> pd.DataFrame:
    """One row per configuration × key of ``analysis``'s rows in ``table`` (any number of runs):
    runs, seeds, folds, units, missing, mean, std, seed_std, ci_low, ci_high, interval (the
    nested summary of :mod:`workflow_scripts.report.statistics`: seeds averaged within folds
    first) and ``<extra>_mean``; rows sorted by configuration and keys."""
    spec = table_spec(analysis)
    frame = prepare_table(table, analysis)
    by = [*spec.configuration, *spec.keys]
    columns = summary_columns(analysis)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    _check_unique(frame, spec, analysis, by, "the table")
    codes, groups = _group_codes(frame, by)
    n_groups = len(groups)
    values = _numbers(frame[spec.value])
    folds = _fold_labels(frame, spec)
    summary = nested_summaries(codes, folds, values, n_groups, fold_noun=_fold_nouns(codes, folds, n_groups))
    counted = np.flatnonzero(~np.isnan(values))
    seeds, fold_columns = _seed_fold_labels(frame, spec, counted)
    result = pd.concat([groups, summary.drop(columns="folds")], axis=1)
    result["seeds"] = _distinct_counts(codes[counted], seeds, n_groups)
    result["folds"] = _distinct_counts(codes[counted], fold_columns, n_groups)
    for extra in spec.extras:
        result[f"{extra}_mean"] = _group_means(codes, _numbers(frame[extra]), n_groups)
    return result[columns]


# ---------------------------------------------------------------------------------------------
# LoRA against frozen


def paired_differences(table: pd.DataFrame, analysis: str) -> pd.DataFrame:
    """LoRA − frozen over runs matched on dataset, protocol, model, seed, fold and the keys: one
    row per LoRA configuration × key with the mean difference (per fold, the seeds' matched
    differences averaged; then over the folds), its interval, the paired t and Wilcoxon tests on
    the fold-level differences (on the seeds' differences with one fold) and their Holm
    adjustment across the layers of each quantity. LoRA rows without a frozen partner are left
    out; with no pair at all the table is empty."""
    if analysis not in PAIRED:
        raise InputError(f"paired differences are made for {list(PAIRED)}, not {analysis!r}")
    spec = table_spec(analysis)
    frame = prepare_table(table, analysis)
    columns = paired_columns(analysis)
    keys = list(spec.keys)
    lora = frame[frame["method"] == LORA]
    frozen = frame[frame["method"] == FROZEN]
    _check_unique(lora, spec, analysis, [*spec.configuration, *keys], "the table")
    frozen = frozen[[*PAIR_MATCH, *keys, spec.value]].rename(columns={spec.value: "frozen_value"})
    repeated = frozen.duplicated(subset=[*PAIR_MATCH, *keys], keep=False)
    if repeated.any():
        raise InputError(describe_offenders(
            f"the table: {int(repeated.sum())} frozen {analysis} rows share dataset, protocol, model, seed, fold "
            "and key, so a LoRA run has no single frozen counterpart",
            frozen.loc[repeated, [*PAIR_MATCH, *keys]].drop_duplicates().head(5).to_dict("records")))
    pairs = lora[[*spec.configuration, *RUN_COLUMNS, *keys, spec.value]].rename(columns={spec.value: "lora_value"})
    pairs = pairs.merge(frozen, on=[*PAIR_MATCH, *keys], how="inner")
    if pairs.empty:
        return pd.DataFrame(columns=columns)

    by = [*spec.configuration, *keys]
    codes, groups = _group_codes(pairs, by)
    n_groups = len(groups)
    folds = pairs["fold"].to_numpy(dtype=object)
    lora_values, frozen_values = _numbers(pairs["lora_value"]), _numbers(pairs["frozen_value"])
    differences = lora_values - frozen_values
    summary = nested_summaries(codes, folds, differences, n_groups)
    counted = np.flatnonzero(~np.isnan(differences))
    result = pd.concat([groups, summary.drop(columns="folds").rename(
        columns={"runs": "pairs", "mean": "mean_difference"})], axis=1)
    result["seeds"] = _distinct_counts(codes[counted], [pairs["seed"].to_numpy()[counted]], n_groups)
    result["folds"] = _distinct_counts(codes[counted], [folds[counted]], n_groups)
    # The two sides' means over the same complete pairs, folds weighted alike, as the difference.
    complete = np.where(np.isnan(differences), np.nan, 1.0)
    result["lora_mean"] = nested_summaries(codes, folds, lora_values * complete, n_groups)["mean"]
    result["frozen_mean"] = nested_summaries(codes, folds, frozen_values * complete, n_groups)["mean"]

    units, _ = fold_units(codes[counted], folds[counted], differences[counted])
    result = pd.concat([result, grouped_paired_tests(units, n_groups)], axis=1)
    family = [*spec.configuration, *(key for key in keys if key != spec.layer)]
    result["t_p_holm"] = np.nan
    result["wilcoxon_p_holm"] = np.nan
    for _, members in result.groupby(family, dropna=False, sort=False).groups.items():
        for test in ("t_p", "wilcoxon_p"):
            result.loc[members, f"{test}_holm"] = holm(result.loc[members, test].to_numpy(dtype=np.float64))
    return result[columns]


# ---------------------------------------------------------------------------------------------
# Reading and checking the tables


def _settings_text(record: dict) -> str:
    if "settings" not in record:
        return "no settings recorded"
    return json.dumps(record["settings"], sort_keys=True, default=str)


def read_tables(paths: Sequence[str | Path], analysis: str, expected_hash: str | dict[str, str] | None = None,
                expected_runs: Sequence[str] | None = None) -> pd.DataFrame:
    """The per-run tables of ``analysis`` as one frame, after checking each file's columns, its
    provenance's ``config_hash`` (when ``expected_hash`` is given: one hash, or one per dataset,
    ``{dataset: hash}``, for settings that depend on the dataset) and, with ``expected_runs``
    (run ids; group ids for embeddings and subspaces), that the tables hold exactly those runs.
    Every failed check is an :class:`InputError` naming the file (or the missing runs)."""
    from workflow_scripts.provenance import read_provenance

    spec = table_spec(analysis)
    if not paths:
        raise InputError(f"no {analysis} tables given")
    frames = []
    owner: dict[str, str] = {}
    for path in map(str, paths):
        if not Path(path).is_file():
            raise InputError(f"{path}: no such {analysis} table")
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises several types for a file that is not Parquet
            raise InputError(f"{path}: not a readable Parquet table ({error})") from error
        missing = _missing_columns(frame, spec)
        if missing:
            raise InputError(f"{path}: not a {analysis} table: it lacks the column(s) {missing} "
                             f"(it has {list(frame.columns)})")
        if expected_hash is not None:
            expected = _expected_hash_of(frame, expected_hash, path, analysis)
            record = read_provenance(path)
            found = record.get("config_hash")
            if found != expected:
                raise InputError(
                    f"{path}: made with settings whose hash is {found} ({_settings_text(record)}), "
                    f"but the {analysis} settings now hash to {expected}: {STALE_HINT}")
        for sample in sample_ids(frame, analysis):
            if sample in owner:
                raise InputError(f"{path}: holds {analysis} rows of {sample}, which {owner[sample]} holds too: "
                                 "give each run's table once")
            owner[sample] = path
        frames.append(frame)
    if expected_runs is not None:
        expected = set(map(str, expected_runs))
        absent = sorted(expected - set(owner))
        if absent:
            raise InputError(describe_offenders(
                f"{analysis}: no table holds rows of {len(absent)} expected run(s)", absent,
                "the analysis has not run for them, or its table was written for another grid"))
        outside = sorted(set(owner) - expected)
        if outside:
            raise InputError(describe_offenders(
                f"{analysis}: {len(outside)} run(s) in the tables are not in the expected grid",
                [f"{owner[sample]}: {sample}" for sample in outside],
                "a table from an older grid? remove it from the inputs or rerun"))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _expected_hash_of(frame: pd.DataFrame, expected_hash: str | dict[str, str], path: str, analysis: str) -> str:
    """The hash a table must carry: the one given, or its dataset's."""
    if isinstance(expected_hash, str):
        return expected_hash
    datasets = sorted(frame["dataset"].dropna().unique()) if "dataset" in frame.columns else []
    if len(datasets) != 1 or datasets[0] not in expected_hash:
        raise InputError(f"{path}: a {analysis} table of dataset(s) {datasets}; the settings are known for "
                         f"{sorted(expected_hash)}")
    return expected_hash[datasets[0]]


def parse_expected_hash(values: Sequence[str] | None) -> str | dict[str, str] | None:
    """``--expected-hash``: one hash, or ``DATASET=HASH`` per dataset."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    pairs = [value.partition("=") for value in values]
    if any(not name or not sep or not digest for name, sep, digest in pairs):
        raise InputError(f"--expected-hash {' '.join(values)}: give one hash, or DATASET=HASH per dataset")
    return {name: digest for name, _, digest in pairs}


# ---------------------------------------------------------------------------------------------
# Entry point

OUTPUT_SUFFIXES = (".parquet", ".csv", ".tsv")


def _check_output(path: str, option: str) -> None:
    if Path(path).suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"{option} {path}: the table is written as {', '.join(OUTPUT_SUFFIXES)}; "
                         f"got {Path(path).suffix or 'no suffix'}")


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.provenance import provenance, read_provenance

    parser = entry_parser("workflow_scripts.report.aggregate", __doc__, settings=False)
    parser.add_argument("--analysis", required=True, choices=sorted(TABLES), help="which analysis the tables are of")
    parser.add_argument("--tables", nargs="+", required=True, help="the analysis's per-run tables (.parquet)")
    parser.add_argument("--out", help="the aggregate table (.parquet, or .csv/.tsv)")
    parser.add_argument("--paired-out", help=f"the LoRA − frozen table (only for {', '.join(PAIRED)})")
    parser.add_argument("--expected-hash", nargs="+",
                        help="the config_hash every table's provenance must carry, or DATASET=HASH per dataset")
    parser.add_argument("--expected-runs", nargs="+",
                        help="the run ids (group ids for embeddings and subspaces) the tables must cover, no more")
    args = parser.parse_args(argv)
    if args.paired_out is not None and args.analysis not in PAIRED:
        raise InputError(f"--paired-out: paired LoRA − frozen tables are made for {', '.join(PAIRED)}, "
                         f"not {args.analysis}")
    if args.out is None and args.paired_out is None:
        raise InputError("give --out (the aggregate), --paired-out (the paired table) or both")
    for path, option in ((args.out, "--out"), (args.paired_out, "--paired-out")):
        if path is not None:
            _check_output(path, option)
    expected_hash = parse_expected_hash(args.expected_hash)

    table = read_tables(args.tables, args.analysis, expected_hash, args.expected_runs)
    aggregated = aggregate(table, args.analysis) if args.out is not None else None
    paired = paired_differences(table, args.analysis) if args.paired_out is not None else None

    settings = {"analysis": args.analysis, "confidence": CONFIDENCE, "t_from": T_FROM,
                "wilcoxon_min_units": WILCOXON_MIN_UNITS}
    inputs = [{"path": path, "config_hash": read_provenance(path).get("config_hash")} for path in args.tables]
    if aggregated is not None:
        write_table(args.out, aggregated,
                    provenance=provenance("aggregate", settings, inputs=inputs, expected_hash=expected_hash))
    if paired is not None:
        write_table(args.paired_out, paired,
                    provenance=provenance("aggregate_paired", settings, inputs=inputs, expected_hash=expected_hash))
    log.info("%s: %d tables -> %s aggregate rows%s", args.analysis, len(args.tables),
             "no" if aggregated is None else len(aggregated), "" if paired is None else f", {len(paired)} paired rows")


if __name__ == "__main__":
    run_main(main)
