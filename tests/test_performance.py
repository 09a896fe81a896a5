"""The performance table over runs: known answers from hand-written metrics files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.errors import InputError
from workflow_scripts.report.performance import collect, main, markdown, performance_table


def write_metrics(folder, method, seed, fold, uar, war, f1, rank=8, targets="v_proj", selected_on_test=False,
                  select_metric=None, alpha=None):
    """``alpha``: ``(lora_alpha, lora_alpha_policy)`` as train.run records them, or None (older files)."""
    path = folder / f"{method}_{select_metric}_{seed}_{fold}_r{rank}.json"
    metrics = {
        "dataset": "iemocap", "protocol": "loso_session", "model": "large-v2", "method": method,
        "targets": targets, "rank": rank, "seed": seed, "fold": fold,
        "test": {"uar": uar, "war": war, "macro_f1": f1}, "trainable_parameters": 1000,
        "selected_on_test": selected_on_test,
    }
    if select_metric is not None:  # files written before the selection metric was recorded lack it
        metrics["select_metric"] = select_metric
    if alpha is not None:
        metrics["lora_alpha"], metrics["lora_alpha_policy"] = alpha
    path.write_text(json.dumps(metrics))
    return str(path)


# lora: 2 seeds x 3 folds, UAR fold means .72 .78 .69 (mean .73, sample std sqrt(.0042 / 2)),
# within-fold variances .0008 .0008 .0018.
LORA_UAR = {(0, 1): 0.70, (1, 1): 0.74, (0, 2): 0.76, (1, 2): 0.80, (0, 3): 0.66, (1, 3): 0.72}


FULL_UAR = (0.93, 0.99, 0.97, 0.99, 0.99)


@pytest.fixture
def paths(tmp_path):
    paths = [write_metrics(tmp_path, "lora", seed, fold, uar, uar - 0.01, uar - 0.02)
             for (seed, fold), uar in LORA_UAR.items()]
    paths.append(write_metrics(tmp_path, "frozen", 0, 1, 0.6, 0.6, 0.6, rank=0, targets="none",
                               selected_on_test=True))
    # Five folds near the top of the range: the t-interval (df 4) would reach past 1.
    paths += [write_metrics(tmp_path, "full", 0, fold, uar, uar - 0.01, uar - 0.02, rank=0, targets="none",
                            selected_on_test=True, select_metric="war") for fold, uar in enumerate(FULL_UAR, 1)]
    return paths


def test_interval_over_fold_means_with_seeds_nested(paths):
    table = performance_table(collect(paths)).set_index("method")
    lora = table.loc["lora"]
    assert (lora["runs"], lora["seeds"], lora["folds"]) == (6, 2, 3)
    assert lora["uar_mean"] == pytest.approx(0.73)
    assert lora["uar_std"] == pytest.approx(np.sqrt(0.0042 / 2))  # over the 3 fold means, not the 6 runs
    assert lora["uar_std_ddof0"] == pytest.approx(np.sqrt(0.0042 / 3))
    # 3 fold means: their range, called a range (a 95 % interval needs 5 folds)
    assert (lora["uar_ci_low"], lora["uar_ci_high"]) == pytest.approx((0.69, 0.78))
    assert lora["uar_interval"] == "range over folds" and lora["units"] == 3
    assert lora["uar_seed_std"] == pytest.approx(np.sqrt((0.0008 + 0.0008 + 0.0018) / 3))
    assert lora["war_mean"] == pytest.approx(0.72)
    assert table.loc["frozen", "selected_on_test"]


def test_interval_is_clipped_to_the_metric_range(paths):
    full = performance_table(collect(paths)).set_index("method").loc["full"]
    half = 2.7764451051977987 * np.std(FULL_UAR, ddof=1) / np.sqrt(5)  # t(0.975, df = 5 folds - 1)
    assert np.mean(FULL_UAR) + half > 1
    assert (full["uar_ci_low"], full["uar_ci_high"]) == pytest.approx((np.mean(FULL_UAR) - half, 1.0))
    assert full["uar_interval"] == "t95 over folds"


def test_one_fold_and_one_seed_have_no_spread(paths):
    frozen = performance_table(collect(paths)).set_index("method").loc["frozen"]
    assert frozen["uar_mean"] == pytest.approx(0.6) and frozen["uar_std_ddof0"] == 0.0
    assert frozen[["uar_std", "uar_ci_low", "uar_ci_high", "uar_seed_std"]].isna().all()


def test_selection_metric_is_a_column_and_missing_means_uar(paths):
    table = performance_table(collect(paths)).set_index("method")
    assert table["select_metric"].to_dict() == {"frozen": "uar", "full": "war", "lora": "uar"}


def test_runs_selected_on_different_metrics_are_not_pooled(tmp_path):
    paths = [write_metrics(tmp_path, "lora", 0, 1, 0.7, 0.7, 0.7, select_metric=metric) for metric in ("uar", "war")]
    table = performance_table(collect(paths))
    assert table["select_metric"].tolist() == ["uar", "war"] and table["runs"].tolist() == [1, 1]


def test_markdown_is_shaped_like_the_papers_table(paths):
    text = markdown(performance_table(collect(paths)))
    assert ("| method | targets | rank | trainable params | runs (seeds × folds) | interval over | UAR | WAR "
            "| macro-F1 | UAR seed std |") in text
    assert ("| iemocap | loso_session | large-v2 | lora | v_proj | 8 | 1,000 | 6 (2 × 3) | range over 3 folds "
            "| 0.730 ± 0.046 (range 0.690–0.780) | 0.720 ± 0.046 (range 0.680–0.770) "
            "| 0.710 ± 0.046 (range 0.670–0.760) | 0.034 |") in text
    assert "| frozen (selected on test) |  |  | 1,000 | 1 (1 × 1) | none | 0.600 ± — [—, —] |" in text
    assert text.count("| — |") == 2  # the seed std of the one-seed rows
    assert "| full (selected on test by WAR) |  |  | 1,000 | 5 (1 × 5) | t95 over 5 folds | 0.974 ± 0.026 [0.942, 1.000] |" in text
    assert "nan" not in text.lower()
    assert "clipped to [0, 1]" in text


def test_markdown_names_a_validation_selection_that_is_not_uar(tmp_path):
    path = write_metrics(tmp_path, "lora", 0, 1, 0.7, 0.7, 0.7, select_metric="war")
    assert "| lora (selected by WAR) |" in markdown(performance_table(collect([path])))


def test_unknown_selection_metric_names_the_file(tmp_path):
    path = write_metrics(tmp_path, "lora", 0, 1, 0.7, 0.7, 0.7, select_metric="loss")
    with pytest.raises(InputError, match=r"lora_loss_0_1_r8\.json.*select_metric.*'loss'"):
        collect([path])


def test_entry_point_writes_both_files(paths, tmp_path):
    main(["--metrics", *paths, "--csv", str(tmp_path / "p.csv"), "--md", str(tmp_path / "p.md")])
    csv = pd.read_csv(tmp_path / "p.csv")
    assert len(csv) == 3
    assert {"select_metric", "uar_seed_std", "uar_std_ddof0", "uar_ci_low"} <= set(csv.columns)
    assert (tmp_path / "p.md").read_text().startswith("| dataset | protocol |")


def test_untrained_references_record_no_selection_and_carry_no_marker(tmp_path):
    # train.run writes "select_metric": null for lora_init / lora_random: they select no epoch.
    path = write_metrics(tmp_path, "lora_init", 0, 1, 0.25, 0.25, 0.1)
    metrics = json.loads(open(path).read())
    metrics["select_metric"] = None
    open(path, "w").write(json.dumps(metrics))
    table = performance_table(collect([path]))
    assert table["select_metric"].tolist() == ["none"]
    assert "| lora_init | v_proj | 8 |" in markdown(table)


REFERENCE = str(Path(__file__).resolve().parent.parent / "config" / "paper_reference.csv")


def rank_ablation(folder, alpha_of):
    """lora runs at ranks 8, 32, 64 (one seed, two folds) whose alpha is ``alpha_of(rank)``, and a
    frozen run (no alpha)."""
    paths = [write_metrics(folder, "lora", 0, fold, 0.7, 0.7, 0.7, rank=rank, alpha=alpha_of(rank))
             for rank in (8, 32, 64) for fold in (1, 2)]
    return paths + [write_metrics(folder, "frozen", 0, 1, 0.6, 0.6, 0.6, rank=0, targets="none")]


@pytest.mark.parametrize("alpha_of, expected", [
    (lambda rank: (64.0, "fixed"), "LoRA alpha: fixed 64 for every rank (ranks 8, 32, 64)."),
    (lambda rank: (2.0 * rank, "ratio"), "LoRA alpha: alpha = 2 × rank (ranks 8, 32, 64)."),
], ids=["fixed", "ratio"])
def test_the_header_says_how_alpha_was_chosen_as_the_runs_recorded_it(tmp_path, alpha_of, expected):
    paths = rank_ablation(tmp_path, alpha_of)
    main(["--metrics", *paths, "--csv", str(tmp_path / "p.csv"), "--md", str(tmp_path / "p.md"),
          "--html", str(tmp_path / "p.html")])
    text = (tmp_path / "p.md").read_text()
    assert text.startswith(expected + "\n\n| dataset | protocol |")
    assert expected in (tmp_path / "p.html").read_text()


@pytest.mark.parametrize("alphas, expected", [
    ({8: (64.0, "fixed"), 32: (64.0, "fixed"), 64: (32.0, "fixed")},
     "LoRA alpha: fixed: 64 at rank 8, 64 at rank 32, 32 at rank 64 (ranks 8, 32, 64)."),
    ({8: (16.0, "ratio"), 32: (64.0, "ratio"), 64: (64.0, "fixed")},
     "LoRA alpha: fixed 64 (rank 64); alpha = 2 × rank (ranks 8, 32)."),
], ids=["no_one_rule", "two_policies"])
def test_alpha_that_follows_no_one_rule_is_listed_by_rank(tmp_path, alphas, expected):
    from workflow_scripts.report.performance_header import alpha_line

    assert alpha_line(collect(rank_ablation(tmp_path, alphas.get))) == expected


def test_runs_that_did_not_record_alpha_get_no_alpha_line(paths, tmp_path):
    main(["--metrics", *paths, "--csv", str(tmp_path / "p.csv"), "--md", str(tmp_path / "p.md")])
    assert "alpha" not in (tmp_path / "p.md").read_text()


def test_paper_reference_puts_the_population_std_beside_the_papers_values(paths, tmp_path):
    out = {name: str(tmp_path / name) for name in ("p.csv", "p.md", "p.html", "q.md")}
    main(["--metrics", *paths, "--csv", out["p.csv"], "--md", out["p.md"], "--html", out["p.html"],
          "--reference", REFERENCE])
    text = (tmp_path / "p.md").read_text()
    # config/paper_reference.csv, rows T1: the paper's mean ± np.std over its 10 folds.
    assert text.startswith("The paper (T1): LoRA r32 v_proj: UAR 0.774 ± 0.026, WAR 0.768 ± 0.035 "
                           "(mean ± population std, ddof 0, over its folds); "
                           "compare the std (ddof 0) columns.")
    assert "| UAR seed std | UAR std (ddof 0) | WAR std (ddof 0) |" in text
    # lora: fold means .72 .78 .69 (UAR) and .71 .77 .68 (WAR): ddof-0 std sqrt(.0042 / 3) = .037;
    # the one-fold frozen run has a population std of 0.
    assert "| 0.730 ± 0.046 (range 0.690–0.780) | 0.720 ± 0.046 (range 0.680–0.770) |" in text
    assert "| 0.034 | 0.037 | 0.037 |" in text
    assert "| — | 0.000 | 0.000 |" in text
    assert "UAR std (ddof 0)" in (tmp_path / "p.html").read_text()
    main(["--metrics", *paths, "--csv", out["p.csv"], "--md", out["q.md"]])  # switched off: unchanged
    without = (tmp_path / "q.md").read_text()
    assert "ddof 0" not in without and "The paper" not in without
    assert without == markdown(performance_table(collect(paths)))


@pytest.mark.parametrize("rows, match", [
    ("figure,panel,series,statistic,layer,value,source\nF1,a,b,mean,,0.5,x\n", r"no rows of figure T1"),
    ("figure,series,value\nT1,LoRA UAR,0.5\n", r"lacks the columns \['statistic'\]"),
    ("figure,panel,series,statistic,layer,value,source\nT1,p,LoRA UAR,mean,,0.5,x\n", r"every T1 series needs a mean and a std"),
])
def test_a_bad_reference_file_is_named(paths, tmp_path, rows, match):
    reference = tmp_path / "reference.csv"
    reference.write_text(rows)
    with pytest.raises(InputError, match=rf"reference\.csv: {match}"):
        main(["--metrics", *paths, "--csv", str(tmp_path / "p.csv"), "--md", str(tmp_path / "p.md"),
              "--reference", str(reference)])


def test_one_fold_with_two_seeds_shows_their_range_and_says_so(tmp_path):
    paths = [write_metrics(tmp_path, "lora", seed, 1, uar, uar, uar) for seed, uar in ((0, 0.5), (1, 0.6))]
    table = performance_table(collect(paths))
    row = table.iloc[0]
    assert row["uar_interval"] == "range over seeds (1 fold)"
    assert (row["uar_ci_low"], row["uar_ci_high"]) == pytest.approx((0.5, 0.6))
    assert "| range over 2 seeds (1 fold) | 0.550 ± 0.071 (range 0.500–0.600) |" in markdown(table)
