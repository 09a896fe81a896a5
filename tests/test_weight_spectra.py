"""Weight spectra: the ΔW core spectrum against the dense SVD, the adapter reader, the statistics
on constructed spectra, ΔW = 0, and the entry point's checks against the run's wildcards."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cli import help_text
from safetensors.numpy import save_file

from workflow_scripts.analyses.weight_spectra import (
    adapter_matrices,
    delta_w_column_basis,
    delta_w_singular_values,
    main,
    numerical_rank,
    run_weight_spectra,
    spectrum_statistics,
)
from workflow_scripts.errors import InputError
from workflow_scripts.provenance import read_provenance

ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_key(block: int, module: str, factor: str, adapter_name: str | None = None) -> str:
    """A factor's key as PEFT saves it (``adapter_name``: the older form that keeps it)."""
    parent = f"self_attn.{module}" if module in ATTENTION else module
    name = f"lora_{factor}.{adapter_name}.weight" if adapter_name else f"lora_{factor}.weight"
    return f"base_model.model.encoder.layers.{block}.{parent}.{name}"


def write_adapter(folder: Path, factors: dict, rank: int, alpha: float, *, use_rslora: bool = False,
                  targets: list[str] | None = None, adapter_name: str | None = None) -> Path:
    """A PEFT-style weights/ folder: ``factors`` {(block, module): (A, B)} saved in float32 with a
    head beside them, and an adapter_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"base_model.model.classifier.weight": np.ones((4, 8), np.float32),
               "base_model.model.classifier.bias": np.zeros(4, np.float32),
               "base_model.model.projector.weight": np.ones((8, 6), np.float32)}
    for (block, module), (a, b) in factors.items():
        tensors[lora_key(block, module, "A", adapter_name)] = np.ascontiguousarray(a, dtype=np.float32)
        tensors[lora_key(block, module, "B", adapter_name)] = np.ascontiguousarray(b, dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    modules = targets if targets is not None else sorted({module for _, module in factors})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": use_rslora,
              "target_modules": modules, "modules_to_save": ["projector", "classifier"], "rank_pattern": {},
              "alpha_pattern": {}, "use_dora": False}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def random_factors(rng, d_out: int, d_in: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """A and B exactly representable in float32 (so what is written is what is read back)."""
    a = rng.normal(size=(rank, d_in)).astype(np.float32).astype(np.float64)
    b = rng.normal(size=(d_out, rank)).astype(np.float32).astype(np.float64)
    return a, b


def dense_singular_values(a, b, scaling):
    return np.linalg.svd(scaling * (b @ a), compute_uv=False)


# --- the core spectrum --------------------------------------------------------------------------


@pytest.mark.parametrize("d_out, d_in, rank",
                         [(7, 5, 3), (20, 30, 4), (6, 40, 6), (50, 8, 2), (64, 64, 8), (4, 10, 6)])
def test_core_spectrum_equals_the_dense_svd(d_out, d_in, rank):
    rng = np.random.default_rng(d_out * 100 + d_in + rank)
    a, b = rng.normal(size=(rank, d_in)), rng.normal(size=(d_out, rank))
    sigma = delta_w_singular_values(a, b, 2.5)
    dense = dense_singular_values(a, b, 2.5)
    assert sigma.dtype == np.float64 and len(sigma) == min(rank, d_out, d_in)
    np.testing.assert_allclose(sigma, dense[: len(sigma)], rtol=1e-10, atol=1e-12)
    assert np.all(np.diff(sigma) <= 0)


def test_core_spectrum_with_rank_deficient_b_equals_the_dense_svd():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 12))
    b = rng.normal(size=(9, 2)) @ rng.normal(size=(2, 5))  # rank 2 although r = 5
    sigma = delta_w_singular_values(a, b, 0.5)
    np.testing.assert_allclose(sigma, dense_singular_values(a, b, 0.5)[:5], atol=1e-12)
    assert numerical_rank(sigma, (9, 12)) == 2
    basis = delta_w_column_basis(a, b, 0.5)
    assert basis.basis.shape == (9, 2) and not basis.all_zero
    delta_w = 0.5 * b @ a
    # The two directions span ΔW's columns: projecting onto them changes nothing.
    np.testing.assert_allclose(basis.basis @ (basis.basis.T @ delta_w), delta_w, atol=1e-12)


def test_core_spectrum_takes_float32_factors_in_float64():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(3, 10)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
    sigma = delta_w_singular_values(a, b, 1.0)
    assert sigma.dtype == np.float64
    dense = dense_singular_values(a.astype(np.float64), b.astype(np.float64), 1.0)
    np.testing.assert_allclose(sigma, dense[:3], rtol=1e-12)


def test_column_basis_is_orthonormal_spans_delta_w_and_takes_the_top_k():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(4, 15)), rng.normal(size=(11, 4))
    delta_w = 2.0 * b @ a
    full = delta_w_column_basis(a, b, 2.0)
    assert full.basis.shape == (11, 4)
    np.testing.assert_allclose(full.basis.T @ full.basis, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(full.basis @ (full.basis.T @ delta_w), delta_w, atol=1e-10)
    top = delta_w_column_basis(a, b, 2.0, k=1).basis
    left, _, _ = np.linalg.svd(delta_w)
    assert abs(float(top[:, 0] @ left[:, 0])) == pytest.approx(1.0)  # ΔW's first left singular vector
    with pytest.raises(ValueError):
        delta_w_column_basis(a, b, 2.0, k=5)


def test_zero_b_gives_zero_spectrum_empty_basis_and_nan_ranks_without_division_by_zero():
    a, b = np.random.default_rng(6).normal(size=(4, 10)), np.zeros((7, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 would warn
        sigma = delta_w_singular_values(a, b, 2.0)
        basis = delta_w_column_basis(a, b, 2.0)
        statistics = spectrum_statistics(sigma)
    assert np.all(sigma == 0)
    assert basis.all_zero and basis.basis.shape == (7, 0)
    assert math.isnan(statistics["k90"]) and math.isnan(statistics["effective_rank"])
    assert math.isnan(statistics["stable_rank"])
    assert statistics["frobenius_norm"] == 0 and statistics["spectral_norm"] == 0


# --- statistics on constructed spectra ----------------------------------------------------------


def test_statistics_known_answers():
    # Energies 16/25 then 1: k90 = 2. Stable rank 25/16. Frobenius 5, spectral 4.
    s = spectrum_statistics(np.array([4.0, 3.0]))
    assert s["k90"] == 2 and s["stable_rank"] == pytest.approx(25 / 16)
    assert s["frobenius_norm"] == pytest.approx(5.0) and s["spectral_norm"] == 4.0
    p = np.array([4.0, 3.0]) / 7
    assert s["effective_rank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))))
    # E_1 = 9/10 exactly at the threshold: counts (tolerance), so k90 = 1.
    assert spectrum_statistics(np.array([3.0, 1.0]))["k90"] == 1
    flat = spectrum_statistics(np.ones(4))
    assert flat["effective_rank"] == pytest.approx(4.0) and flat["stable_rank"] == pytest.approx(4.0)
    assert flat["k90"] == 4
    # Zero singular values do not enter the entropy (0·log 0 = 0).
    assert spectrum_statistics(np.array([2.0, 2.0, 0.0]))["effective_rank"] == pytest.approx(2.0)


# --- reading an adapter -------------------------------------------------------------------------


def test_a_written_adapter_is_read_back_in_float64_with_the_head_ignored(tmp_path):
    rng = np.random.default_rng(7)
    factors = {(0, "q_proj"): random_factors(rng, 12, 12, 4), (0, "v_proj"): random_factors(rng, 12, 12, 4),
               (1, "fc1"): random_factors(rng, 24, 12, 4), (1, "fc2"): random_factors(rng, 12, 24, 4),
               (1, "out_proj"): random_factors(rng, 12, 12, 4)}
    folder = write_adapter(tmp_path / "weights", factors, rank=4, alpha=8.0)
    matrices, scaling, rank = adapter_matrices(folder)
    assert rank == 4 and scaling == 2.0
    assert list(matrices) == [(0, "q_proj"), (0, "v_proj"), (1, "out_proj"), (1, "fc1"), (1, "fc2")]
    for key, (a, b) in factors.items():
        assert matrices[key][0].dtype == np.float64
        np.testing.assert_array_equal(matrices[key][0], a)
        np.testing.assert_array_equal(matrices[key][1], b)


def test_keys_with_the_adapter_name_are_read_too(tmp_path):
    rng = np.random.default_rng(8)
    factors = {(3, "k_proj"): random_factors(rng, 6, 6, 2)}
    matrices, _, _ = adapter_matrices(write_adapter(tmp_path / "w", factors, 2, 4.0, adapter_name="default"))
    np.testing.assert_array_equal(matrices[(3, "k_proj")][1], factors[(3, "k_proj")][1])


@pytest.mark.parametrize("use_rslora, expected", [(False, 16 / 8), (True, 16 / math.sqrt(8))])
def test_scaling_comes_from_the_adapter_config(tmp_path, use_rslora, expected):
    rng = np.random.default_rng(9)
    a, b = random_factors(rng, 10, 10, 8)
    folder = write_adapter(tmp_path / "w", {(0, "v_proj"): (a, b)}, rank=8, alpha=16, use_rslora=use_rslora)
    _, scaling, _ = adapter_matrices(folder)
    assert scaling == pytest.approx(expected)
    table = run_weight_spectra(folder)
    sigma = table[table["statistic"] == "sigma"].sort_values("k")["value"].to_numpy()
    np.testing.assert_allclose(sigma, dense_singular_values(a, b, expected)[:8], rtol=1e-10)


def test_table_schema_and_zero_update_flag(tmp_path):
    rng = np.random.default_rng(10)
    a, b = random_factors(rng, 8, 8, 3)
    factors = {(0, "q_proj"): (a, b), (0, "v_proj"): (a, np.zeros_like(b))}
    folder = write_adapter(tmp_path / "w", factors, 3, 6.0)
    table = run_weight_spectra(folder)
    assert list(table.columns) == ["block", "module", "statistic", "k", "value", "all_zero"]
    assert set(table["statistic"]) == {"sigma", "k90", "effective_rank", "stable_rank", "frobenius_norm",
                                       "spectral_norm"}
    sigma = table[table["statistic"] == "sigma"]
    assert sorted(sigma["k"].unique()) == [1, 2, 3]
    assert table.loc[table["statistic"] != "sigma", "k"].isna().all()
    zero = table[table["module"] == "v_proj"].set_index("statistic")
    assert zero["all_zero"].all() and not table.loc[table["module"] == "q_proj", "all_zero"].any()
    assert np.isnan(zero.loc["k90", "value"]) and zero.loc["frobenius_norm", "value"] == 0
    assert (zero.loc["sigma", "value"] == 0).all()


def test_a_frozen_run_s_head_only_folder_is_refused_naming_the_file(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    save_file({"projector.weight": np.ones((2, 2), np.float32)}, str(folder / "head.safetensors"))
    with pytest.raises(InputError, match=r"adapter_model\.safetensors: missing.*head\.safetensors"):
        adapter_matrices(folder)


def test_malformed_adapters_are_refused_naming_the_file(tmp_path):
    rng = np.random.default_rng(11)
    a, b = random_factors(rng, 6, 6, 2)
    corrupt = write_adapter(tmp_path / "corrupt", {(0, "q_proj"): (a, b)}, 2, 4.0)
    (corrupt / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match=r"corrupt/adapter_model\.safetensors: not a readable"):
        adapter_matrices(corrupt)

    wrong_rank = write_adapter(tmp_path / "wrong_rank", {(0, "q_proj"): (a, b)}, 3, 4.0)
    with pytest.raises(InputError, match=r"block 0 q_proj: A \(2, 6\) and B \(6, 2\) are not .* r = 3"):
        adapter_matrices(wrong_rank)

    half = write_adapter(tmp_path / "half", {(0, "q_proj"): (a, b)}, 2, 4.0)
    save_file({lora_key(0, "q_proj", "A"): a.astype(np.float32)}, str(half / "adapter_model.safetensors"))
    with pytest.raises(InputError, match="lora_B is missing"):
        adapter_matrices(half)

    no_rank = write_adapter(tmp_path / "no_rank", {(0, "q_proj"): (a, b)}, 2, 4.0)
    (no_rank / "adapter_config.json").write_text(json.dumps({"lora_alpha": 4.0}))
    with pytest.raises(InputError, match=r"no_rank/adapter_config\.json: has no r"):
        adapter_matrices(no_rank)

    no_lora = write_adapter(tmp_path / "no_lora", {}, 2, 4.0)
    with pytest.raises(InputError, match="no LoRA factors"):
        adapter_matrices(no_lora)


# --- the entry point ----------------------------------------------------------------------------

WILDCARDS = ["--dataset", "toy", "--protocol", "loso_speaker", "--model", "tiny", "--seed", "0",
             "--fold", "1"]


def test_entry_point_writes_the_table_with_the_run_s_columns_figure_and_provenance(tmp_path):
    rng = np.random.default_rng(12)
    factors = {(block, module): random_factors(rng, 16, 16, 4)
               for block in range(3) for module in ("q_proj", "v_proj")}
    folder = write_adapter(tmp_path / "weights", factors, 4, 8.0)
    out = tmp_path / "out" / "weight_spectra.parquet"
    main(["--weights", str(folder), *WILDCARDS, "--method", "lora", "--targets", "q_proj+v_proj",
          "--rank", "4", "--out", str(out)])
    table = pd.read_parquet(out)
    assert list(table.columns[:9]) == ["run", "dataset", "protocol", "model", "method", "targets", "rank",
                                       "seed", "fold"]
    assert table["run"].iloc[0] == "toy/loso_speaker/tiny/lora/q_proj+v_proj/r4/seed0/fold1"
    assert len(table) == 3 * 2 * (4 + 5)
    assert out.with_suffix(".png").is_file() and out.with_suffix(".svg").is_file()
    record = read_provenance(out)
    assert record["step"] == "weight_spectra" and record["weights"] == str(folder)
    assert record["scaling"] == 2.0


def test_entry_point_on_a_zero_update_says_so(tmp_path):
    rng = np.random.default_rng(13)
    a, _ = random_factors(rng, 8, 8, 2)
    folder = write_adapter(tmp_path / "weights", {(0, "v_proj"): (a, np.zeros((8, 2))),
                                                  (1, "v_proj"): (a, np.zeros((8, 2)))}, 2, 4.0)
    out = tmp_path / "ws.parquet"
    main(["--weights", str(folder), *WILDCARDS, "--method", "lora_init", "--targets", "v_proj", "--rank", "2",
          "--out", str(out)])
    assert pd.read_parquet(out)["all_zero"].all()


@pytest.mark.parametrize("rank, targets, message", [
    ("8", "q_proj+v_proj", r"r = 4, but run .*/r8/.* has rank 8"),
    ("4", "q_proj", r"target_modules \['q_proj', 'v_proj'\], but run .* targets \['q_proj'\]"),
])
def test_entry_point_refuses_weights_that_do_not_match_the_run(tmp_path, rank, targets, message):
    rng = np.random.default_rng(14)
    folder = write_adapter(tmp_path / "weights", {(0, "q_proj"): random_factors(rng, 8, 8, 4),
                                                  (0, "v_proj"): random_factors(rng, 8, 8, 4)}, 4, 8.0)
    out = tmp_path / "ws.parquet"
    with pytest.raises(InputError, match=message):
        main(["--weights", str(folder), *WILDCARDS, "--method", "lora", "--targets", targets, "--rank", rank,
              "--out", str(out)])
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_entry_point_refuses_a_file_that_adapts_other_modules_than_its_config_says(tmp_path):
    rng = np.random.default_rng(15)
    folder = write_adapter(tmp_path / "weights", {(0, "q_proj"): random_factors(rng, 8, 8, 4)}, 4, 8.0,
                           targets=["q_proj", "v_proj"])
    with pytest.raises(InputError, match=r"adapts \['q_proj'\], but run .* targets \['q_proj', 'v_proj'\]"):
        main(["--weights", str(folder), *WILDCARDS, "--method", "lora", "--targets", "q_proj+v_proj",
              "--rank", "4", "--out", str(tmp_path / "ws.parquet")])


def test_help_names_the_inputs_and_takes_no_settings():
    text = help_text("workflow_scripts.analyses.weight_spectra")
    assert "--weights" in text and "--spec" not in text