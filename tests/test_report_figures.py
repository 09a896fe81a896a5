"""The report's figures: each drawn from small synthetic aggregated tables, checked against them."""

import itertools
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from workflow_scripts.errors import InputError  # noqa: E402
from workflow_scripts.report.figures.__main__ import main  # noqa: E402
from workflow_scripts.report.figures.build import build_figure  # noqa: E402
from workflow_scripts.report.figures.cka import (  # noqa: E402
    CKA_SERIES_LABELS,
    cka_figure,
    cka_heatmap_figure,
)
from workflow_scripts.report.figures.embeddings import embedding_quality_figure  # noqa: E402
from workflow_scripts.report.figures.readouts import (  # noqa: E402
    ERASURE_CONDITIONS,
    contribution_figure,
    erasure_figure,
    lens_comparison_figure,
    logit_lens_figure,
    probe_figure,
)
from workflow_scripts.report.figures.registry import FIGURES  # noqa: E402
from workflow_scripts.report.figures.spectra import (  # noqa: E402
    energy_figure,
    top10_figure,
    weight_spectra_figure,
)
from workflow_scripts.report.figures.subspaces import subspace_figure  # noqa: E402

BASE = {"dataset": "demo", "protocol": "loso_speaker", "model": "whisper-base"}
LORA_R4 = {**BASE, "method": "lora", "targets": "q_proj+v_proj", "rank": 4}
LORA_R8 = {**LORA_R4, "rank": 8}
FROZEN = {**BASE, "method": "frozen", "targets": "none", "rank": 0}
RANDOM_R4 = {**LORA_R4, "method": "lora_random"}
INIT_R4 = {**LORA_R4, "method": "lora_init"}
PAIRED_FIELDS = ["dataset", "protocol", "model", "targets", "rank"]


def aggregated(configurations, keys: dict, mean=None, runs=4, seeds=2, folds=2, interval="range over folds", half=0.1,
               extra=None):
    """Aggregated-shaped rows: every configuration × the product of ``keys``; ``mean(row)`` gives
    the mean (default: a different number per row), the interval is mean ± ``half`` (none with
    ``interval`` "none")."""
    rows = []
    names = list(keys)
    for i, (configuration, values) in enumerate(itertools.product(configurations, itertools.product(*keys.values()))):
        row = {**configuration, **dict(zip(names, values))}
        value = mean(row) if mean else 0.1 + 0.01 * i
        one = interval == "none"
        row.update({"runs": 1 if one else runs, "seeds": 1 if one else seeds, "folds": 1 if one else folds,
                    "missing": 0, "mean": value, "std": np.nan if one else 0.05,
                    "ci_low": np.nan if one else value - half, "ci_high": np.nan if one else value + half,
                    "interval": interval})
        if extra:
            row.update(extra(row))
        rows.append(row)
    return pd.DataFrame(rows)


def paired_rows(configurations, keys: dict, significant=lambda row: False, pairs=4):
    rows = []
    names = list(keys)
    for i, (configuration, values) in enumerate(itertools.product(configurations, itertools.product(*keys.values()))):
        row = {k: configuration[k] for k in PAIRED_FIELDS} | dict(zip(names, values))
        difference = 0.02 * i - 0.05
        p = 0.01 if significant(row) else 0.4
        row.update({"pairs": pairs, "mean_difference": difference, "std": 0.03, "ci_low": difference - 0.03,
                    "ci_high": difference + 0.03, "interval": "t95 over folds", "t_statistic": 1.0, "t_p": p / 2,
                    "wilcoxon_statistic": 1.0, "wilcoxon_p": 0.5, "t_p_holm": p, "wilcoxon_p_holm": 0.5,
                    "test_note": ""})
        rows.append(row)
    return pd.DataFrame(rows)


def reference_table(figure, panel, series, layer, value, statistic="point", source="read from the paper's figure"):
    """A reference table in config/paper_reference.csv's columns (scalars repeat over the rows)."""
    columns = {"figure": figure, "panel": panel, "series": series, "statistic": statistic, "layer": layer,
               "value": value, "source": source}
    rows = max(len(v) for v in columns.values() if isinstance(v, list)) if any(
        isinstance(v, list) for v in columns.values()) else 1
    return pd.DataFrame({k: v if isinstance(v, list) else [v] * rows for k, v in columns.items()})


def visible_axes(figure):
    return [axis for axis in figure.axes if axis.get_visible() and axis.get_label() != "<colorbar>"]


def lines_labelled(axis, label):
    return [line for line in axis.get_lines() if line.get_label() == label]


def bands(axis, gid="ci_band"):
    return [c for c in axis.collections if c.get_gid() == gid]


def band_range(band):
    vertices = np.concatenate([path.vertices for path in band.get_paths()])
    y = vertices[:, 1]
    y = y[np.isfinite(y)]
    return y.min(), y.max()


def assert_y_contains_data(figure):
    """Every plotted y value (lines, bands, bars, error bars) lies within its axis's y-limits."""
    for axis in visible_axes(figure):
        low, high = sorted(axis.get_ylim())
        values = []
        for line in axis.get_lines():
            values += list(np.asarray(line.get_ydata(), dtype=float))
        for collection in axis.collections:
            if isinstance(collection, PolyCollection):
                for path in collection.get_paths():
                    values += list(path.vertices[:, 1])
            elif isinstance(collection, LineCollection):
                for segment in collection.get_segments():
                    values += list(np.asarray(segment)[:, 1])
        for patch in axis.patches:
            if isinstance(patch, Rectangle):
                values += [patch.get_y(), patch.get_y() + patch.get_height()]
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        tolerance = 1e-9 * max(1.0, high - low)
        assert (values >= low - tolerance).all() and (values <= high + tolerance).all(), axis.get_title()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# -- F1 --------------------------------------------------------------------------------------------

