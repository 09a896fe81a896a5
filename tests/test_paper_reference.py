"""The paper's values (config/paper_reference.csv): the vocabulary matches the figures, and the
reader refuses a bad file with an error naming the file, the row and the accepted names."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from workflow_scripts.analyses.cka.pairings import PAPER_SERIES
from workflow_scripts.errors import InputError
from workflow_scripts.figure_style import PANELS
from workflow_scripts.report.figures.readouts import CONTRIBUTION_KINDS, CONTRIBUTION_OUTPUTS, LENS_STATISTICS
from workflow_scripts.report.figures.reference import (
    REFERENCE_COLUMNS,
    VOCABULARY,
    check_reference,
    figure_rows,
    read_reference,
)
from workflow_scripts.report.figures.registry import FIGURES

REPO_REFERENCE = "config/paper_reference.csv"
GOOD = ("F1,attn_ratio,lora,point,31,0.27,read from the paper's figure\n"
        "F5,a_out,trained,min,,0.95,read from the repository's figure\n"
        "F5,a_out,trained,max,,0.99,read from the repository's figure\n")


def write(tmp_path, body: str, header: str = ",".join(REFERENCE_COLUMNS)):
    path = tmp_path / "paper.csv"
    path.write_text(header + "\n" + body)
    return path


def test_the_vocabulary_is_the_figures_own():
    """Panels are the statistics and quantities the figures draw, series their tables' labels."""
    statistics = [f"{output}_{kind}" for kind, _ in CONTRIBUTION_KINDS for output, _ in CONTRIBUTION_OUTPUTS]
    assert set(VOCABULARY["F1"]) == set(statistics) | {f"{s}_difference" for s in statistics}
    assert set(VOCABULARY["F2"]) == {"kl_final_layer", "agreement"} <= set(LENS_STATISTICS)
    assert set(VOCABULARY["F4"]) == set(VOCABULARY["F5"]) == {quantity for quantity, _ in PANELS}
    assert {s for panel in VOCABULARY["F6"].values() for s in panel} == set(PAPER_SERIES)
    assert VOCABULARY["F3"] == {}  # the paper gives no F3 numbers
    papers = {spec.paper for spec in FIGURES.values()} - {"new"}
    assert set(VOCABULARY) == papers | {"T1"}


def test_the_repository_s_file_is_valid_and_keeps_every_value():
    table = read_reference(REPO_REFERENCE)
    counts = table.groupby("figure").size().to_dict()
    assert counts == {"T1": 4, "F1": 44, "F2": 29, "F4": 12, "F5": 16, "F6": 18}
    assert table["source"].str.contains("read from|text").all()
    f4 = table[(table["figure"] == "F4") & (table["panel"] == "b_grad")].set_index(["series", "statistic"])["value"]
    assert f4.to_dict() == {("trained", "mean_k90"): 42.1, ("lora_random", "mean_k90"): 15.9,
                            ("lora_random", "mean_k90_ratio"): 0.4}
    t1 = table[table["figure"] == "T1"]  # the performance table's rows keep their format
    assert list(t1["series"].unique()) == ["LoRA r32 v_proj UAR", "LoRA r32 v_proj WAR"]
    assert t1["layer"].isna().all()


def test_a_good_file_reads_with_numbers(tmp_path):
    table = read_reference(write(tmp_path, GOOD))
    assert list(table["layer"].fillna(-1)) == [31, -1, -1]
    assert list(table["value"]) == [0.27, 0.95, 0.99]
    assert list(figure_rows(table, "F5", "top10 (F5)")["statistic"]) == ["min", "max"]
    assert figure_rows(None, "F5", "top10 (F5)") is None


def test_a_bad_panel_names_the_file_the_row_and_the_accepted_panels(tmp_path):
    path = write(tmp_path, GOOD + "F2,kl,lora,point,0,1.045,read from the paper's figure\n")
    with pytest.raises(InputError) as error:
        read_reference(path)
    message = str(error.value)
    assert message.startswith(f"{path}, row 4 (line 5): panel 'kl' is not a panel of F2; accepted: ")
    assert "'kl_final_layer', 'agreement'" in message


