"""The performance table over runs: known answers from hand-written metrics files."""

import json

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.errors import InputError
from workflow_scripts.report.performance import collect, main, markdown, performance_table


def write_metrics(folder, method, seed, fold, uar, war, f1, rank=8, targets="v_proj", selected_on_test=False,
                  select_metric=None):
    path = folder / f"{method}_{select_metric}_{seed}_{fold}.json"
    metrics = {
        "dataset": "iemocap", "protocol": "loso_session", "model": "large-v2", "method": method,
        "targets": targets, "rank": rank, "seed": seed, "fold": fold,
        "test": {"uar": uar, "war": war, "macro_f1": f1}, "trainable_parameters": 1000,
        "selected_on_test": selected_on_test,
    }
    if select_metric is not None:  # files written before the selection metric was recorded lack it
        metrics["select_metric"] = select_metric
    path.write_text(json.dumps(metrics))
    return str(path)


# lora: 2 seeds x 3 folds, UAR fold means .72 .78 .69 (mean .73, sample std sqrt(.0042 / 2)),
# within-fold variances .0008 .0008 .0018.
LORA_UAR = {(0, 1): 0.70, (1, 1): 0.74, (0, 2): 0.76, (1, 2): 0.80, (0, 3): 0.66, (1, 3): 0.72}


@pytest.fixture
def paths(tmp_path):
    paths = [write_metrics(tmp_path, "lora", seed, fold, uar, uar - 0.01, uar - 0.02)
             for (seed, fold), uar in LORA_UAR.items()]
    paths.append(write_metrics(tmp_path, "frozen", 0, 1, 0.6, 0.6, 0.6, rank=0, targets="none",
                               selected_on_test=True))
    # Two folds near the top of the range: the t-interval (df 1) would reach past 1.
    paths += [write_metrics(tmp_path, "full", 0, fold, uar, uar - 0.01, uar - 0.02, rank=0, targets="none",
                            selected_on_test=True, select_metric="war") for fold, uar in [(1, 0.95), (2, 0.99)]]
    return paths


def test_interval_over_fold_means_with_seeds_nested(paths):
    table = performance_table(collect(paths)).set_index("method")
    lora = table.loc["lora"]
    assert (lora["runs"], lora["seeds"], lora["folds"]) == (6, 2, 3)
    assert lora["uar_mean"] == pytest.approx(0.73)
    assert lora["uar_std"] == pytest.approx(np.sqrt(0.0042 / 2))  # over the 3 fold means, not the 6 runs
    assert lora["uar_std_ddof0"] == pytest.approx(np.sqrt(0.0042 / 3))
    half = 4.302652729911275 * np.sqrt(0.0042 / 2) / np.sqrt(3)  # t(0.975, df = 3 folds - 1)
    assert (lora["uar_ci_low"], lora["uar_ci_high"]) == pytest.approx((0.73 - half, 0.73 + half))
    assert lora["uar_seed_std"] == pytest.approx(np.sqrt((0.0008 + 0.0008 + 0.0018) / 3))
    assert lora["war_mean"] == pytest.approx(0.72)
    assert table.loc["frozen", "selected_on_test"]


def test_interval_is_clipped_to_the_metric_range(paths):
    full = performance_table(collect(paths)).set_index("method").loc["full"]
    half = 12.706204736174705 * 0.02  # t(0.975, df=1) * std / sqrt(2), std = .04 / sqrt(2)
    assert (full["uar_ci_low"], full["uar_ci_high"]) == pytest.approx((0.97 - half, 1.0))


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
    assert ("| method | targets | rank | trainable params | runs (seeds × folds) | folds in CI | UAR | WAR | macro-F1 "
            "| UAR seed std |") in text
    assert ("| iemocap | loso_session | large-v2 | lora | v_proj | 8 | 1,000 | 6 (2 × 3) | 3 "
            "| 0.730 ± 0.046 [0.616, 0.844] | 0.720 ± 0.046 [0.606, 0.834] | 0.710 ± 0.046 [0.596, 0.824] "
            "| 0.034 |") in text
    assert "| frozen (selected on test) |  |  | 1,000 | 1 (1 × 1) | 1 | 0.600 ± — [—, —] |" in text
    assert text.count("| — |") == 2  # the seed std of the one-seed rows
    assert "| full (selected on test by WAR) |  |  | 1,000 | 2 (1 × 2) | 2 | 0.970 ± 0.028 [0.716, 1.000] |" in text
    assert "nan" not in text.lower()
    assert "clipped to [0, 1]" in text


def test_markdown_names_a_validation_selection_that_is_not_uar(tmp_path):
    path = write_metrics(tmp_path, "lora", 0, 1, 0.7, 0.7, 0.7, select_metric="war")
    assert "| lora (selected by WAR) |" in markdown(performance_table(collect([path])))


def test_unknown_selection_metric_names_the_file(tmp_path):
    path = write_metrics(tmp_path, "lora", 0, 1, 0.7, 0.7, 0.7, select_metric="loss")
    with pytest.raises(InputError, match=r"lora_loss_0_1\.json.*select_metric.*'loss'"):
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