STATISTICS = ["attn_ratio", "mlp_ratio", "layer_ratio", "attn_cos", "mlp_cos", "layer_cos"]
BLOCKS = [0, 1, 2, 3]
SIGNIFICANT = {("attn_ratio", 3), ("attn_ratio", 1), ("layer_cos", 2)}


@pytest.fixture
def contribution_tables():
    values = aggregated([FROZEN, LORA_R4, LORA_R8], {"block": BLOCKS, "statistic": STATISTICS})
    paired = paired_rows([LORA_R4, LORA_R8], {"block": BLOCKS, "statistic": STATISTICS},
                         significant=lambda row: (row["statistic"], row["block"]) in SIGNIFICANT and row["rank"] == 4)
    return values, paired


def panel(figure, title):
    matches = [axis for axis in visible_axes(figure) if axis.get_title() == title]
    assert len(matches) == 1, [axis.get_title() for axis in visible_axes(figure)]
    return matches[0]


def test_contribution_bars_errors_and_holm_stars(contribution_tables):
    values, paired = contribution_tables
    figure = contribution_figure(values, paired)
    assert len(visible_axes(figure)) == 12
    axis = panel(figure, "attention: ‖output‖ / ‖residual input‖")
    bars = [p for p in axis.patches if isinstance(p, Rectangle)]
    assert len(bars) == len(BLOCKS) * 3  # frozen, r4, r8 side by side
    expected = values[values["statistic"] == "attn_ratio"]["mean"].to_numpy()
    assert sorted(p.get_height() for p in bars) == pytest.approx(sorted(expected))
    segments = [s for c in axis.collections if c.get_gid() == "ci_bars" for s in c.get_segments()]
    spans = sorted((min(s[:, 1]), max(s[:, 1])) for s in map(np.asarray, segments))
    rows = values[values["statistic"] == "attn_ratio"]
    assert np.array(spans) == pytest.approx(np.array(sorted(zip(rows["ci_low"], rows["ci_high"]))))
    # Stars exactly on the blocks with t_p_holm < 0.05 (rank 4 only; rank 8 has none).
    for statistic, title in (("attn_ratio", "attention: LoRA − frozen"), ("mlp_ratio", "MLP: LoRA − frozen")):
        axis = [a for a in visible_axes(figure) if a.get_title() == title][0 if statistic.endswith("ratio") else 1]
        stars = [line for line in axis.get_lines() if line.get_gid() == "holm"]
        starred = sorted(int(round(x)) for line in stars for x in line.get_xdata())
        assert starred == sorted(b for s, b in SIGNIFICANT if s == statistic)
        differences = [p for p in axis.patches if isinstance(p, Rectangle)]
        assert len(differences) == len(BLOCKS) * 2
    cosine_total = [a for a in visible_axes(figure) if a.get_title() == "attention + MLP: LoRA − frozen"][1]
    stars = [line for line in cosine_total.get_lines() if line.get_gid() == "holm"]
    assert [int(round(x)) for line in stars for x in line.get_xdata()] == [2]
    assert ("4 runs (2 seeds × 2 folds, seeds averaged within folds), band: range over fold means"
            in figure._suptitle.get_text())
    assert "4 paired runs" in figure._suptitle.get_text()
    assert_y_contains_data(figure)


def test_contribution_without_a_paired_test_says_so(contribution_tables):
    values, paired = contribution_tables
    paired = paired.assign(t_p_holm=np.nan, test_note="one pair: no test")
    figure = contribution_figure(values, paired)
    assert not [line for axis in figure.axes for line in axis.get_lines() if line.get_gid() == "holm"]
    texts = [t.get_text() for axis in figure.axes for t in axis.texts]
    assert any("no paired test: one pair: no test" in t for t in texts)


def test_contribution_reference_markers(contribution_tables):
    values, paired = contribution_tables
    reference = reference_table(["F1", "F1", "F2"], ["attn_ratio", "attn_ratio_difference", "kl_final_layer"],
                                ["lora", "mean_difference", "lora"], [3, 3, 0], [0.27, 0.18, 1.0])
    figure = contribution_figure(values, paired, reference=reference)
    marked = [line for axis in figure.axes for line in axis.get_lines() if line.get_gid() == "reference"]
    assert sorted(line.get_label() for line in marked) == ["paper (read from its figure): LoRA",
                                                          "paper (read from its figure): LoRA − frozen"]
    assert sorted(float(line.get_ydata()[0]) for line in marked) == [0.18, 0.27]
    with pytest.raises(InputError, match=r"contribution \(F1\).*row 1: panel 'ratio' is not a panel of F1"):
        contribution_figure(values, paired, reference=reference.assign(panel="ratio"))


# -- F2 and the lens comparison --------------------------------------------------------------------

LAYERS = [0, 1, 2, 3, 4]


@pytest.fixture
def lens_table():
    return aggregated([FROZEN, LORA_R4, LORA_R8, RANDOM_R4],
                      {"lens": ["raw", "normed"], "layer": LAYERS,
                       "statistic": ["kl_final_layer", "agreement", "uar", "js"]},
                      mean=lambda row: ((row["layer"] + 1) * (0.3 if row["method"] == "frozen" else -0.2)
                                        + row["rank"] / 10))


def test_logit_lens_lines_and_bands_equal_the_table(lens_table):
    figure = logit_lens_figure(lens_table)
    axes = visible_axes(figure)
    assert len(axes) == 4
    axis = panel(figure, "raw lens: KL(final ‖ layer), nats")
    assert sorted(line.get_label() for line in axis.get_lines()) == ["frozen", "lora r4", "lora r8"]  # not lora_random
    line = lines_labelled(axis, "lora r8")[0]
    rows = lens_table[(lens_table["lens"] == "raw") & (lens_table["statistic"] == "kl_final_layer")
                      & (lens_table["method"] == "lora") & (lens_table["rank"] == 8)].sort_values("layer")
    assert list(line.get_xdata()) == LAYERS
    assert list(line.get_ydata()) == pytest.approx(rows["mean"].tolist())
    assert len(bands(axis)) == 3
    ranges = sorted(band_range(b) for b in bands(axis))
    assert (rows["ci_low"].min(), rows["ci_high"].max()) in [pytest.approx(r) for r in ranges]
    assert_y_contains_data(figure)  # negative KLs of this fake table are not clipped


