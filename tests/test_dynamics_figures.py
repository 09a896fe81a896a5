"""The training-dynamics figures, drawn from small synthetic aggregated tables and checked against them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from test_report_figures import LORA_R4, LORA_R8, aggregated, assert_y_contains_data, bands  # noqa: E402

from workflow_scripts.errors import InputError  # noqa: E402
from workflow_scripts.report.figures.dynamics import (  # noqa: E402
    checkpoint_columns,
    dynamics_heatmaps,
    dynamics_intruders_figure,
)

STEPS_PER_EPOCH = 10
#: Out of training order on purpose: the figures must order checkpoints by their step.
CHECKPOINTS = ("epoch2", "epoch0", "step3", "epoch1")
STEP = {"epoch0": 0, "step3": 3, "epoch1": 10, "epoch2": 20}
TRAINING_ORDER = ["epoch0", "step3", "epoch1", "epoch2"]
LAYERS = (0, 1, 2)


def at_checkpoint(row: dict) -> dict:
    return {"step_mean": float(STEP[row["checkpoint"]]), "epoch_mean": STEP[row["checkpoint"]] / STEPS_PER_EPOCH}


def tables(configurations=(LORA_R4, LORA_R8)):
    """Aggregated dynamics tables; each mean encodes its cell: layer + step / 100 (weights: the
    module's stable rank 1 for q_proj and 3 for v_proj, + step / 100, so their block mean is 2 + step / 100)."""
    cell = lambda row: row.get("layer", row.get("block", 0)) + STEP[row["checkpoint"]] / 100  # noqa: E731
    representation = aggregated(configurations, {"checkpoint": CHECKPOINTS, "reference": ("base", "final"),
                                                 "layer": LAYERS}, mean=cell,
                                extra=lambda row: {**at_checkpoint(row), "null_mean_mean": 0.0,
                                                   "null_p95_mean": 0.05, "clips_mean": 16.0})
    readouts = aggregated(configurations, {"checkpoint": CHECKPOINTS, "readout": ("probe", "lens raw", "lens normed"),
                                           "layer": LAYERS, "statistic": ("uar", "agreement")}, mean=cell,
                          extra=lambda row: {**at_checkpoint(row), "clips_mean": 16.0})
    weights = aggregated(configurations, {"checkpoint": CHECKPOINTS, "block": (0, 1), "module": ("q_proj", "v_proj"),
                                          "statistic": ("stable_rank", "frobenius")},
                         mean=lambda row: (1.0 if row["module"] == "q_proj" else 3.0) + STEP[row["checkpoint"]] / 100,
                         extra=at_checkpoint)
    return representation, readouts, weights


def intruder_table(configurations=(LORA_R4,), interval="range over folds"):
    """Per block and module, the count ε·10 + epoch (4 block × module cells: the sum is 4 × that)."""
    return aggregated(configurations, {"checkpoint": CHECKPOINTS, "block": (0, 1), "module": ("q_proj", "v_proj"),
                                       "epsilon": (0.3, 0.5, 0.7)},
                      mean=lambda row: 10 * row["epsilon"] + STEP[row["checkpoint"]] / STEPS_PER_EPOCH,
                      interval=interval, half=0.5, extra=lambda row: {**at_checkpoint(row), "k_mean": 10.0})


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def heatmap_axes(figure):
    return [axis for axis in figure.axes if axis.get_label() != "<colorbar>" and axis.collections]


def test_checkpoints_are_ordered_by_step():
    representation, _, _ = tables()
    assert checkpoint_columns(representation) == TRAINING_ORDER


def test_heatmaps_draw_a_row_per_quantity_and_a_column_per_configuration(tmp_path):
    figure = dynamics_heatmaps(*tables())
    drawn = heatmap_axes(figure)
    assert len(drawn) == 4 * 2
    titles = [axis.get_title() for axis in drawn]
    assert titles[0].startswith("CKA to base (epoch0): r4") and titles[1].startswith("CKA to base (epoch0): r8")
    assert titles[-1].startswith("ΔW stable rank (mean over modules): r8")
    for axis in drawn:
        assert [label.get_text() for label in axis.get_xticklabels()] == TRAINING_ORDER
    cka = drawn[0]
    # Cell (layer 2, epoch1) holds 2 + 10/100; annotated with two decimals.
    texts = {text.get_text() for text in cka.texts}
    assert {"0.00", "2.10", "1.20", "0.03"} <= texts
    # ΔW's stable rank averages q_proj (1) and v_proj (3) of each block: 2 + step / 100.
    assert {text.get_text() for text in drawn[-1].texts} == {"2.00", "2.03", "2.10", "2.20"}
    assert drawn[-1].collections[0].get_clim() == pytest.approx((2.0, 2.2))  # the scale of the cells drawn
    assert "seeds averaged within folds" in figure._suptitle.get_text()
    out = tmp_path / "heatmaps.png"
    figure.savefig(out)
    assert out.stat().st_size > 0


def test_heatmaps_leave_out_a_table_not_given_and_refuse_none_at_all():
    representation, readouts, _ = tables()
    figure = dynamics_heatmaps(representation, readouts, None)
    assert len(heatmap_axes(figure)) == 3 * 2
    with pytest.raises(InputError, match="dynamics_heatmaps"):
        dynamics_heatmaps(None, None, None)
    with pytest.raises(InputError, match=r"dynamics_representation table lacks column\(s\) \['step_mean'\]"):
        dynamics_heatmaps(representation.drop(columns="step_mean"), readouts, None)


def test_intruders_sum_over_blocks_and_modules_with_a_line_per_epsilon(tmp_path):
    figure = dynamics_intruders_figure(intruder_table())
    axis = [axis for axis in figure.axes if axis.get_lines()][0]
    lines = {line.get_label(): line for line in axis.get_lines()}
    assert set(lines) == {"ε = 0.3", "ε = 0.5", "ε = 0.7"}
    x, y = lines["ε = 0.5"].get_data()
    epochs = np.array([STEP[c] / STEPS_PER_EPOCH for c in TRAINING_ORDER])
    np.testing.assert_allclose(x, epochs)
    np.testing.assert_allclose(y, 4 * (5 + epochs))  # 4 block × module cells of 5 + epoch
    # Each cell's range is ± 0.5: the summed band is ± 2.
    low, high = bands(axis)[1].get_paths()[0].vertices[:, 1].min(), bands(axis)[1].get_paths()[0].vertices[:, 1].max()
    assert (low, high) == pytest.approx((4 * 5 - 2, 4 * (5 + 2.0) + 2))
    title = figure._suptitle.get_text()
    assert "range over fold means per module,\nsummed over blocks and modules" in title
    assert "top-10 singular vectors" in title
    assert_y_contains_data(figure)
    out = tmp_path / "intruders.png"
    figure.savefig(out)
    assert out.stat().st_size > 0


def test_intruders_draw_a_panel_per_configuration_and_name_a_missing_column():
    figure = dynamics_intruders_figure(intruder_table((LORA_R4, LORA_R8), interval="t95 over folds"))
    panels = [axis for axis in figure.axes if axis.get_lines()]
    assert [axis.get_title() for axis in panels] == ["r4", "r8"]
    assert "95 % t-interval over fold means" in figure._suptitle.get_text()
    with pytest.raises(InputError, match=r"dynamics_intruders table lacks column\(s\) \['epoch_mean'\]"):
        dynamics_intruders_figure(intruder_table().drop(columns="epoch_mean"))
    single = intruder_table(interval="none")
    assert not bands(dynamics_intruders_figure(single).axes[0])  # one run: no band
    assert pd.isna(single["ci_low"]).all()