@pytest.mark.parametrize("row, problem", [
    ("F1,attn_ratio,LoRA,point,3,0.2,x",
     "series 'LoRA' is not a series of F1 attn_ratio; accepted: ['lora', 'frozen']"),
    ("F1,attn_ratio,lora,mean,3,0.2,x", "statistic 'mean' is not one of F1 attn_ratio lora's; accepted: ['point']"),
    ("F1,attn_ratio,lora,point,,0.2,x", "F1 values belong to one layer: layer must be an integer >= 0, not ''"),
    ("F1,attn_ratio,lora,point,2.5,0.2,x", "F1 values belong to one layer: layer must be an integer >= 0, not '2.5'"),
    ("F4,a_out,trained,mean_k90,3,2.9,x", "F4 values summarise all layers: layer must be empty, not '3'"),
    ("F4,U,trained,mean_k90,,2.9,x",
     "panel 'U' is not a panel of F4; accepted: ['a_out', 'a_grad', 'b_out', 'b_grad']"),
    ("F4,a_out,trained,mean_k90_ratio,,5.5,x",
     "statistic 'mean_k90_ratio' is not one of F4 a_out trained's; accepted: ['mean_k90']"),
    ("F3,silhouette_map,lora,point,3,0.2,x", "figure F3 takes no values (the paper gives no numbers for it)"),
    ("F9,attn_ratio,lora,point,3,0.2,x", "figure 'F9' is not one of ['T1', 'F1', 'F2', 'F3', 'F4', 'F5', 'F6']"),
    ("F1,attn_ratio,lora,point,3,high,x", "value must be a finite number, not 'high'"),
    ("F1,attn_ratio,lora,point,3,0.2,", "source is empty"),
    ("T1,performance,,mean,,0.7,x", "T1 performance: the series is empty"),
])
def test_a_bad_row_is_refused_with_its_row_and_what_is_accepted(tmp_path, row, problem):
    with pytest.raises(InputError, match=re.escape(f"row 4 (line 5): {problem}")):
        read_reference(write(tmp_path, GOOD + row + "\n"))


def test_ranges_need_both_bounds_and_rows_are_unique(tmp_path):
    with pytest.raises(InputError, match=r"row 4 \(line 5\): F5 b_out lora_random: a range needs a min and a max"):
        read_reference(write(tmp_path, GOOD + "F5,b_out,lora_random,min,,0.74,x\n"))
    with pytest.raises(InputError, match=r"a range needs .* min <= max \(it has \{'min': 0.99, 'max': 0.95\}\)"):
        read_reference(write(tmp_path, GOOD.replace("min,,0.95", "min,,0.99").replace("max,,0.99", "max,,0.95")))
    with pytest.raises(InputError, match=r"row 4 \(line 5\): a second value for"):
        read_reference(write(tmp_path, GOOD + "F1,attn_ratio,lora,point,31,0.3,x\n"))


def test_a_missing_column_or_file_names_the_file(tmp_path):
    path = write(tmp_path, "F1,attn_ratio,lora,31,0.27\n", header="figure,panel,series,layer,value")
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}: lacks column\(s\) \['statistic', 'source'\]"):
        read_reference(path)
    with pytest.raises(InputError, match=r"none\.csv does not exist"):
        read_reference(tmp_path / "none.csv")


def test_a_table_given_to_a_figure_is_checked_too():
    table = pd.read_csv(REPO_REFERENCE)
    with pytest.raises(InputError, match=r"figure energy \(F4\): the reference table, row 1: panel 'bogus'"):
        figure_rows(table.assign(panel="bogus"), "F4", "energy (F4)")
    assert len(check_reference(table, "x")) == len(table)