def test_logit_lens_one_run_has_no_band(lens_table):
    single = aggregated([LORA_R4], {"lens": ["raw"], "layer": LAYERS, "statistic": ["kl_final_layer", "agreement"]},
                        interval="none")
    figure = logit_lens_figure(single)
    assert len(visible_axes(figure)) == 2  # the raw lens only
    assert not [b for axis in figure.axes for b in bands(axis)]
    assert "mean over 1 run (1 seed × 1 fold, seeds averaged within folds), no band (one run)" in figure._suptitle.get_text()


def test_logit_lens_reference_is_shifted_to_block_outputs(lens_table):
    reference = reference_table("F2", "agreement", "lora", [0, 3], 0.3)
    figure = logit_lens_figure(lens_table, reference=reference)
    marked = [line for line in panel(figure, "raw lens: agreement with final decision").get_lines()
              if line.get_gid() == "reference"]
    assert list(marked[0].get_xdata()) == [1, 4]  # the paper's layer l is our layer l + 1
    assert not [line for line in panel(figure, "normed lens: agreement with final decision").get_lines()
                if line.get_gid() == "reference"]


def test_lens_comparison_rows_per_configuration(lens_table):
    figure = lens_comparison_figure(lens_table)
    assert len(visible_axes(figure)) == 4 * 3
    axis = panel(figure, "frozen: lens UAR (true labels)")
    assert sorted(line.get_label() for line in axis.get_lines()) == ["normed lens", "raw lens"]
    assert_y_contains_data(figure)


# -- F3 --------------------------------------------------------------------------------------------

def embeddings_table(interval="range over folds"):
    keys = [("features", "silhouette_features"), ("features", "knn_accuracy"), ("features", "knn_uar"),
            ("tsne", "silhouette_map"), ("tsne", "perplexity")]
    parts = [aggregated([LORA_R4, LORA_R8], {"block": [0, 2, 5], "module": ["v_proj"], "space": [space],
                                             "statistic": [statistic]}, interval=interval,
                        mean=lambda row: row["block"] / 10 + row["rank"] / 100)
             for space, statistic in keys]
    return pd.concat(parts, ignore_index=True)


def test_embedding_quality_one_line_per_rank():
    table = embeddings_table()
    figure = embedding_quality_figure(table)
    assert len(visible_axes(figure)) == 4
    axis = panel(figure, "kNN accuracy (speaker-grouped)")
    assert sorted(line.get_label() for line in axis.get_lines()) == ["r4", "r8"]
    line = lines_labelled(axis, "r8")[0]
    assert list(line.get_xdata()) == [0, 2, 5]
    assert list(line.get_ydata()) == pytest.approx([0.08, 0.28, 0.58])
    assert list(axis.get_xticks()) == [0, 2, 5]
    assert "module v_proj" in figure._suptitle.get_text()


# -- F4, F5 ----------------------------------------------------------------------------------------

QUANTITIES = ["a_out", "a_grad", "b_out", "b_grad"]


def spectra_table():
    def k90(row):
        if row["method"] == "lora_init" and row["quantity"] in ("b_out", "a_grad"):
            return np.nan  # B = 0: V and gU identically zero
        base = {"lora": 2.0, "lora_random": 10.0, "lora_init": 6.0}[row["method"]]
        return base + row["block"] + (0.5 if row["module"] == "v_proj" else 0.0)

    def top10(row):
        value = k90(row)
        return np.nan if np.isnan(value) else 1 - value / 40

    keys = {"block": [0, 1, 2, 3], "module": ["q_proj", "v_proj"], "quantity": QUANTITIES}
    configurations = [LORA_R4, RANDOM_R4, INIT_R4, LORA_R8, {**RANDOM_R4, "rank": 8}]
    k90_rows = aggregated(configurations, {**keys, "statistic": ["k90"], "k": [pd.NA]}, mean=k90)
    top_rows = aggregated(configurations, {**keys, "statistic": ["top10_energy"], "k": [pd.NA]}, mean=top10)
    table = pd.concat([k90_rows, top_rows], ignore_index=True)
    undefined = table["mean"].isna()
    table.loc[undefined, ["ci_low", "ci_high"]] = np.nan
    return table


def test_energy_boxes_titles_and_all_zero_note():
    table = spectra_table()
    figure = energy_figure(table)
    axes = visible_axes(figure)
    assert len(axes) == 4
    u_panel = [axis for axis in axes if axis.get_title().startswith("LoRA A – activations (U)")][0]
    v_panel = [axis for axis in axes if axis.get_title().startswith("LoRA B – activations (V)")][0]
    boxes = lambda axis: [p for p in axis.patches if p.get_gid() == "k90_box"]  # noqa: E731
    assert len(boxes(u_panel)) == 5  # r4: trained, random, init; r8: trained, random
    assert len(boxes(v_panel)) == 4  # lora_init's V is all zero: no box ...
    assert any("r4: PEFT init (lora_init): identically zero" in t.get_text() for t in v_panel.texts)  # ... a note
    # trained r4 mean k90 over 4 blocks x 2 modules: 2 + 1.5 + 0.25 = 3.75; random: 11.75 -> ratio 3.1x
    assert "r4: trained 3.8 / untrained 11.8 (ratio 3.1×) / init 7.8 (ratio 2.1×)" in u_panel.get_title()
    assert "r4: trained 3.8 / untrained 11.8 (ratio 3.1×) / init all zero" in v_panel.get_title()
    assert_y_contains_data(figure)


