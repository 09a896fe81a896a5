"""The performance table over runs: known answers from hand-written metrics files."""

import json

import pandas as pd
import pytest

from workflow_scripts.report.performance import collect, main, markdown, performance_table


def write_metrics(folder, method, seed, fold, uar, war, f1, rank=8, targets="v_proj", selected_on_test=False):
    path = folder / f"{method}_{seed}_{fold}.json"
    path.write_text(json.dumps({
        "dataset": "iemocap", "protocol": "loso_session", "model": "large-v2", "method": method,
        "targets": targets, "rank": rank, "seed": seed, "fold": fold,
        "test": {"uar": uar, "war": war, "macro_f1": f1}, "trainable_parameters": 1000,
        "selected_on_test": selected_on_test,
    }))
    return str(path)


@pytest.fixture
def paths(tmp_path):
    paths = [write_metrics(tmp_path, "lora", seed, fold, uar, uar - 0.01, uar - 0.02)
             for (seed, fold), uar in zip([(0, 1), (0, 2), (1, 1), (1, 2)], [0.70, 0.74, 0.78, 0.74])]
    paths.append(write_metrics(tmp_path, "frozen", 0, 1, 0.6, 0.6, 0.6, rank=0, targets="none",
                               selected_on_test=True))
    return paths


def test_mean_std_and_interval_over_folds_and_seeds(paths):
    table = performance_table(collect(paths)).set_index("method")
    lora = table.loc["lora"]
    assert (lora["runs"], lora["seeds"], lora["folds"]) == (4, 2, 2)
    assert lora["uar_mean"] == pytest.approx(0.74)
    assert lora["uar_std"] == pytest.approx(0.0326598632)  # sample std of .70 .74 .78 .74
    assert lora["uar_std_ddof0"] == pytest.approx(0.0282842712)
    assert lora["uar_ci_low"] == pytest.approx(0.74 - 3.182446305 * 0.0326598632 / 2)
    assert lora["war_mean"] == pytest.approx(0.73)
    assert table.loc["frozen", "selected_on_test"]


def test_markdown_is_shaped_like_the_papers_table(paths):
    text = markdown(performance_table(collect(paths)))
    assert "| iemocap | loso_session | large-v2 | lora | v_proj | 8 | 1,000 | 4 (2 × 2) | 0.740 ± 0.033 [0.688, 0.792]" in text
    assert "| frozen (selected on test) |  |  | 1,000 | 1 (1 × 1) | 0.600 |" in text


def test_entry_point_writes_both_files(paths, tmp_path):
    main(["--metrics", *paths, "--csv", str(tmp_path / "p.csv"), "--md", str(tmp_path / "p.md")])
    assert len(pd.read_csv(tmp_path / "p.csv")) == 2
    assert (tmp_path / "p.md").read_text().startswith("| dataset | protocol |")
