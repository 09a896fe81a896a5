"""The findings table: each finding recomputed by hand on small constructed tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.report.findings import (
    contribution_beyond_spread,
    findings_html,
    findings_table,
    first_agreeing_layer,
    k90_ratios,
    main,
    lora_seed_spread,
    uar_difference,
)

CONFIG = {"dataset": "demo", "protocol": "loso_speaker", "model": "whisper-base"}


def run_id(method: str, rank: int, seed: int, fold: int) -> str:
    targets = "none" if method == "frozen" else "q_proj+v_proj"
    return f"demo/loso_speaker/whisper-base/{method}/{targets}/r{rank}/seed{seed}/fold{fold}"


def run_columns(method: str, rank: int, seed: int, fold: int) -> dict:
    return {"run": run_id(method, rank, seed, fold), **CONFIG, "method": method,
            "targets": "none" if method == "frozen" else "q_proj+v_proj", "rank": rank, "seed": seed, "fold": fold}


def lens_table(agreement_by_run: dict) -> pd.DataFrame:
    rows = []
    for (method, rank, seed, fold), curve in agreement_by_run.items():
        for layer, value in enumerate(curve):
            for lens in ("raw", "normed"):
                rows.append({**run_columns(method, rank, seed, fold), "lens": lens, "layer": layer,
                             "statistic": "agreement", "value": value if lens == "normed" else 0.0, "clips": 32})
    return pd.DataFrame(rows)


def lens_curves(curves: dict) -> pd.DataFrame:
    """A logit_lens table from {(method, rank, seed, fold, lens): agreement per layer}."""
    return pd.DataFrame([{**run_columns(method, rank, seed, fold), "lens": lens, "layer": layer,
                          "statistic": "agreement", "value": value, "clips": 32}
                         for (method, rank, seed, fold, lens), curve in curves.items()
                         for layer, value in enumerate(curve)])


def test_first_agreeing_layer_is_per_run_then_summarised():
    lens = lens_table({("lora", 8, 0, 1): [0.2, 0.4, 0.6, 0.9], ("lora", 8, 1, 1): [0.1, 0.5, 0.51, 0.7],
                       ("frozen", 0, 0, 1): [0.2, 0.3, 0.4, 0.45], ("frozen", 0, 1, 1): [0.6, 0.3, 0.4, 0.8]})
    rows = {(row["method"], row["finding"]): row for row in first_agreeing_layer(lens)}
    normed = "first layer the normed lens agrees (> half the clips)"
    # LoRA: layers 2 and 2 (0.5 is not more than half); frozen: never, and 0.
    assert rows["lora", normed]["value"] == 2 and rows["lora", normed]["runs"] == 2
    assert rows["lora", normed]["interval"] == "range over seeds (1 fold)"
    frozen = rows["frozen", normed]
    assert frozen["value"] == 0 and frozen["runs"] == 1 and frozen["missing"] == 1
    assert "never" in frozen["detail"] and "the paper's layer L − 1" in frozen["detail"]


def test_the_raw_lens_has_its_own_first_layer_beside_the_normed_one():
    # The paper's F2 reads the raw lens; the normed lens agrees at the last layer by construction.
    lens = lens_curves({("lora", 8, 0, 1, "raw"): [0.3, 0.3, 0.6, 0.95], ("lora", 8, 0, 1, "normed"): [0.3, 0.7, 0.8, 1.0],
                        ("lora", 8, 0, 2, "raw"): [0.3, 0.3, 0.3, 0.9], ("lora", 8, 0, 2, "normed"): [0.3, 0.3, 0.9, 1.0]})
    rows = {row["finding"]: row for row in first_agreeing_layer(lens)}
    raw = rows["first layer the raw lens agrees (> half the clips)"]
    normed = rows["first layer the normed lens agrees (> half the clips)"]
    assert (raw["value"], raw["runs"], raw["interval"]) == (2.5, 2, "range over folds")
    assert (raw["ci_low"], raw["ci_high"]) == (2.0, 3.0)
    assert normed["value"] == 1.5 and "by construction" in normed["detail"]
    assert "by construction" not in raw["detail"] and "0 = the embeddings" in raw["detail"]


def test_seeds_are_nested_in_folds_for_the_lens_finding():
    # fold 1: seeds at layers 1 and 3 (fold mean 2); fold 2: one seed at layer 4: mean of fold means 3, not 8/3.
    lens = lens_curves({("lora", 8, 0, 1, "raw"): [0, 1, 1, 1, 1], ("lora", 8, 1, 1, "raw"): [0, 0, 0, 1, 1],
                        ("lora", 8, 0, 2, "raw"): [0, 0, 0, 0, 1]})
    (row,) = first_agreeing_layer(lens)
    assert row["value"] == pytest.approx(3.0) and row["runs"] == 3


def test_lora_seed_spread_pools_within_folds():
    rows = [{**run_columns("lora", 8, seed, fold), "block": 0, "statistic": "attn_ratio", "value": value}
            for seed, fold, value in ((0, 1, 1.0), (1, 1, 3.0), (0, 2, 10.0), (1, 2, 14.0), (0, 3, 7.0))]
    rows.append({**run_columns("frozen", 0, 0, 1), "block": 0, "statistic": "attn_ratio", "value": 100.0})
    spread = lora_seed_spread(pd.DataFrame(rows))
    # fold 1: squares 2, fold 2: squares 8, fold 3 alone: no degrees of freedom -> sqrt(10 / 2); frozen left out
    assert len(spread) == 1 and spread["lora_seed_std"].iloc[0] == pytest.approx(np.sqrt(5.0))


def test_contribution_blocks_beyond_the_seed_spread():
    rows = []
    for seed, offset in ((0, 0.0), (1, 0.02)):
        for block, value in enumerate([0.10, 0.20, 0.30]):
            rows.append({**run_columns("lora", 8, seed, 1), "block": block, "statistic": "attn_ratio",
                         "value": value + offset})
    contribution = pd.DataFrame(rows)
    # The paired table's own seed_std (of the differences) must not stand in for the LoRA values' spread.
    paired = pd.DataFrame({**CONFIG, "method": "lora", "targets": "q_proj+v_proj", "rank": 8, "block": [0, 1, 2],
                           "statistic": "attn_ratio", "mean_difference": [0.001, -0.05, 0.013], "pairs": 2,
                           "seed_std": 1.0})
    (row,) = contribution_beyond_spread(contribution, paired)
    spread = np.sqrt(2 * 0.01**2)  # two seeds 0.02 apart: sample std 0.0141
    assert row["value"] == 1 and "1 (-0.050" in row["detail"] and f"{spread:.3f}" in row["detail"]


def test_k90_ratios_are_the_lora_random_rows_with_the_paper_beside():
    rows = []
    for seed, ratio in ((0, 4.0), (1, 6.0)):
        for quantity in ("a_out", "b_grad"):
            rows.append({**run_columns("lora", 8, seed, 1), "label": "lora_random", "quantity": quantity,
                         "module": "all", "statistic": "ratio_mean_k90", "value": ratio})
            rows.append({**run_columns("lora", 8, seed, 1), "label": "lora_random", "quantity": quantity,
                         "module": "q_proj", "statistic": "ratio_mean_k90", "value": 100.0})
    table = {row["quantity"]: row for row in k90_ratios(pd.DataFrame(rows))}
    assert table["U (A output)"]["value"] == 5.0 and table["U (A output)"]["runs"] == 2
    assert table["U (A output)"]["paper"] == 5.5 and table["gV (B gradient)"]["paper"] == 0.4
    assert table["U (A output)"]["interval"] == "range over seeds (1 fold)"


def test_uar_difference_pairs_matching_seeds_and_folds():
    runs = pd.DataFrame([{**run_columns(m, r, s, 1), "uar": u} for m, r, s, u in
                         [("lora", 8, 0, 0.7), ("lora", 8, 1, 0.6), ("frozen", 0, 0, 0.5), ("frozen", 0, 1, 0.55),
                          ("lora", 8, 2, 0.9)]]).drop(columns="run")
    (row,) = uar_difference(runs)
    assert row["value"] == pytest.approx((0.2 + 0.05) / 2) and row["runs"] == 2
    assert row["interval"] == "range over seeds (1 fold)"


def test_uar_difference_keeps_datasets_protocols_and_models_apart():
    rows = []
    for dataset, protocol, model, gain in (("demo", "loso_speaker", "whisper-base", 0.2),
                                           ("crema", "loso_speaker", "whisper-base", -0.1),
                                           ("demo", "holdout", "whisper-base", 0.05),
                                           ("demo", "loso_speaker", "tiny", 0.4)):
        for method, rank, uar in (("lora", 8, 0.5 + gain), ("frozen", 0, 0.5)):
            rows.append({**run_columns(method, rank, 0, 1), "dataset": dataset, "protocol": protocol,
                         "model": model, "uar": uar})
    table = {(row["dataset"], row["protocol"], row["model"]): row for row in uar_difference(pd.DataFrame(rows))}
    assert len(table) == 4
    assert table["crema", "loso_speaker", "whisper-base"]["value"] == pytest.approx(-0.1)
    assert table["demo", "loso_speaker", "tiny"]["value"] == pytest.approx(0.4)
    assert all(row["runs"] == 1 and row["method"] == "lora" for row in table.values())


def test_the_table_and_page_hold_every_finding(tmp_path):
    lens = lens_table({("lora", 8, 0, 1): [0.2, 0.9], ("frozen", 0, 0, 1): [0.6, 0.7]})
    configuration = ["dataset", "protocol", "model", "method", "targets", "rank"]
    table = findings_table(lens, pd.DataFrame(columns=["run", *configuration, "seed", "fold", "block", "statistic",
                                                       "value"]),
                           pd.DataFrame(columns=[*configuration, "block", "statistic", "mean_difference", "pairs"]),
                           pd.DataFrame(columns=["run", "fold", "label", "quantity", "module", "statistic", "value"]),
                           pd.DataFrame(columns=["dataset", "protocol", "model", "seed", "fold", "method", "targets",
                                                 "rank", "uar"]))
    assert sorted(table["finding"]) == (["first layer the normed lens agrees (> half the clips)"] * 2
                                        + ["first layer the raw lens agrees (> half the clips)"] * 2)
    page = findings_html(table)
    assert page.count("<tr>") == 5 and "normed lens" in page


def test_the_entry_point_writes_csv_and_html(tmp_path):
    lens = lens_table({("lora", 8, 0, 1): [0.2, 0.9], ("frozen", 0, 0, 1): [0.6, 0.7]})
    lens_path = tmp_path / "lens.parquet"
    lens.to_parquet(lens_path)
    contribution = pd.DataFrame([{**run_columns("lora", 8, 0, 1), "block": 0, "statistic": "attn_ratio",
                                  "value": 0.1}])
    contribution.to_parquet(tmp_path / "contribution.parquet")
    pd.DataFrame({**CONFIG, "method": ["lora"], "targets": ["q_proj+v_proj"], "rank": [8], "block": [0],
                  "statistic": ["attn_ratio"],
                  "mean_difference": [0.01], "pairs": [1]}).to_parquet(tmp_path / "paired.parquet")
    pd.DataFrame([{**run_columns("lora", 8, 0, 1), "label": "lora_random", "quantity": "a_out", "module": "all",
                   "statistic": "ratio_mean_k90", "value": 3.0}]).to_parquet(tmp_path / "spectra.parquet")
    metrics = []
    for method, rank, uar in (("lora", 8, 0.7), ("frozen", 0, 0.5)):
        path = tmp_path / f"{method}.json"
        columns = run_columns(method, rank, 0, 1)
        path.write_text(json.dumps({**{k: columns[k] for k in ("dataset", "protocol", "model", "method", "targets",
                                                                 "rank", "seed", "fold")},
                                    "test": {"uar": uar, "war": uar, "macro_f1": uar},
                                    "trainable_parameters": 1, "selected_on_test": False}))
        metrics.append(str(path))
    out = tmp_path / "report" / "findings.csv"
    out.parent.mkdir()
    main(["--logit-lens", str(lens_path), "--contribution", str(tmp_path / "contribution.parquet"),
          "--paired-contribution", str(tmp_path / "paired.parquet"), "--spectra-comparison",
          str(tmp_path / "spectra.parquet"), "--metrics", *metrics, "--out", str(out)])
    table = pd.read_csv(out)
    assert set(table["finding"]) == {"first layer the normed lens agrees (> half the clips)",
                                     "first layer the raw lens agrees (> half the clips)",
                                     "blocks where LoRA − frozen exceeds the seed spread",
                                     "k90 ratio untrained / trained", "UAR LoRA − frozen"}
    assert out.with_suffix(".html").read_text().count("<tr>") == len(table) + 1