def test_energy_legacy_panel_bug_replots_the_a_gradients_in_the_b_gradient_panel():
    def gradient_panels(figure):
        titles = {axis.get_title().split(",")[0].split("\n")[0]: axis.get_title() for axis in visible_axes(figure)}
        return titles["LoRA A – gradients (gU)"], titles["LoRA B – gradients (gV)"]

    a_grad, b_grad = gradient_panels(energy_figure(spectra_table()))
    assert "init 7.8" in b_grad and "init all zero" in a_grad  # lora_init: gU zero (B = 0), gV not
    a_grad, b_grad = gradient_panels(energy_figure(spectra_table(), legacy_svd_panel_bug=True))
    assert "legacy_svd_panel_bug: the A-gradient (gU) data re-plotted" in b_grad
    assert "init all zero" in b_grad  # the gU data, as the original's plotting call passed it
    assert b_grad.split("mean k90:")[1] == a_grad.split("mean k90:")[1]


def test_energy_reference_points_and_ratio_text():
    reference = reference_table("F4", "a_out", ["trained", "lora_random", "lora_random"], np.nan, [2.9, 15.9, 5.5],
                                statistic=["mean_k90", "mean_k90", "mean_k90_ratio"])
    figure = energy_figure(spectra_table(), reference=reference)
    u_panel = [axis for axis in figure.axes if axis.get_title().startswith("LoRA A – activations (U)")][0]
    points = {line.get_label(): line for line in u_panel.get_lines() if line.get_gid() == "reference"}
    assert sorted(points) == ["paper (read from its figure): trained mean k90",
                              "paper (read from its figure): untrained (lora_random) mean k90"]
    # beside the box of its label in each configuration: r4 has trained, random, init; r8 trained, random
    trained = points["paper (read from its figure): trained mean k90"]
    assert list(trained.get_ydata()) == [2.9, 2.9]
    assert list(trained.get_xdata()) == pytest.approx([0 - 0.4 + 0.8 / 3 * 0.5, 1 - 0.4 + 0.8 / 3 * 0.5])
    assert max(u_panel.get_ylim()) >= 15.9
    ratios = [t.get_text() for t in u_panel.texts if t.get_gid() == "reference_ratio"]
    assert ratios == ["paper: untrained (lora_random) / trained mean k90 = 5.5×"]
    assert all(5.5 not in list(line.get_ydata()) for line in points.values())  # the ratio is no point


def test_top10_lines_per_label_and_configuration():
    table = spectra_table()
    figure = top10_figure(table)
    axes = visible_axes(figure)
    assert len(axes) == 4
    v_panel = [axis for axis in axes if axis.get_title() == "LoRA B – activations (V)"][0]
    labels = sorted(line.get_label() for line in v_panel.get_lines())
    assert labels == ["trained, r4", "trained, r8", "untrained (lora_random), r4", "untrained (lora_random), r8"]
    line = lines_labelled(v_panel, "trained, r4")[0]
    rows = table[(table["statistic"] == "top10_energy") & (table["method"] == "lora") & (table["rank"] == 4)
                 & (table["module"] == "v_proj") & (table["quantity"] == "b_out")].sort_values("block")
    assert list(line.get_ydata()) == pytest.approx(rows["mean"].tolist())
    assert "module v_proj" in figure._suptitle.get_text()
    u_panel = [axis for axis in axes if axis.get_title() == "LoRA A – activations (U)"][0]
    assert any("E(10) = 1 by definition" in t.get_text() for t in u_panel.texts)  # rank 4 <= 10
    assert_y_contains_data(figure)
    with pytest.raises(InputError, match=r"top10 \(F5\).*module 'fc1'"):
        top10_figure(table, module="fc1")


# -- F6 and heatmaps -------------------------------------------------------------------------------

def cka_table():
    rows = []
    specs = {"learned_layer_similarities": ("linear", "trained", "U", "lora_random", "U"),
             "random_layer_similarities": ("rbf", "trained", "V", "lora_random", "V"),
             "learned_layer_grad_similarities": ("rbf", "trained", "gV", "trained", "gU"),
             "random_layer_grad_similarities": ("rbf", "lora_random", "gV", "lora_random", "gU"),
             "": ("linear", "trained", "U", "trained", "V")}
    for series, (paper_kernel, model_a, qa, model_b, qb) in specs.items():
        for kernel in ("linear", "rbf"):
            for multiple in ([np.nan] if kernel == "linear" else [0.5, 1.0]):
                part = aggregated([LORA_R4, LORA_R8],
                                  {"block": [0, 1, 2], "module": ["q_proj", "v_proj"], "level": ["utterance"],
                                   "estimator": ["biased", "debiased"]},
                                  mean=lambda row: (-0.6 + 0.3 * row["block"]
                                                    + (0.05 if row["estimator"] == "biased" else 0)),
                                  extra=lambda row: {"null_mean_mean": 0.01, "null_p95_mean": 0.2})
                part = part.assign(kernel=kernel, rbf_multiple=multiple, paper_series=series,
                                   paper_kernel=paper_kernel if series else "", comparison="across",
                                   pairing=f"{model_a} {qa} ~ {model_b} {qb}", model_a=model_a, quantity_a=qa,
                                   model_b=model_b, quantity_b=qb)
                rows.append(part)
    return pd.concat(rows, ignore_index=True)


def test_cka_paper_pairings_with_null_floor_and_free_y_limits():
    table = cka_table()
    figure = cka_figure(table)
    axes = visible_axes(figure)
    assert len(axes) == 4  # forward/backward x r4/r8
    axis = panel(figure, "forward (activations) — r4")
    assert sorted(line.get_label() for line in axis.get_lines() if line.get_label()[0] != "_") == sorted(
        [CKA_SERIES_LABELS["learned_layer_similarities"],
         CKA_SERIES_LABELS["random_layer_similarities"]])
    line = lines_labelled(axis, CKA_SERIES_LABELS["learned_layer_similarities"])[0]
    assert list(line.get_ydata()) == pytest.approx([-0.55, -0.25, 0.05])  # biased, utterance level
    null = bands(axis, "null_band")
    assert len(null) == 2 and band_range(null[0]) == pytest.approx((0.01, 0.2))
    assert min(axis.get_ylim()) < -0.6  # negative values are shown, not clipped by fixed limits
    view = "module v_proj, utterance level, biased estimator, RBF σ = 1 × median distance"
    assert view in figure._suptitle.get_text()
    assert_y_contains_data(figure)
    with pytest.raises(InputError, match=r"cka \(F6\).*rbf_multiple 3"):
        cka_figure(table, rbf_multiple=3)


