"""SVD spectra: known answers for k90, energies and ranks, the streaming Gram against numpy's SVD,
the store-level table on small synthetic grads stores (incl. lora_init's all-zero B side), the
comparison's summary, the legacy panel switch and the entry point."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.analyses.spectra import (
    QUANTITIES,
    SCALARS,
    GramAccumulator,
    cumulative_energy,
    effective_rank,
    energy_figure,
    figure_paths,
    k90_summary,
    k_for_energy,
    main,
    matrix_spectrum,
    spectra_settings,
    spectrum_statistics,
    stable_rank,
    store_spectra,
    top10_figure,
    top_energy,
)
from workflow_scripts.errors import InputError
from workflow_scripts.runs import Run

CLASSES = ("neutral", "happy", "angry", "sad")
MODULES = ("q_proj", "v_proj")
N_BLOCKS, RANK, OUT = 2, 3, 6
ITEM_FRAMES = (40, 25, 55)  # three clips' frames


# -- known answers -----------------------------------------------------------------------------

def test_k90_on_constructed_spectra_including_an_exact_boundary():
    assert k_for_energy([3.0, 1.0]) == 1  # E_1 = 9/10 exactly
    boundary = np.sqrt([0.5, 0.4, 0.1])
    assert cumulative_energy(boundary)[1] < 0.9  # 0.8999999999999999 in float64 ...
    assert k_for_energy(boundary) == 2  # ... and the tolerance still counts it
    assert k_for_energy(np.sqrt([0.5, 0.39, 0.11])) == 3  # truly below 0.9 at k = 2
    assert k_for_energy(np.ones(10)) == 9  # flat: 9 of 10 carry 0.9
    assert k_for_energy(np.ones(20)) == 18
    assert k_for_energy([0.0, 5.0, 0.0]) == 1  # one-hot, in any order
    assert k_for_energy(np.ones(4), level=0.5) == 2
    with pytest.raises(ValueError):
        k_for_energy([1.0], level=1.5)


def test_cumulative_and_top_energy_known_answers():
    np.testing.assert_allclose(cumulative_energy([1.0, 2.0, 2.0]), [4 / 9, 8 / 9, 1.0])  # sorted decreasing first
    assert top_energy(np.ones(20)) == pytest.approx(0.5)
    assert top_energy(np.ones(20), k=5) == pytest.approx(0.25)
    assert top_energy(np.ones(8)) == pytest.approx(1.0)  # K <= 10: all the energy
    with pytest.raises(ValueError):
        cumulative_energy([1.0, -1.0])


def test_effective_rank_of_flat_one_hot_and_a_two_valued_spectrum():
    assert effective_rank(np.ones(7)) == pytest.approx(7)
    assert effective_rank(np.full(3, 0.2)) == pytest.approx(3)  # scale-free
    assert effective_rank([0.0, 4.0, 0.0, 0.0]) == pytest.approx(1)  # one-hot, zeros ignored (0 log 0 = 0)
    # p_i = sigma_i / sum sigma (not the squares): sigma = (3, 1) -> p = (0.75, 0.25)
    p = np.array([0.75, 0.25])
    assert effective_rank([3.0, 1.0]) == pytest.approx(math.exp(-np.sum(p * np.log(p))))


def test_stable_rank_known_answers():
    assert stable_rank(np.ones(5)) == pytest.approx(5)
    assert stable_rank([1.0, 2.0]) == pytest.approx(5 / 4)  # (4 + 1) / 4
    assert stable_rank([0.0, 3.0]) == pytest.approx(1)


def test_an_all_zero_spectrum_gives_nan_statistics_and_is_flagged_without_dividing_by_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a division by zero would warn
        statistics = spectrum_statistics(np.zeros(8))
        assert np.isnan(cumulative_energy(np.zeros(3))).all()
    assert statistics["all_zero"] is True and statistics["total_energy"] == 0
    for name in ("k90", "top10_energy", "effective_rank", "stable_rank"):
        assert np.isnan(statistics[name]), name
    assert spectrum_statistics([2.0, 1.0])["all_zero"] is False
    assert spectrum_statistics([2.0, 1.0])["total_energy"] == pytest.approx(5)


# -- the streaming accumulator -----------------------------------------------------------------

def offset_matrix(n: int, d: int, seed: int = 0) -> np.ndarray:
    """A matrix with a low-rank structure, decaying columns and a sizeable common offset."""
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) * 3
    return low + rng.normal(size=(n, d)) * np.linspace(1, 0.1, d) + rng.normal(size=d) * 2


def accumulate(matrix: np.ndarray, sizes) -> GramAccumulator:
    accumulator = GramAccumulator(matrix.shape[1])
    for rows in np.split(matrix, np.cumsum(sizes)[:-1]):
        accumulator.update(rows)
    return accumulator


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shape", [(300, 7), (5, 12)])  # n > d and n < d
def test_the_accumulator_matches_numpy_svd_and_ignores_the_batching(center, shape):
    matrix = offset_matrix(*shape)
    reference = np.linalg.svd(matrix - matrix.mean(0) if center else matrix, compute_uv=False)
    n = shape[0]
    for sizes in ([n], [1] * n, [2, n - 4, 2] if n > 4 else [n], [n // 3, n - n // 3]):
        sigma = accumulate(matrix, sizes).singular_values(center)
        assert sigma.dtype == np.float64 and sigma.size == min(shape)
        assert (np.diff(sigma) <= 0).all()
        # eigenvalues of the Gram: absolute accuracy about sqrt(eps) * sigma_1
        np.testing.assert_allclose(sigma, reference, rtol=1e-9, atol=1e-7 * reference[0])


def test_centring_removes_a_common_offset():
    constant_plus_rank_one = np.outer(np.arange(10.0), [1.0, 2.0, 0.0]) + [5.0, -3.0, 7.0]
    accumulator = accumulate(constant_plus_rank_one, [4, 6])
    centred = accumulator.singular_values(center=True)
    assert spectrum_statistics(centred)["k90"] == 1 and centred[1:] == pytest.approx(0, abs=1e-6)
    uncentred = accumulator.singular_values(center=False)
    assert (uncentred > 1e-6 * uncentred[0]).sum() == 2  # the offset is a second direction


def test_the_accumulator_works_in_float64_whatever_the_input_dtype():
    matrix = offset_matrix(50, 4).astype(np.float32)
    sigma = accumulate(matrix, [20, 30]).singular_values(False)
    np.testing.assert_allclose(sigma, np.linalg.svd(matrix.astype(np.float64), compute_uv=False), rtol=1e-9)
    with pytest.raises(ValueError):
        GramAccumulator(4).update(np.ones((3, 5)))


def test_a_zarr_array_is_streamed_chunk_by_chunk(tmp_path, monkeypatch):
    import zarr

    import workflow_scripts.analyses.spectra as spectra

    matrix = offset_matrix(103, 5, seed=3).astype(np.float32)
    array = zarr.create_array(str(tmp_path / "m.zarr"), shape=matrix.shape, chunks=(10, 5), dtype="float32")
    array[:] = matrix
    monkeypatch.setattr(spectra, "READ_BYTES", 1)  # one chunk per read: 11 reads, the last partial
    reads = []
    original = spectra.row_blocks
    monkeypatch.setattr(spectra, "row_blocks", lambda a: (reads.append(len(rows)) or rows for rows in original(a)))
    sigma, frames = matrix_spectrum(array, center=True)
    assert frames == 103 and reads == [10] * 10 + [3]
    reference = np.linalg.svd(matrix.astype(np.float64) - matrix.astype(np.float64).mean(0), compute_uv=False)
    np.testing.assert_allclose(sigma, reference, rtol=1e-9, atol=1e-7 * reference[0])


# -- synthetic grads stores --------------------------------------------------------------------

def toy(method: str = "lora", seed: int = 0) -> Run:
    return Run("toy", "loso_speaker", "tiny", method, "q_proj+v_proj", RANK, seed, 1)


def write_grads_store(path, run: Run, *, legacy: bool = False, zero_b: bool = False, lora: bool = True, seed: int = 0):
    """A grads store of ``run``: random U, V, gU, gV (with offsets) for every block and module;
    ``zero_b``: V and gU identically zero, as a lora_init run's; ``lora=False``: a frozen run's."""
    from workflow_scripts.capture.store import CaptureStoreWriter, StoreShape

    rng = np.random.default_rng(seed)
    modules = {(b, m): (RANK, OUT) for b in range(N_BLOCKS) for m in MODULES} if lora else {}
    shape = StoreShape("grads", N_BLOCKS, OUT, CLASSES, modules, (), tuple(range(N_BLOCKS)), "float32")
    attrs = {"run": run.id, "dataset": run.dataset, "protocol": run.protocol, "model": run.model,
             "method": run.method, "seed": run.seed, "fold": run.fold, "targets": run.target_modules,
             "rank": run.rank, "alpha": 8.0, "scaling": 8.0 / RANK, "legacy": legacy, "max_seconds": 30,
             "classes": list(CLASSES), "config_hash": "x", "provenance": {}}
    with CaptureStoreWriter(path, shape, attrs) as writer:
        n = len(ITEM_FRAMES)
        writer.append_utterances({
            "utterance": np.array([f"u{i}" for i in range(n)]), "speaker": np.array(["s1"] * n),
            "split": np.array(["train"] * n), "label": np.arange(n), "prediction": np.arange(n),
            "logits": rng.normal(size=(n, len(CLASSES))).astype(np.float32),
            "loss": np.ones(n, dtype=np.float32), "n_frames": np.array(ITEM_FRAMES)})
        for i, frames in enumerate(ITEM_FRAMES):
            rows = {}
            for (block, module), (rank, out) in modules.items():
                for quantity in QUANTITIES:
                    width = rank if quantity.startswith("a_") else out
                    values = rng.normal(size=(frames, width)) * np.linspace(2, 0.2, width) + 1.5
                    if zero_b and quantity in ("b_out", "a_grad"):
                        values = np.zeros((frames, width))
                    rows[("lora", block, module, quantity)] = values.astype(np.float32)
            writer.append_frames(f"u{i}", rows)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("spectra")
    return {
        "lora": write_grads_store(root / "lora" / "grads.zarr", toy("lora"), seed=1),
        "lora_random": write_grads_store(root / "random" / "grads.zarr", toy("lora_random"), seed=2),
        "lora_init": write_grads_store(root / "init" / "grads.zarr", toy("lora_init"), zero_b=True, seed=3),
        "legacy": write_grads_store(root / "legacy" / "grads.zarr", toy("lora"), legacy=True, seed=1),
        "frozen": write_grads_store(root / "frozen" / "grads.zarr", Run("toy", "loso_speaker", "tiny", "frozen",
                                                                       "none", 0, 0, 1), lora=False),
    }


def values_of(table, block, module, quantity, statistic):
    rows = table[(table["block"] == block) & (table["module"] == module) & (table["quantity"] == quantity)
                 & (table["statistic"] == statistic)]
    return rows.sort_values("k")["value"].to_numpy()


@pytest.mark.parametrize("center", [True, False])
def test_store_spectra_matches_numpy_svd_of_the_stored_rows(stores, center):
    from workflow_scripts.capture.store import CaptureStore

    store = CaptureStore(stores["lora"], kind="grads")
    table = store_spectra(store, center=center)
    assert list(table.columns) == ["block", "module", "quantity", "statistic", "k", "value", "all_zero"]
    assert set(table["quantity"]) == set(QUANTITIES)
    assert set(zip(table["block"], table["module"])) == set(store.adapted())
    assert set(table["statistic"]) == {"sigma", "cumulative_energy", *SCALARS}
    scalars = table[table["statistic"].isin(SCALARS)]
    assert scalars["k"].isna().all() and not table.loc[table["statistic"] == "sigma", "k"].isna().any()
    assert not table["all_zero"].any()
    for block, module in store.adapted():
        for quantity in QUANTITIES:
            rows = store.frames(("lora", block, module, quantity)).astype(np.float64)
            reference = np.linalg.svd(rows - rows.mean(0) if center else rows, compute_uv=False)
            sigma = values_of(table, block, module, quantity, "sigma")
            np.testing.assert_allclose(sigma, reference, rtol=1e-9, atol=1e-7 * reference[0])
            assert values_of(table, block, module, quantity, "k90")[0] == k_for_energy(reference)
            assert values_of(table, block, module, quantity, "frames")[0] == sum(ITEM_FRAMES)
            assert values_of(table, block, module, quantity, "total_energy")[0] == pytest.approx(np.sum(reference ** 2))
            np.testing.assert_allclose(values_of(table, block, module, quantity, "cumulative_energy"),
                                       cumulative_energy(reference), rtol=1e-9)


def test_a_legacy_store_is_uncentred_whatever_center_says(stores):
    from workflow_scripts.capture.store import CaptureStore

    legacy = store_spectra(CaptureStore(stores["legacy"]), center=True)
    rows = CaptureStore(stores["legacy"]).frames(("lora", 1, "q_proj", "a_out")).astype(np.float64)
    np.testing.assert_allclose(values_of(legacy, 1, "q_proj", "a_out", "sigma"),
                               np.linalg.svd(rows, compute_uv=False), rtol=1e-9)
    same_rows_default = store_spectra(CaptureStore(stores["lora"]), center=False)  # same seed, same rows
    pd.testing.assert_frame_equal(legacy, same_rows_default)


def test_a_lora_init_store_flags_its_all_zero_b_outputs_and_a_gradients(stores):
    from workflow_scripts.capture.store import CaptureStore

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no division by zero anywhere
        table = store_spectra(CaptureStore(stores["lora_init"]), center=True)
    zero = table["quantity"].isin(["b_out", "a_grad"])
    assert table.loc[zero, "all_zero"].all() and not table.loc[~zero, "all_zero"].any()
    zero_scalars = table[zero & table["statistic"].isin(["k90", "top10_energy", "effective_rank", "stable_rank",
                                                         "cumulative_energy"])]
    assert zero_scalars["value"].isna().all()
    assert (table.loc[zero & (table["statistic"] == "sigma"), "value"] == 0).all()
    assert (table.loc[zero & (table["statistic"] == "total_energy"), "value"] == 0).all()
    assert (table.loc[zero & (table["statistic"] == "frames"), "value"] == sum(ITEM_FRAMES)).all()
    assert table.loc[~zero & (table["statistic"] == "k90"), "value"].notna().all()


def test_a_store_without_lora_is_refused_by_name(stores):
    from workflow_scripts.capture.store import CaptureStore

    with pytest.raises(InputError, match=r"frozen/grads.zarr has no LoRA arrays"):
        store_spectra(CaptureStore(stores["frozen"]))


# -- comparison and figures --------------------------------------------------------------------

def k90_table(values: dict, zero: set = frozenset()) -> pd.DataFrame:
    """A minimal spectra table: k90 per (block, module, quantity), cumulative-energy curves and
    top-10 energies to draw."""
    rows = []
    for (block, module, quantity), k90 in values.items():
        all_zero = (block, module, quantity) in zero
        curve = np.full(4, np.nan) if all_zero else np.minimum(1.0, np.arange(1, 5) / k90)
        rows += [{"block": block, "module": module, "quantity": quantity, "statistic": "cumulative_energy",
                  "k": k + 1, "value": v, "all_zero": all_zero} for k, v in enumerate(curve)]
        rows += [{"block": block, "module": module, "quantity": quantity, "statistic": "sigma", "k": k + 1,
                  "value": 0.0 if all_zero else 1.0, "all_zero": all_zero} for k in range(4)]
        rows += [{"block": block, "module": module, "quantity": quantity, "statistic": name, "k": pd.NA,
                  "value": np.nan if all_zero else v, "all_zero": all_zero}
                 for name, v in (("k90", k90), ("top10_energy", 1.0))]
    table = pd.DataFrame(rows)
    table["k"] = table["k"].astype("Int64")
    return table


def full(value_of) -> dict:
    return {(b, m, q): value_of(b, m, q) for b in range(2) for m in MODULES for q in QUANTITIES}


def test_k90_summary_known_answers():
    trained = k90_table(full(lambda b, m, q: 1 + b + (m == "v_proj")))  # 1, 2, 2, 3 per quantity
    untrained = k90_table(full(lambda b, m, q: 4.0))
    init = k90_table(full(lambda b, m, q: 2.0), zero={(b, m, q) for b in range(2) for m in MODULES
                                                     for q in ("b_out", "a_grad")})
    summary = k90_summary({"trained": trained, "lora_random": untrained, "lora_init": init})
    assert list(summary.columns) == ["label", "quantity", "module", "statistic", "value"]
    value = summary.set_index(["label", "quantity", "module", "statistic"])["value"]
    assert value["trained", "a_out", "all", "mean_k90"] == pytest.approx(2.0)
    assert value["trained", "a_out", "all", "std_k90"] == pytest.approx(np.std([1, 2, 2, 3], ddof=1))
    assert value["trained", "a_out", "all", "min_k90"] == 1 and value["trained", "a_out", "all", "max_k90"] == 3
    assert value["trained", "a_out", "q_proj", "mean_k90"] == pytest.approx(1.5)
    assert value["trained", "a_out", "v_proj", "mean_k90"] == pytest.approx(2.5)
    assert value["lora_random", "b_grad", "all", "ratio_mean_k90"] == pytest.approx(2.0)  # untrained / trained
    assert value["lora_random", "b_grad", "v_proj", "ratio_mean_k90"] == pytest.approx(4 / 2.5)
    assert value["trained", "b_grad", "all", "ratio_mean_k90"] == pytest.approx(1.0)
    assert value["lora_init", "b_out", "all", "matrices"] == 4
    assert value["lora_init", "b_out", "all", "all_zero_matrices"] == 4
    assert np.isnan(value["lora_init", "b_out", "all", "mean_k90"])
    assert np.isnan(value["lora_init", "b_out", "all", "ratio_mean_k90"])
    assert value["lora_init", "a_out", "all", "all_zero_matrices"] == 0
    with pytest.raises(ValueError, match="trained"):
        k90_summary({"lora_random": untrained})


def line_data(axis) -> list[tuple]:
    return [(tuple(line.get_xdata()), tuple(np.round(line.get_ydata(), 12))) for line in axis.get_lines()]


@pytest.mark.parametrize("bug", [False, True])
def test_the_legacy_panel_bug_re_plots_the_a_gradients_only_when_switched_on(bug):
    import matplotlib.pyplot as plt

    tables = {"trained": k90_table(full(lambda b, m, q: {"a_grad": 2.0, "b_grad": 4.0}.get(q, 1.0))),
              "lora_random": k90_table(full(lambda b, m, q: {"a_grad": 3.0, "b_grad": 1.5}.get(q, 2.0)))}
    figure = energy_figure(tables, legacy_svd_panel_bug=bug)
    a_gradient, b_gradient = figure.axes[1], figure.axes[3]
    assert (line_data(b_gradient) == line_data(a_gradient)) is bug
    assert ("legacy_svd_panel_bug" in b_gradient.get_title()) is bug
    texts = lambda axis: [t.get_text() for t in axis.texts]  # noqa: E731
    assert (texts(b_gradient) == texts(a_gradient)) is bug  # the mean/ratio box follows the data
    plt.close(figure)


def test_all_zero_spectra_are_a_note_not_curves():
    import matplotlib.pyplot as plt

    zero = {(b, m, q) for b in range(2) for m in MODULES for q in ("b_out", "a_grad")}
    init = k90_table(full(lambda b, m, q: 2.0), zero=zero)
    figure = energy_figure({"lora_init": init})
    a_out, b_out = figure.axes[0], figure.axes[2]
    guides = 3
    assert len(b_out.get_lines()) == guides  # only the 0.5/0.8/1.0 guides
    assert len(a_out.get_lines()) == guides + 4 + 1  # 4 matrices and their mean
    assert any("identically zero" in t.get_text() for t in b_out.texts)
    assert not any("identically zero" in t.get_text() for t in a_out.texts)
    plt.close(figure)
    figure = top10_figure({"trained": k90_table(full(lambda b, m, q: 2.0)), "lora_init": init})
    assert len(figure.axes) == 4 and any("identically zero" in t.get_text() for t in figure.axes[2].texts)
    plt.close(figure)


def test_settings_are_checked():
    assert spectra_settings({}) == {"center": True, "legacy_svd_panel_bug": False}
    assert spectra_settings({"center": False})["center"] is False
    with pytest.raises(InputError, match="analyses.spectra.center"):
        spectra_settings({"center": "yes"})
    with pytest.raises(InputError, match="unknown settings"):
        spectra_settings({"centre": True})


def test_figure_paths():
    energy, top10 = figure_paths("results/x/fold1.parquet")
    assert str(energy) == "results/x/fold1.png" and str(top10) == "results/x/fold1.top10.png"


# -- entry point -------------------------------------------------------------------------------

def run_arguments(run: Run) -> list[str]:
    return [a for name in ("dataset", "protocol", "model", "method", "targets", "rank", "seed", "fold")
            for a in (f"--{name}", str(getattr(run, name)))]


SPEC = json.dumps({"center": True, "legacy_svd_panel_bug": False})
RUN_COLUMNS = ["run", "dataset", "protocol", "model", "method", "targets", "rank", "seed", "fold"]


@pytest.fixture(scope="module")
def run_tables(stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    tables = {}
    for method in ("lora", "lora_random", "lora_init"):
        out = root / method / "fold1.parquet"
        main(run_arguments(toy(method)) + ["--grads", str(stores[method]), "--spec", SPEC, "--out", str(out)])
        tables[method] = out
    return tables


def test_the_per_run_entry_point_writes_the_table_with_the_run_and_the_figures(run_tables):
    from workflow_scripts.provenance import read_provenance

    out = run_tables["lora"]
    table = pd.read_parquet(out)
    assert list(table.columns) == RUN_COLUMNS + ["block", "module", "quantity", "statistic", "k", "value", "all_zero"]
    assert (table["run"] == toy().id).all()
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".svg").stat().st_size > 0
    record = read_provenance(out)
    assert record["step"] == "spectra" and record["centered"] is True and record["legacy"] is False
    assert pd.read_parquet(run_tables["lora_init"]).query("quantity == 'b_out'")["all_zero"].all()


def test_a_store_of_another_run_is_refused(stores, tmp_path):
    with pytest.raises(InputError, match="holds run"):
        main(run_arguments(toy(seed=1)) + ["--grads", str(stores["lora"]), "--spec", SPEC,
                                           "--out", str(tmp_path / "x.parquet")])
    assert not (tmp_path / "x.parquet").exists()


def test_the_comparison_writes_the_summary_and_both_figures(run_tables, tmp_path):
    out = tmp_path / "compare" / "fold1.parquet"
    main(run_arguments(toy()) + ["--compare", str(run_tables["lora"]),
                                 "--reference", f"lora_random={run_tables['lora_random']}",
                                 "--reference", f"lora_init={run_tables['lora_init']}", "--spec", SPEC,
                                 "--out", str(out)])
    summary = pd.read_parquet(out)
    assert list(summary.columns) == RUN_COLUMNS + ["label", "quantity", "module", "statistic", "value"]
    assert (summary["run"] == toy().id).all()
    assert set(summary["label"]) == {"trained", "lora_random", "lora_init"}
    assert set(summary["module"]) == {"all", *MODULES}
    expected = pd.read_parquet(run_tables["lora_random"]).query("statistic == 'k90' and quantity == 'b_grad'")
    mean = summary.query("label == 'lora_random' and quantity == 'b_grad' and module == 'all' "
                         "and statistic == 'mean_k90'")["value"].item()
    assert mean == pytest.approx(expected["value"].mean())
    for name in ("fold1.png", "fold1.svg", "fold1.top10.png", "fold1.top10.svg"):
        assert (out.parent / name).stat().st_size > 0, name


@pytest.mark.parametrize("problem", ["seed", "method", "label", "run", "centring"])
def test_mismatched_tables_are_refused_by_name(run_tables, stores, tmp_path, problem):
    if problem == "seed":  # a reference of another seed
        other = tmp_path / "seed1.parquet"
        store = write_grads_store(tmp_path / "s1" / "grads.zarr", toy("lora_random", seed=1), seed=5)
        main(run_arguments(toy("lora_random", seed=1)) + ["--grads", str(store), "--spec", SPEC, "--out", str(other)])
        references, trained_run, match = [f"lora_random={other}"], toy(), r"seed1.parquet is not comparable.*seed 1"
    elif problem == "method":  # the lora_init table passed as lora_random
        references, trained_run = [f"lora_random={run_tables['lora_init']}"], toy()
        match = r"lora_init/fold1.parquet holds a lora_init run"
    elif problem == "label":
        references, trained_run = [f"untrained={run_tables['lora_random']}"], toy()
        match = r"--reference untrained=.*the label must be one of"
    elif problem == "run":  # the trained table is not the wildcards' run
        references, trained_run = [f"lora_random={run_tables['lora_random']}"], toy(seed=3)
        match = r"lora/fold1.parquet holds run"
    else:  # a reference from a legacy (uncentred) store against a centred trained table
        other = tmp_path / "legacy.parquet"
        store = write_grads_store(tmp_path / "legacy" / "grads.zarr", toy("lora_random"), legacy=True, seed=5)
        main(run_arguments(toy("lora_random")) + ["--grads", str(store), "--spec", SPEC, "--out", str(other)])
        references, trained_run = [f"lora_random={other}"], toy()
        match = r"computed differently .*legacy.parquet: uncentred"
    out = tmp_path / "summary.parquet"
    arguments = run_arguments(trained_run) + ["--compare", str(run_tables["lora"]), "--spec", SPEC, "--out", str(out)]
    for reference in references:
        arguments += ["--reference", reference]
    with pytest.raises(InputError, match=match):
        main(arguments)
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_help():
    result = subprocess.run([sys.executable, "-m", "workflow_scripts.analyses.spectra", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m workflow_scripts.analyses.spectra")
    for flag in ("--grads", "--compare", "--reference", "--spec", "--out", "--fold"):
        assert flag in result.stdout
