"""The dynamics summary: onsets and emergences per run and layer, their nested summary and the
findings rows, each checked by hand on small tables in the dynamics contract's format."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.analyses.output import with_run_columns
from workflow_scripts.dynamics.summary import (
    NEVER,
    REACHED,
    SEED_PAIRS,
    UNDEFINED,
    dynamics_thresholds,
    emergences,
    findings_rows,
    main,
    onset_table,
    seed_floor,
    summary_table,
)
from workflow_scripts.errors import InputError
from workflow_scripts.report.findings import COLUMNS
from workflow_scripts.runs import Run

STEPS_PER_EPOCH = 10
#: (checkpoint id, step): given out of training order on purpose (the summary must sort by step).
CHECKPOINTS = [("epoch2", 20), ("epoch0", 0), ("step3", 3), ("epoch1", 10)]
ORDERED = sorted(CHECKPOINTS, key=lambda item: item[1])
THRESHOLDS = {"lens_agreement": 0.5, "probe_fraction": 0.9}


def run(seed: int = 0, fold: int = 1, rank: int = 8) -> Run:
    return Run("demo", "loso_speaker", "whisper-base", "lora", "q_proj+v_proj", rank, seed, fold)


def checkpoint_columns(checkpoint: str, step: int) -> dict:
    return {"checkpoint": checkpoint, "step": step, "epoch": step / STEPS_PER_EPOCH}


def representation(curves: dict) -> pd.DataFrame:
    """A dynamics_representation table of several runs: ``{run: {layer: CKA to base per checkpoint
    in training order}}`` (reference "final" rows beside, which the onset must ignore)."""
    frames = []
    for of_run, layers in curves.items():
        rows = []
        for checkpoint, step in CHECKPOINTS:
            position = ORDERED.index((checkpoint, step))
            for layer, curve in layers.items():
                for reference, value in (("base", curve[position]), ("final", 0.0)):
                    rows.append({**checkpoint_columns(checkpoint, step), "reference": reference, "layer": layer,
                                 "value": value, "null_mean": 0.01, "null_p95": 0.05, "clips": 16})
        frames.append(with_run_columns(pd.DataFrame(rows), of_run))
    return pd.concat(frames, ignore_index=True)


def readouts(curves: dict) -> pd.DataFrame:
    """A dynamics_readouts table: ``{run: {(readout, statistic, layer): values in training order}}``."""
    frames = []
    for of_run, series in curves.items():
        rows = [{**checkpoint_columns(checkpoint, step), "readout": readout, "layer": layer, "statistic": statistic,
                 "value": values[ORDERED.index((checkpoint, step))], "clips": 16}
                for (readout, statistic, layer), values in series.items() for checkpoint, step in CHECKPOINTS]
        frames.append(with_run_columns(pd.DataFrame(rows), of_run))
    return pd.concat(frames, ignore_index=True)


def cka_seeds(floors: dict) -> pd.DataFrame:
    """cka_seeds tables (layer_cka's columns) of later-seed runs: ``{run: {layer: CKA to the first
    seed}}``; off-diagonal and RBF rows beside, which the floor must ignore."""
    frames = []
    for of_run, layers in floors.items():
        rows = []
        for layer_a in layers:
            for layer_b in layers:
                for kernel, estimator in (("linear", "debiased"), ("linear", "biased"), ("rbf", "debiased")):
                    value = layers[layer_a] if (layer_a == layer_b and kernel == "linear"
                                                and estimator == "debiased") else 0.01
                    rows.append({"pairing": "seed_vs_seed", "layer_a": layer_a, "layer_b": layer_b, "kernel": kernel,
                                 "rbf_multiple": 1.0 if kernel == "rbf" else np.nan, "estimator": estimator,
                                 "value": value, "null_mean": 0.0, "null_p95": 0.1, "permutations": 20, "n": 16,
                                 "other_run": run(0, of_run.fold).id, "note": ""})
        frames.append(with_run_columns(pd.DataFrame(rows), of_run))
    return pd.concat(frames, ignore_index=True)


def empty(kind: str) -> pd.DataFrame:
    """A table of ``kind`` (representation, readouts) with its columns and no rows."""
    keys = ["reference", "layer", "value"] if kind == "representation" else ["readout", "layer", "statistic", "value"]
    return pd.DataFrame(columns=[*with_run_columns(pd.DataFrame(), run()).columns, "checkpoint", "step", "epoch",
                                 *keys])


def row_of(table: pd.DataFrame, of_run: Run, quantity: str, layer: int) -> pd.Series:
    match = table[(table["run"] == of_run.id) & (table["quantity"] == quantity) & (table["layer"] == layer)]
    assert len(match) == 1
    return match.iloc[0]


# -- the floor and the onset -------------------------------------------------------------------------

def test_the_floor_is_the_mean_same_layer_linear_debiased_cka_over_seed_pairs():
    floor = seed_floor(cka_seeds({run(1): {0: 0.8, 1: 0.9}, run(2): {0: 0.6, 1: 0.7},
                                  run(1, fold=2): {0: 0.5, 1: 0.5}}))
    fold1 = floor[floor["fold"] == 1].set_index("layer")
    assert fold1.loc[0, "floor"] == pytest.approx(0.7) and fold1.loc[1, "floor"] == pytest.approx(0.8)
    assert (fold1["pairs"] == 2).all()
    assert floor[floor["fold"] == 2].set_index("layer").loc[0, "floor"] == pytest.approx(0.5)


def test_the_onset_is_the_first_checkpoint_in_step_order_below_the_floor():
    # Floor at fold 1: layer 0 0.7, layer 1 0.8. Training order: epoch0, step3, epoch1, epoch2.
    table = onset_table(
        representation({run(0): {0: [1.0, 0.95, 0.65, 0.5], 1: [1.0, 0.79, 0.3, 0.2], 2: [1.0, 1.0, 1.0, 0.99]},
                        run(1): {0: [1.0, 0.9, 0.9, 0.69], 1: [1.0, 0.9, 0.9, 0.9], 2: [1.0, 1.0, 1.0, 1.0]}}),
        empty("readouts"),
        cka_seeds({run(1): {0: 0.7, 1: 0.8, 2: 0.9}}), THRESHOLDS)
    first = row_of(table, run(0), "onset", 0)
    assert (first["checkpoint"], first["step"], first["epoch"], first["outcome"]) == ("epoch1", 10, 1.0, REACHED)
    assert first["threshold"] == pytest.approx(0.7)
    assert row_of(table, run(0), "onset", 1)["checkpoint"] == "step3"  # 0.79 < 0.8, before epoch1
    never = row_of(table, run(0), "onset", 2)
    assert never["outcome"] == NEVER and np.isnan(never["epoch"]) and pd.isna(never["checkpoint"])
    assert row_of(table, run(1), "onset", 0)["checkpoint"] == "epoch2"  # the first seed shares the fold's floor


def test_without_a_second_seed_the_onset_is_undefined_and_says_why():
    table = onset_table(representation({run(0, fold=3): {0: [1.0, 0.5, 0.4, 0.3]}}),
                        readouts({run(0, fold=3): {("probe", "uar", 0): [0.2, 0.3, 0.4, 0.5]}}),
                        cka_seeds({run(1): {0: 0.7}}), THRESHOLDS)  # a floor of fold 1 only
    onset = row_of(table, run(0, fold=3), "onset", 0)
    assert onset["outcome"] == UNDEFINED and np.isnan(onset["epoch"]) and "two seeds" in onset["note"]
    summary = summary_table(table).set_index("quantity").loc["onset"]
    assert summary["undefined"] == 1 and summary["missing"] == 1 and "two seeds" in summary["note"]
    no_tables = onset_table(representation({run(0): {0: [1.0, 0.5, 0.4, 0.3]}}),
                            readouts({run(0): {("probe", "uar", 0): [0.2, 0.3, 0.4, 0.5]}}), None, THRESHOLDS)
    assert row_of(no_tables, run(0), "onset", 0)["outcome"] == UNDEFINED


# -- emergence --------------------------------------------------------------------------------------

def test_lens_emergence_needs_agreement_above_the_threshold_and_probe_emergence_reaches_the_fraction():
    rows = pd.DataFrame(emergences(readouts({run(0): {
        ("lens raw", "agreement", 0): [0.1, 0.5, 0.51, 0.9],     # 0.5 is not above one half: epoch1
        ("lens normed", "agreement", 0): [0.2, 0.3, 0.4, 0.45],  # never
        ("probe", "uar", 0): [0.3, 0.72, 0.6, 0.8],              # 0.9 × 0.8 = 0.72 is reached at step3
        ("probe", "war", 0): [0.9, 0.9, 0.9, 0.9],               # not the probe's statistic
    }}), 0.5, 0.9))
    raw = row_of(rows, run(0), "emergence_lens_raw", 0)
    assert (raw["checkpoint"], raw["epoch"]) == ("epoch1", 1.0)
    assert row_of(rows, run(0), "emergence_lens_normed", 0)["outcome"] == NEVER
    probe = row_of(rows, run(0), "emergence_probe", 0)
    assert (probe["checkpoint"], probe["step"], probe["epoch"]) == ("step3", 3, 0.3)
    assert probe["threshold"] == pytest.approx(0.72)
    assert len(rows) == 3


def test_the_thresholds_come_from_the_dynamics_section():
    assert dynamics_thresholds({}) == {"lens_agreement": 0.5, "probe_fraction": 0.9}  # the schema's defaults
    assert dynamics_thresholds({"probe_fraction": 0.5})["probe_fraction"] == 0.5
    with pytest.raises(InputError, match=r"dynamics\.lens_agreement"):
        dynamics_thresholds({"lens_agreement": 1.5})
    rows = pd.DataFrame(emergences(readouts({run(0): {("probe", "uar", 0): [0.3, 0.41, 0.6, 0.8]}}), 0.5, 0.5))
    assert row_of(rows, run(0), "emergence_probe", 0)["checkpoint"] == "step3"  # 0.41 ≥ 0.4


def test_bad_tables_are_named():
    with pytest.raises(InputError, match="dynamics_readouts table lacks columns"):
        emergences(pd.DataFrame({"run": ["x"]}), 0.5, 0.9)
    twice = readouts({run(0): {("probe", "uar", 0): [0.3, 0.4, 0.6, 0.8]}})
    with pytest.raises(InputError, match="repeat a run, checkpoint and key"):
        emergences(pd.concat([twice, twice]), 0.5, 0.9)


# -- nested summary and findings ----------------------------------------------------------------------

def emergence_rows(positions_by_run: dict, readout: str = "probe") -> pd.DataFrame:
    """Onset rows from readouts that reach their threshold at a chosen checkpoint per layer:
    ``{run: [checkpoint index in training order, or None = never, per layer]}``. A probe's UAR
    jumps from 0.1 to 1.0 there (0.9 × its final 1.0 is reached); a raw lens's agreement from
    0.1 to 0.9 (above one half); None keeps the lens at 0.1 (a probe reaches its own final value
    at the latest at the final checkpoint: it cannot stay below it)."""
    statistic, high = ("uar", 1.0) if readout == "probe" else ("agreement", 0.9)
    curves = {of_run: {(readout, statistic, layer): [0.1 if position is None or i < position else high
                                                      for i in range(len(ORDERED))]
                       for layer, position in enumerate(positions)}
              for of_run, positions in positions_by_run.items()}
    return onset_table(empty("representation"), readouts(curves), None, THRESHOLDS)


def test_the_summary_nests_seeds_in_folds_and_counts_never():
    # Epochs in training order: epoch0 0.0, step3 0.3, epoch1 1.0, epoch2 2.0.
    rows = emergence_rows({run(0, 1): [1, 2], run(1, 1): [3, 2], run(0, 2): [2, None], run(1, 2): [2, None]},
                          "lens raw")
    summary = summary_table(rows).set_index(["quantity", "layer"])
    layer0 = summary.loc[("emergence_lens_raw", 0)]
    # fold 1: (0.3 + 2.0) / 2 = 1.15; fold 2: 1.0; the mean of the fold means 1.075, their range.
    assert layer0["mean"] == pytest.approx(1.075)
    assert (layer0["ci_low"], layer0["ci_high"]) == pytest.approx((1.0, 1.15))
    assert layer0["interval"] == "range over folds" and layer0["runs"] == 4 and layer0["never"] == 0
    layer1 = summary.loc[("emergence_lens_raw", 1)]
    assert layer1["never"] == 2 and layer1["missing"] == 2 and layer1["runs"] == 2
    assert layer1["mean"] == pytest.approx(1.0) and layer1["interval"] == "range over seeds (1 fold)"
    assert layer1["seeds"] == 2 and layer1["folds"] == 1


def test_findings_give_spearman_per_run_and_kendall_between_seeds():
    # Three layers; seed 0 reaches the probe's fraction late layers first (Spearman −1), seed 1 in
    # the same order; seed 2 in the opposite order (Spearman +1).
    rows = emergence_rows({run(0): [3, 2, 1], run(1): [3, 2, 0], run(2): [0, 1, 3]})
    findings = findings_rows(rows, summary_table(rows))
    assert list(findings.columns) == COLUMNS
    order = findings[findings["finding"] == "do late layers change first or last (emergence_probe)"].iloc[0]
    # per run −1, −1, +1 on one fold: the mean over the seeds −1/3, their range.
    assert order["value"] == pytest.approx(-1 / 3) and (order["ci_low"], order["ci_high"]) == (-1.0, 1.0)
    assert order["interval"] == "range over seeds (1 fold)" and order["runs"] == 3
    assert "0: 1.33, 1: 0.767, 2: 0.767" in order["detail"]  # the mean epoch per layer
    seeds = findings[findings["finding"] == "is the emergence_probe order the same across seeds"].iloc[0]
    # pairs 0~1: tau 1, 0~2: −1, 1~2: −1.
    assert seeds["value"] == pytest.approx(-1 / 3) and (seeds["ci_low"], seeds["ci_high"]) == (-1.0, 1.0)
    assert seeds["interval"] == SEED_PAIRS and seeds["runs"] == 3 and "seeds 0~1 1" in seeds["detail"]


def test_one_seed_gives_no_seed_order_and_onset_rows_say_the_floor_is_missing():
    table = onset_table(representation({run(0): {0: [1.0, 0.5, 0.4, 0.3], 1: [1.0, 0.9, 0.4, 0.3]}}),
                        readouts({run(0): {("probe", "uar", 0): [0.2, 0.3, 0.4, 0.5]}}), None, THRESHOLDS)
    findings = findings_rows(table, summary_table(table)).set_index(["finding"])
    seeds = findings.loc["is the onset order the same across seeds"]
    assert np.isnan(seeds["value"]) and seeds["interval"] == "none" and "one seed, no pair" in seeds["detail"]
    order = findings.loc["do late layers change first or last (onset)"]
    assert np.isnan(order["value"]) and order["missing"] == 1 and "two seeds" in order["detail"]


# -- entry point and findings.py --------------------------------------------------------------------

def test_the_entry_point_writes_onsets_summary_and_findings_that_findings_py_appends(tmp_path):
    from workflow_scripts.provenance import read_provenance
    from workflow_scripts.report.findings import read_extra_rows

    runs = [run(0), run(1)]
    paths = {}
    for name, table in (("representation", representation({r: {0: [1.0, 0.9, 0.5, 0.4]} for r in runs})),
                        ("readouts", readouts({r: {("probe", "uar", 0): [0.2, 0.5, 0.8, 0.8],
                                                   ("lens raw", "agreement", 0): [0.2, 0.6, 0.8, 0.9]}
                                               for r in runs})),
                        ("cka_seeds", cka_seeds({run(1): {0: 0.7}}))):
        paths[name] = tmp_path / f"{name}.parquet"
        table.to_parquet(paths[name])
    out = tmp_path / "out"
    main(["--representation", str(paths["representation"]), "--readouts", str(paths["readouts"]),
          "--cka-seeds", str(paths["cka_seeds"]), "--spec", json.dumps({"probe_fraction": 0.9}),
          "--onsets", str(out / "onsets.parquet"), "--summary", str(out / "summary.parquet"),
          "--findings", str(out / "findings.csv")])
    onsets = pd.read_parquet(out / "onsets.parquet")
    assert set(onsets.loc[onsets["quantity"] == "onset", "checkpoint"]) == {"epoch1"}
    assert read_provenance(out / "summary.parquet")["settings"] == THRESHOLDS
    summary = pd.read_parquet(out / "summary.parquet")
    assert summary.loc[summary["quantity"] == "emergence_probe", "mean"].iloc[0] == pytest.approx(1.0)
    extra = read_extra_rows([str(out / "findings.csv")])
    assert list(extra.columns) == COLUMNS and len(extra) == 4


def test_the_findings_entry_point_appends_dynamics_rows_and_refuses_a_foreign_table(tmp_path):
    import test_findings

    from workflow_scripts.report.findings import main as findings_main

    lens = test_findings.lens_table({("lora", 8, 0, 1): [0.2, 0.9], ("frozen", 0, 0, 1): [0.6, 0.7]})
    lens.to_parquet(tmp_path / "lens.parquet")
    pd.DataFrame([{**test_findings.run_columns("lora", 8, 0, 1), "block": 0, "statistic": "attn_ratio",
                   "value": 0.1}]).to_parquet(tmp_path / "contribution.parquet")
    pd.DataFrame({**test_findings.CONFIG, "method": ["lora"], "targets": ["q_proj+v_proj"], "rank": [8],
                  "block": [0], "statistic": ["attn_ratio"], "mean_difference": [0.01],
                  "pairs": [1]}).to_parquet(tmp_path / "paired.parquet")
    pd.DataFrame([{**test_findings.run_columns("lora", 8, 0, 1), "label": "lora_random", "quantity": "a_out",
                   "module": "all", "statistic": "ratio_mean_k90", "value": 3.0}]).to_parquet(
        tmp_path / "spectra.parquet")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({**{k: v for k, v in test_findings.run_columns("lora", 8, 0, 1).items()
                                      if k != "run"}, "test": {"uar": 0.7, "war": 0.7, "macro_f1": 0.7},
                                   "trainable_parameters": 1, "selected_on_test": False}))
    rows = emergence_rows({run(0): [3, 2, 1], run(1): [3, 2, 0]})
    dynamics = tmp_path / "dynamics.csv"
    findings_rows(rows, summary_table(rows)).to_csv(dynamics, index=False)
    arguments = ["--logit-lens", str(tmp_path / "lens.parquet"),
                 "--contribution", str(tmp_path / "contribution.parquet"),
                 "--paired-contribution", str(tmp_path / "paired.parquet"), "--spectra-comparison",
                 str(tmp_path / "spectra.parquet"), "--metrics", str(metrics)]
    findings_main([*arguments, "--out", str(tmp_path / "plain.csv")])
    findings_main([*arguments, "--dynamics", str(dynamics), "--out", str(tmp_path / "with.csv")])
    plain, with_dynamics = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(tmp_path / "with.csv")
    pd.testing.assert_frame_equal(with_dynamics.iloc[:len(plain)], plain)  # the other rows unchanged
    assert list(with_dynamics["finding"].iloc[len(plain):]) == list(pd.read_csv(dynamics)["finding"])
    foreign = tmp_path / "foreign.csv"
    pd.DataFrame({"finding": ["x"], "value": [1.0]}).to_csv(foreign, index=False)
    with pytest.raises(InputError, match="foreign.csv"):
        findings_main([*arguments, "--dynamics", str(foreign), "--out", str(tmp_path / "bad.csv")])