def test_cka_without_null_columns_names_the_figure():
    with pytest.raises(InputError, match=r"figure cka \(F6\).*lacks column\(s\) \['null_p95_mean'\]"):
        cka_figure(cka_table().drop(columns="null_p95_mean"))


def layer_table(configurations, pairing, offset=0.0):
    return aggregated(configurations, {"layer_a": [0, 1, 2], "layer_b": [0, 1, 2], "kernel": ["linear"],
                                       "rbf_multiple": [np.nan], "estimator": ["biased", "debiased"]},
                      mean=lambda row: offset + row["layer_a"] * 0.1 + row["layer_b"] * 0.01,
                      extra=lambda row: {"null_mean_mean": 0.0, "null_p95_mean": 0.05 + 0.01 * row["layer_a"],
                                         "pairing": pairing})


def test_cka_heatmaps_show_the_means_and_the_floor():
    lora_frozen = layer_table([LORA_R4], "lora_vs_frozen")
    seeds = layer_table([LORA_R4, FROZEN], "seed_vs_seed", offset=0.5)
    figure = cka_heatmap_figure(lora_frozen, seeds)
    heatmaps = [axis for axis in visible_axes(figure) if axis.collections]
    assert len(heatmaps) == 3
    first = heatmaps[0]
    assert first.get_title().startswith("LoRA vs frozen: lora")
    assert "floor (mean null p95) 0.060" in first.get_title()
    grid = np.asarray(first.collections[0].get_array()).reshape(3, 3)
    expected = lora_frozen[lora_frozen["estimator"] == "debiased"].pivot(index="layer_a", columns="layer_b",
                                                                         values="mean").to_numpy()
    assert grid == pytest.approx(expected)
    norms = [(axis.collections[0].norm.vmin, axis.collections[0].norm.vmax) for axis in heatmaps]
    assert np.array(norms) == pytest.approx(np.array([(0.0, 0.72)] * 3))  # one scale from the data, not fixed
    with pytest.raises(InputError, match=r"cka_heatmap \(new\).*kernel 'rbf'"):
        cka_heatmap_figure(lora_frozen, seeds, kernel="rbf")


# -- probes, erasure -------------------------------------------------------------------------------

def test_probes_with_head_and_paired_differences():
    probes = aggregated([FROZEN, LORA_R4], {"readout": ["probe"], "layer": LAYERS, "statistic": ["uar", "c"]})
    head = aggregated([FROZEN, LORA_R4], {"readout": ["head"], "layer": [4], "statistic": ["uar"]})
    paired = paired_rows([LORA_R4], {"readout": ["probe"], "layer": LAYERS, "statistic": ["uar"]},
                         significant=lambda row: row["layer"] == 4)
    figure = probe_figure(pd.concat([probes, head]), paired, n_classes=4)
    top, bottom = visible_axes(figure)
    line = lines_labelled(top, "lora")[0]  # rank and targets are shared: the title says them
    rows = probes[(probes["method"] == "lora") & (probes["statistic"] == "uar")]
    assert list(line.get_ydata()) == pytest.approx(rows["mean"].tolist())
    assert [line.get_ydata()[0] for line in top.get_lines() if line.get_label() == "chance (1/4)"] == [0.25]
    stars = [line for line in bottom.get_lines() if line.get_gid() == "holm"]
    assert [int(x) for x in stars[0].get_xdata()] == [4]
    assert_y_contains_data(figure)


def test_erasure_conditions_match_erasure_module():
    from workflow_scripts.analyses.erasure import conditions_for

    assert {c for c, _, _ in ERASURE_CONDITIONS} == {c for c, _ in conditions_for(4, True)} - {"baseline"}


def test_erasure_panels_per_condition():
    lora = aggregated([LORA_R4], {"condition": ["skip_block", "skip_first", "lora_off", "lora_off_from"],
                                  "layer": [0, 1, 2], "statistic": ["delta_uar", "uar"]})
    frozen = aggregated([FROZEN], {"condition": ["skip_block", "skip_first"], "layer": [0, 1, 2],
                                   "statistic": ["delta_uar", "uar"]})
    baseline = aggregated([LORA_R4, FROZEN], {"condition": ["baseline"], "layer": [-1], "statistic": ["delta_uar"]})
    table = pd.concat([lora, frozen, baseline], ignore_index=True)
    figure = erasure_figure(table)
    assert len(visible_axes(figure)) == 4
    assert sorted(line.get_label() for line in panel(figure, "block l skipped").get_lines()
                  if line.get_label()[0] != "_") == ["frozen", "lora"]
    assert [line.get_label() for line in panel(figure, "LoRA delta removed at block l").get_lines()
            if line.get_label()[0] != "_"] == ["lora"]
    assert -1 not in panel(figure, "block l skipped").get_lines()[0].get_xdata()
    assert_y_contains_data(figure)
    with pytest.raises(InputError, match=r"erasure \(new\).*\['score_paper'\]"):
        erasure_figure(table, statistic="score_paper")


# -- weight spectra, subspaces ---------------------------------------------------------------------

