"""What a report caption says: the runs behind a result, and the paper's values beside a figure."""

from __future__ import annotations

import pandas as pd

from workflow_scripts.report.captions import RUNS_PLACEHOLDER, describe_runs, figure_caption, reference_table
from workflow_scripts.runs import Run

REPO_REFERENCE = "config/paper_reference.csv"


def run(method: str, rank: int, seed: int, fold: int) -> Run:
    targets = "none" if method == "frozen" else "q_proj+v_proj"
    return Run("demo", "loso_speaker", "whisper-base", method, targets, rank, seed, fold)


def test_runs_are_described_per_configuration_with_their_seeds_and_folds():
    runs = [run("lora", 8, 1, 1), run("lora", 8, 0, 1), run("frozen", 0, 0, 2), run("lora", 8, 0, 2)]
    assert describe_runs(runs) == (
        "4 runs: frozen on demo/loso_speaker/whisper-base: seeds 0 × folds 2 (1 run); "
        "lora q_proj+v_proj r8 on demo/loso_speaker/whisper-base: seeds 0, 1 × folds 1, 2 (3 runs)")
    assert describe_runs([]) == "no runs"


def test_the_paper_s_values_become_an_rst_table_of_that_figure_only():
    reference = pd.read_csv(REPO_REFERENCE)
    assert set(reference["figure"]) == {"T1", "F1", "F2", "F4", "F5", "F6"}
    assert reference["source"].str.contains("read from|text").all()
    table = reference_table(reference, "F4")
    rows = [line for line in table.splitlines() if line.startswith(("a_", "b_"))]
    assert len(rows) == len(reference[reference["figure"] == "F4"]) == 12
    assert any("b_grad" in line and "42.1" in line for line in rows)
    assert reference_table(reference, "F3") == ""


def test_a_caption_gets_its_runs_and_the_reference_when_asked(tmp_path):
    caption = tmp_path / "energy.rst"
    caption.write_text(f"The energy. Runs: {RUNS_PLACEHOLDER}.\n")
    runs = [run("lora", 4, 0, 1)]
    plain = figure_caption(caption, runs)
    assert plain == "The energy. Runs: 1 run: lora q_proj+v_proj r4 on demo/loso_speaker/whisper-base: " \
                    "seeds 0 × folds 1 (1 run).\n"
    with_paper = figure_caption(caption, runs, pd.read_csv(REPO_REFERENCE), "F4")
    assert with_paper.startswith(plain) and "read from its figures" in with_paper and "15.9" in with_paper
    assert figure_caption(caption, runs, pd.read_csv(REPO_REFERENCE), "new") == plain