def test_weight_spectra_lines_per_block_and_zero_update():
    sigma = aggregated([LORA_R4, INIT_R4], {"block": [0, 1, 2], "module": ["q_proj", "v_proj"],
                                             "statistic": ["sigma"], "k": [1, 2, 3, 4]},
                       mean=lambda row: 0.0 if row["method"] == "lora_init" else 2.0 ** -row["k"] * (row["block"] + 1),
                       half=0.01)
    figure = weight_spectra_figure(sigma)
    axes = visible_axes(figure)
    assert len(axes) == 2  # lora's two modules; lora_init's zero update has no row ...
    assert "ΔW = 0 at every block (B = 0), not drawn: lora_init" in figure._suptitle.get_text()  # ... the title says so
    axis = panel(figure, "lora: v_proj")
    assert sorted(line.get_label() for line in axis.get_lines()) == ["block 0", "block 1", "block 2"]
    line = lines_labelled(axis, "block 2")[0]
    assert list(line.get_ydata()) == pytest.approx([1.5, 0.75, 0.375, 0.1875])
    assert axis.get_yscale() == "log"  # every mean and bound positive, from 2^-4 - 0.01 to 1.51
    assert_y_contains_data(figure)
    only_zero = weight_spectra_figure(sigma[sigma["method"] == "lora_init"])
    assert any("every configuration" in t.get_text() for t in only_zero.axes[0].texts)


def test_weight_spectra_log_scale_only_when_all_positive():
    sigma = aggregated([LORA_R4], {"block": [0, 1], "module": ["v_proj"], "statistic": ["sigma"], "k": [1, 2, 3]},
                       mean=lambda row: 10.0 ** -row["k"], half=0.0)
    axis = visible_axes(weight_spectra_figure(sigma))[0]
    assert axis.get_yscale() == "log"
    negative = sigma.assign(ci_low=sigma["mean"] - 1)  # a t-interval reaching below 0
    axis = visible_axes(weight_spectra_figure(negative))[0]
    assert axis.get_yscale() == "linear"
    narrow = sigma.assign(mean=0.4 + 0.01 * sigma["k"], ci_low=0.39, ci_high=0.45)  # within a decade
    assert visible_axes(weight_spectra_figure(narrow))[0].get_yscale() == "linear"


def test_subspaces_lines_with_chance():
    table = aggregated([{k: v for k, v in LORA_R4.items() if k != "rank"}],
                       {"differs": ["rank", "seed"], "block": [0, 1, 2], "module": ["v_proj"],
                        "measure": ["mean_cos2", "max_cos"]},
                       mean=lambda row: 0.3 + 0.1 * row["block"],
                       extra=lambda row: {"chance_mean": 0.016 if row["differs"] == "seed" else 0.024})
    figure = subspace_figure(table)
    axes = visible_axes(figure)
    assert len(axes) == 2
    axis = panel(figure, "v_proj: mean cos² of the principal angles")
    chance = [line for line in axis.get_lines() if line.get_gid() == "chance"]
    assert sorted(line.get_ydata()[0] for line in chance) == pytest.approx([0.016, 0.024])
    assert not [line for line in panel(figure, "v_proj: largest cosine").get_lines() if line.get_gid() == "chance"]
    assert "run pairs" in figure._suptitle.get_text()
    assert_y_contains_data(figure)


# -- errors, registry, CLI -------------------------------------------------------------------------

def all_tables():
    values, paired = (aggregated([FROZEN, LORA_R4], {"block": BLOCKS, "statistic": STATISTICS}),
                      paired_rows([LORA_R4], {"block": BLOCKS, "statistic": STATISTICS}))
    lens = aggregated([FROZEN, LORA_R4], {"lens": ["raw", "normed"], "layer": LAYERS,
                                          "statistic": ["kl_final_layer", "agreement", "uar"]})
    probes = aggregated([FROZEN, LORA_R4], {"readout": ["probe"], "layer": LAYERS, "statistic": ["uar", "war"]})
    erasure = aggregated([LORA_R4], {"condition": ["skip_block"], "layer": [0, 1], "statistic": ["delta_uar"]})
    sigma = aggregated([LORA_R4], {"block": [0, 1], "module": ["v_proj"], "statistic": ["sigma", "k90"],
                                   "k": [1, 2]})
    subspaces = aggregated([LORA_R4], {"differs": ["seed"], "block": [0, 1], "module": ["v_proj"]},
                           extra=lambda row: {"chance_mean": 0.01})
    return {
        "contribution": ({"contribution": values}, {"contribution": paired}),
        "logit_lens": ({"logit_lens": lens}, {}),
        "embedding_quality": ({"embeddings": embeddings_table()}, {}),
        "energy": ({"spectra": spectra_table()}, {}),
        "top10": ({"spectra": spectra_table()}, {}),
        "cka": ({"cka": cka_table()}, {}),
        "probes": ({"probes": probes}, {}),
        "lens_comparison": ({"logit_lens": lens}, {}),
        "erasure": ({"erasure": erasure}, {}),
        "weight_spectra": ({"weight_spectra": sigma}, {}),
        "subspaces": ({"subspaces": subspaces}, {}),
        "cka_heatmap": ({"cka_lora_frozen": layer_table([LORA_R4], "lora_vs_frozen"),
                         "cka_seeds": layer_table([LORA_R4], "seed_vs_seed")}, {}),
        **dynamics_tables(),
    }


def dynamics_tables():
    """The training dynamics' figures, from tests/test_dynamics_figures.py's aggregated tables."""
    from test_dynamics_figures import intruder_table, tables

    representation, readouts, weights = tables()
    return {"dynamics_heatmaps": ({"dynamics_representation": representation, "dynamics_readouts": readouts,
                                   "dynamics_weights": weights}, {}),
            "dynamics_intruders": ({"dynamics_intruders": intruder_table()}, {})}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_builds_and_names_itself_on_a_missing_column(name):
    tables, paired = all_tables()[name]
    figure = build_figure(name, tables, paired)
    assert visible_axes(figure)
    assert_y_contains_data(figure)
    plt.close(figure)
    first = next(iter(tables))
    broken = {**tables, first: tables[first].drop(columns="mean")}
    with pytest.raises(InputError, match=rf"figure {name} \(.*lacks column\(s\) \['mean'\]"):
        build_figure(name, broken, paired)


@pytest.mark.parametrize("name, analysis, column, statistic", [
    ("logit_lens", "logit_lens", "statistic", "agreement"),
    ("contribution", "contribution", "statistic", "layer_cos"),
    ("energy", "spectra", "statistic", "k90"),
    ("probes", "probes", "statistic", "uar"),
    ("embedding_quality", "embeddings", "statistic", "knn_uar"),
    ("weight_spectra", "weight_spectra", "statistic", "sigma"),
])
def test_a_missing_statistic_names_the_figure_and_the_statistic(name, analysis, column, statistic):
    tables, paired = all_tables()[name]
    table = tables[analysis]
    broken = {**tables, analysis: table[table[column] != statistic]}
    with pytest.raises(InputError, match=rf"figure {name} \(.*{statistic}"):
        build_figure(name, broken, paired)


def test_registry_captions_exist_with_the_runs_placeholder():
    papers = {spec.paper for spec in FIGURES.values()} - {"new"}
    assert papers == {"F1", "F2", "F3", "F4", "F5", "F6"}
    for name, spec in FIGURES.items():
        text = spec.caption.read_text()
        assert spec.caption.name == f"{name}.rst"
        assert "{{ snakemake.params.runs }}" in text, name
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
        assert 3 <= len(sentences) <= 8, (name, len(sentences))
        assert (spec.paper in text) if spec.paper != "new" else ("new" in text), name



def test_registry_is_light_and_resolves_each_function_lazily():
    """The workflow imports the registry while Snakemake parses it: no plotting stack, no analysis."""
    heavy = ("matplotlib", "seaborn", "workflow_scripts.analyses")
    code = ("import sys; from workflow_scripts.report.figures.registry import FIGURES; "
            f"print([m for m in sys.modules if m.startswith({heavy!r})])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
    for name, spec in FIGURES.items():
        module, _, function = spec.function.partition(":")
        assert module.startswith("workflow_scripts.report.figures.") and function, (name, spec.function)
        assert callable(spec.draw) and spec.draw.__name__ == function, name


def test_build_figure_refuses_missing_extra_tables_and_unknown_options():
    tables, paired = all_tables()["contribution"]
    with pytest.raises(InputError, match=r"missing table\(s\) \['paired contribution'\]"):
        build_figure("contribution", tables, {})
    with pytest.raises(InputError, match=r"does not take table\(s\) \['probes'\]"):
        build_figure("contribution", {**tables, "probes": tables["contribution"]}, paired)
    with pytest.raises(InputError, match=r"unknown option\(s\) \['colour'\]"):
        build_figure("contribution", tables, paired, options={"colour": "red"})
    reference = reference_table("F1", "attn_ratio", "lora", 0, 0.4)
    with pytest.raises(InputError, match="no counterpart in the paper"):
        build_figure("erasure", *all_tables()["erasure"], reference=reference)


def test_cli_writes_png_and_svg(tmp_path):
    tables, paired = all_tables()["contribution"]
    tables["contribution"].to_parquet(tmp_path / "contribution.parquet")
    paired["contribution"].to_parquet(tmp_path / "paired.parquet")
    reference = tmp_path / "paper.csv"
    reference_table("F1", "attn_ratio", "lora", 0, 0.43).to_csv(reference, index=False)
    out = tmp_path / "figs" / "f1.png"
    main(["--figure", "contribution", "--table", f"contribution={tmp_path / 'contribution.parquet'}",
          "--paired", f"contribution={tmp_path / 'paired.parquet'}", "--reference", str(reference), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in out.with_suffix(".svg").read_bytes()[:2000]


def test_cli_options_and_errors_write_nothing(tmp_path):
    lora_frozen = layer_table([LORA_R4], "lora_vs_frozen")
    seeds = layer_table([LORA_R4], "seed_vs_seed")
    lora_frozen.to_parquet(tmp_path / "lf.parquet")
    seeds.to_parquet(tmp_path / "s.parquet")
    out = tmp_path / "heat.png"
    common = ["--figure", "cka_heatmap", "--table", f"cka_lora_frozen={tmp_path / 'lf.parquet'}",
              "--table", f"cka_seeds={tmp_path / 's.parquet'}", "--out", str(out)]
    main(common + ["--option", "estimator=biased"])
    assert out.exists() and out.with_suffix(".svg").exists()
    out.unlink()
    out.with_suffix(".svg").unlink()
    with pytest.raises(InputError, match="kernel 'rbf'"):
        main(common + ["--option", "kernel=rbf"])
    with pytest.raises(InputError, match="does not exist"):
        main(["--figure", "erasure", "--table", f"erasure={tmp_path / 'none.parquet'}", "--out", str(out)])
    assert not list(tmp_path.glob("heat*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_flat_data_get_a_readable_range_without_offset():
    rows = aggregated([LORA_R4], {"lens": ["raw"], "layer": [0, 1, 2], "statistic": ["kl_final_layer", "agreement"]},
                      mean=lambda row: 1.0 - 1e-13 * row["layer"], half=0.0)
    figure = logit_lens_figure(rows)
    axis = visible_axes(figure)[0]
    low, high = axis.get_ylim()
    assert low <= 1.0 - 2e-13 and high >= 1.0 and high - low == pytest.approx(0.1)
    assert axis.yaxis.get_major_formatter().get_useOffset() is False
    assert_y_contains_data(figure)


def test_titles_say_what_the_band_is_over_and_that_one_fold_is_fixed_test_clips():
    from workflow_scripts.report.figures.tables import runs_text

    one_fold = aggregated([LORA_R4], {"lens": ["raw"], "layer": LAYERS, "statistic": ["agreement"]}, runs=2, seeds=2,
                          folds=1, interval="range over seeds (1 fold)")
    text = runs_text([one_fold])
    assert "band: range over seeds on one fold (fixed test clips: says nothing about other speakers)" in text
    five = aggregated([LORA_R4], {"lens": ["raw"], "layer": LAYERS, "statistic": ["agreement"]}, runs=10, seeds=2,
                      folds=5, interval="t95 over folds")
    assert runs_text([five]).endswith("band: 95 % t-interval over fold means")
    assert "95 %" not in text  # a range of two seeds is never called a 95 % interval


# -- the paper's values: config/paper_reference.csv drawn on every paper figure ----------------------

PAPER_REFERENCE = "config/paper_reference.csv"
PAPER_FIGURES = sorted(name for name, spec in FIGURES.items() if spec.paper != "new")


def reference_points(axis):
    """(x, y) of every paper marker of ``axis``, sorted."""
    return sorted((float(x), float(y)) for line in axis.get_lines() if line.get_gid() == "reference"
                  for x, y in zip(line.get_xdata(), line.get_ydata()))


def expected_points(reference, paper, panel, x_offset=0):
    rows = reference[(reference["figure"] == paper) & (reference["panel"] == panel)]
    return sorted((float(layer) + x_offset, float(value)) for layer, value in zip(rows["layer"], rows["value"]))


def panels_by_title(figure, prefix):
    return [axis for axis in visible_axes(figure) if axis.get_title().startswith(prefix)]


def check_contribution(figure, reference):
    axes = np.reshape(figure.axes, (4, 3))
    drawn = 0
    for k, kind in enumerate(("ratio", "cos")):
        for column, output in enumerate(("attn", "mlp", "layer")):
            for row, panel in ((2 * k, f"{output}_{kind}"), (2 * k + 1, f"{output}_{kind}_difference")):
                points = reference_points(axes[row, column])
                assert points == expected_points(reference, "F1", panel), panel
                drawn += len(points)
    assert drawn == (reference["figure"] == "F1").sum() == 44


def check_logit_lens(figure, reference):
    for panel, title in (("kl_final_layer", "KL(final ‖ layer), nats"), ("agreement", "agreement with final decision")):
        raw, = panels_by_title(figure, f"raw lens: {title}")
        assert reference_points(raw) == expected_points(reference, "F2", panel, x_offset=1)  # block l -> layer l + 1
        normed, = panels_by_title(figure, f"normed lens: {title}")
        assert reference_points(normed) == []
    assert sum(len(reference_points(axis)) for axis in figure.axes) == (reference["figure"] == "F2").sum() == 29


def check_energy(figure, reference):
    from workflow_scripts.figure_style import PANELS

    for quantity, heading in PANELS:
        axis, = panels_by_title(figure, heading)
        rows = reference[(reference["figure"] == "F4") & (reference["panel"] == quantity)]
        k90 = rows[rows["statistic"] == "mean_k90"]
        # one point per configuration (r4, r8) and label: only the paper's k90, never its ratio
        assert sorted(y for _, y in reference_points(axis)) == sorted(list(k90["value"]) * 2)
        ratio, = rows.loc[rows["statistic"] == "mean_k90_ratio", "value"]
        texts = [t.get_text() for t in axis.texts if t.get_gid() == "reference_ratio"]
        assert texts == [f"paper: untrained (lora_random) / trained mean k90 = {ratio:g}×"]


def check_top10(figure, reference):
    from workflow_scripts.figure_style import PANELS

    for quantity, heading in PANELS:
        axis, = panels_by_title(figure, heading)
        assert reference_points(axis) == []  # ranges, not points
        rows = reference[(reference["figure"] == "F5") & (reference["panel"] == quantity)]
        expected = sorted((rows.loc[(rows["series"] == s) & (rows["statistic"] == "min"), "value"].item(),
                           rows.loc[(rows["series"] == s) & (rows["statistic"] == "max"), "value"].item())
                          for s in ("trained", "lora_random"))
        drawn = bands(axis, "reference_band")
        assert sorted(band_range(band) for band in drawn) == [pytest.approx(e) for e in expected]
        for band in drawn:  # across the blocks shown, 0..3: the paper's range is over all its layers
            x = np.concatenate([path.vertices[:, 0] for path in band.get_paths()])
            assert (x.min(), x.max()) == (0.0, 3.0)


def check_cka(figure, reference):
    for direction in ("forward", "backward"):
        axes = panels_by_title(figure, direction)
        assert len(axes) == 2  # r4, r8: each gets the paper's values
        for axis in axes:
            assert reference_points(axis) == expected_points(reference, "F6", direction)


def check_embedding_quality(figure, reference):
    assert not (reference["figure"] == "F3").any()  # the paper gives no F3 numbers: nothing to draw
    assert all(reference_points(axis) == [] for axis in figure.axes)


REFERENCE_CHECKS = {"contribution": check_contribution, "logit_lens": check_logit_lens, "energy": check_energy,
                    "top10": check_top10, "cka": check_cka, "embedding_quality": check_embedding_quality}


@pytest.mark.parametrize("name", PAPER_FIGURES)
def test_every_paper_figure_draws_the_repository_s_paper_values(name):
    """The real config/paper_reference.csv (read as the workflow read it before it was checked)
    on each paper figure: every value of its figure is drawn where it belongs."""
    assert set(REFERENCE_CHECKS) == set(PAPER_FIGURES)
    reference = pd.read_csv(PAPER_REFERENCE)
    tables, paired = all_tables()[name]
    figure = build_figure(name, tables, paired, reference=reference)
    REFERENCE_CHECKS[name](figure, reference)
    assert_y_contains_data(figure)


@pytest.mark.parametrize("name", PAPER_FIGURES)
def test_the_figure_job_with_the_repository_s_paper_values_writes_the_figure(name, tmp_path):
    """What the figure rule runs with report.paper_reference: true (config/paper.yaml)."""
    tables, paired = all_tables()[name]
    arguments = ["--figure", name, "--reference", PAPER_REFERENCE, "--out", str(tmp_path / f"{name}.png")]
    for flag, given in (("--table", tables), ("--paired", paired)):
        for analysis, table in given.items():
            path = tmp_path / f"{flag[2:]}_{analysis}.parquet"
            table.to_parquet(path)
            arguments += [flag, f"{analysis}={path}"]
    main(arguments)
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
