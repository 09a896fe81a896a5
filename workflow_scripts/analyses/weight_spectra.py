"""Weight spectra of a LoRA run: the singular values of each adapted module's update
ΔW = s·B·A, per encoder block and module.

PEFT saves a LoRA run's adapter in its ``weights/`` folder: ``adapter_config.json`` (rank r,
``lora_alpha``, ``use_rslora``, target modules) and ``adapter_model.safetensors`` with, per
adapted module, A (``...lora_A.weight``, r × d_in) and B (``...lora_B.weight``, d_out × r); the
head's weights (projector, classifier) in the same file are ignored. The scaling is
s = lora_alpha / r, or lora_alpha / √r with ``use_rslora``. Every number is computed in float64.

The d_out × d_in matrix ΔW is never formed: with the reduced QR factorisations B = Q_B·R_B and
Aᵀ = Q_A·R_A, ΔW = Q_B·(s·R_B·R_Aᵀ)·Q_Aᵀ, and since Q_B and Q_A have orthonormal columns the
singular values of ΔW are those of the r × r core s·R_B·R_Aᵀ. An orthonormal basis of ΔW's
column space is Q_B times the core's leading left singular vectors (``subspaces`` compares such
bases across runs).

Statistics of each spectrum σ_1 ≥ ... ≥ σ_r (../shared/notes/analysis-math.md, "Spectra"):
cumulative energy E_k = Σ_{i≤k} σ_i² / Σ σ_i²; k90 = the smallest k with E_k ≥ 0.9 (1e-12
tolerance); entropy effective rank exp(−Σ p_i log p_i) with p_i = σ_i / Σ σ_j; stable rank
Σ σ_i² / σ_1²; Frobenius norm √(Σ σ_i²); spectral norm σ_1. An untrained ``lora_init`` run has
B = 0, so ΔW = 0: its σ and norms are 0, k90, effective and stable rank are NaN (undefined, not
divided by zero) and ``all_zero`` is true.

Table: block, module, statistic, k, value, all_zero: one ``sigma`` row per k = 1..r, and one row
(k empty) for each of ``k90``, ``effective_rank``, ``stable_rank``, ``frobenius_norm``,
``spectral_norm``; with the run's wildcards as leading columns. Figure: per module, σ_k of ΔW
(log scale) against k, a line per block, and below it k90 and effective rank per block.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.cli import run_main
from workflow_scripts.errors import InputError, describe_offenders
from workflow_scripts.figure_style import MODULES

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FROZEN_HEAD = "head.safetensors"
SCALAR_STATISTICS = ("k90", "effective_rank", "stable_rank", "frobenius_norm", "spectral_norm")
# A LoRA factor's key as PEFT saves it: the attention projections under ``self_attn``, the MLP's
# fc1/fc2 directly under the layer; newer PEFT drops the adapter name, older keeps it
# (``lora_A.default.weight``).
LORA_KEY = re.compile(
    r"(?:^|\.)encoder\.layers\.(?P<block>\d+)\."
    r"(?:self_attn\.(?P<attention>q_proj|k_proj|v_proj|out_proj)|(?P<mlp>fc1|fc2))"
    r"\.lora_(?P<factor>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$"
)
ENERGY_THRESHOLD = 0.9
ENERGY_TOLERANCE = 1e-12


# ---------------------------------------------------------------------------------------------
# Reading an adapter


def module_order(key: tuple[int, str]) -> tuple[int, int]:
    """Sort key of a (block, module): by block, then in :data:`MODULES` order."""
    return key[0], MODULES.index(key[1])


def _read_adapter_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable adapter config ({error})") from error
    if not isinstance(config, dict):
        raise InputError(f"{path}: not a JSON object")
    missing = [key for key in ("r", "lora_alpha") if key not in config]
    if missing:
        raise InputError(f"{path}: has no {' or '.join(missing)} (not a PEFT LoRA adapter config?)")
    rank, alpha = config["r"], config["lora_alpha"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise InputError(f"{path}: r = {rank!r} is not a positive integer")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise InputError(f"{path}: lora_alpha = {alpha!r} is not a number")
    # Per-module ranks or alphas and DoRA's magnitude vector would each change what ΔW is;
    # loralens never writes them, so refuse rather than report a wrong spectrum.
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise InputError(f"{path}: {key} = {config[key]!r}; per-module ranks or alphas are not supported")
    if config.get("use_dora"):
        raise InputError(f"{path}: use_dora is true; ΔW of a DoRA adapter is not s·B·A")
    return config


def adapter_scaling(config: dict) -> float:
    """s = lora_alpha / r, or lora_alpha / √r when the adapter uses rank-stabilised LoRA."""
    rank = config["r"]
    return float(config["lora_alpha"]) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError, TypeError) as error:
        raise InputError(f"{path}: not a readable safetensors file ({error})") from error


Factors = dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]


def lora_factors(tensors: dict[str, np.ndarray], source: str | Path, rank: int) -> Factors:
    """The LoRA factors among ``tensors`` (name -> array, PEFT's names), in float64:
    ``{(block, module): (A [r, d_in], B [d_out, r])}`` sorted by block, then module in
    :data:`MODULES` order; other tensors (the head) are ignored. An :class:`InputError` names
    ``source`` (the file they came from) for unknown LoRA keys, a missing factor, shapes that are
    not rank ``rank``, or non-finite values."""
    factors: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    unknown = []
    for key, tensor in tensors.items():
        match = LORA_KEY.search(key)
        if match is None:
            if ".lora_" in key:  # a LoRA factor of a module this analysis does not know
                unknown.append(key)
            continue  # the head (projector, classifier) saved beside the adapter
        module = match["attention"] or match["mlp"]
        factors.setdefault((int(match["block"]), module), {})[match["factor"]] = tensor
    if unknown:
        raise InputError(describe_offenders(
            f"{source}: {len(unknown)} LoRA keys are not encoder {'/'.join(MODULES)} factors", unknown))
    if not factors:
        raise InputError(f"{source}: no LoRA factors (keys like "
                         "'...encoder.layers.0.self_attn.v_proj.lora_A.weight')")

    problems = []
    matrices = {}
    for (block, module), pair in sorted(factors.items(), key=lambda item: module_order(item[0])):
        name = f"block {block} {module}"
        if set(pair) != {"A", "B"}:
            problems.append(f"{name}: lora_{'B' if 'A' in pair else 'A'} is missing")
            continue
        a, b = (np.asarray(pair[f], dtype=np.float64) for f in "AB")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            problems.append(f"{name}: A {a.shape} and B {b.shape} are not r × d_in and d_out × r "
                            f"with r = {rank}")
            continue
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            problems.append(f"{name}: non-finite values (a diverged run?)")
            continue
        matrices[(block, module)] = (a, b)
    if problems:
        raise InputError(describe_offenders(
            f"{source}: {len(problems)} adapted modules are malformed", problems))
    return matrices


def adapter_matrices(weights_dir: str | Path) -> tuple[Factors, float, int]:
    """A LoRA run's factors, in float64: ``{(block, module): (A [r, d_in], B [d_out, r])}``
    (sorted by block, then module in :data:`MODULES` order), the scaling s and the rank r."""
    folder = Path(weights_dir)
    weights_path, config_path = folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG
    if not weights_path.is_file():
        if (folder / FROZEN_HEAD).is_file():
            raise InputError(f"{weights_path}: missing; {folder} holds only {FROZEN_HEAD} (a run without "
                             "LoRA, e.g. frozen), so it has no ΔW")
        raise InputError(f"{weights_path}: missing (no LoRA adapter in {folder})")
    if not config_path.is_file():
        raise InputError(f"{config_path}: missing (the adapter's rank and alpha are there)")
    config = _read_adapter_config(config_path)
    rank = config["r"]
    matrices = lora_factors(_load_tensors(weights_path), weights_path, rank)
    return matrices, adapter_scaling(config), rank


def adapter_target_modules(weights_dir: str | Path) -> list[str]:
    """The adapter config's ``target_modules`` (a list; PEFT may also store one name or a regex)."""
    path = Path(weights_dir) / ADAPTER_CONFIG
    targets = _read_adapter_config(path).get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise InputError(f"{path}: target_modules = {targets!r} is not a list of module names")
    return targets


def check_adapter_matches_run(weights_dir: str | Path, matrices: dict, rank: int, run) -> None:
    """Refuse weights that are not the run's: another rank, or other target modules (in the
    config, or among the adapted modules of the file)."""
    from workflow_scripts.runs import LORA_METHODS

    folder = Path(weights_dir)
    if run.method not in LORA_METHODS:
        raise InputError(f"run {run.id}: method {run.method!r} has no LoRA adapter; "
                         f"weight spectra need one of {list(LORA_METHODS)}")
    if rank != run.rank:
        raise InputError(f"{folder / ADAPTER_CONFIG}: r = {rank}, but run {run.id} has rank {run.rank}")
    expected = sorted(run.target_modules)
    configured = sorted(adapter_target_modules(folder))
    if configured != expected:
        raise InputError(f"{folder / ADAPTER_CONFIG}: target_modules {configured}, but run {run.id} "
                         f"targets {expected}")
    adapted = sorted({module for _, module in matrices})
    if adapted != expected:
        raise InputError(f"{folder / ADAPTER_WEIGHTS}: adapts {adapted}, but run {run.id} targets {expected}")


# ---------------------------------------------------------------------------------------------
# ΔW through its r × r core


def _check_factors(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise ValueError(f"A {a.shape} and B {b.shape} are not r × d_in and d_out × r")
    return a, b


def _core(a: np.ndarray, b: np.ndarray, scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """Q_B and the core s·R_B·R_Aᵀ, so that ΔW = Q_B · core · Q_Aᵀ."""
    a, b = _check_factors(a, b)
    q_b, r_b = np.linalg.qr(b)  # reduced: Q_B d_out × min(d_out, r), R_B min(d_out, r) × r
    _, r_a = np.linalg.qr(a.T)  # R_A min(d_in, r) × r
    return q_b, float(scaling) * (r_b @ r_a.T)


def delta_w_singular_values(a: np.ndarray, b: np.ndarray, scaling: float) -> np.ndarray:
    """The singular values of ΔW = scaling·B·A (decreasing, float64), from the r × r core."""
    _, core = _core(a, b, scaling)
    return np.linalg.svd(core, compute_uv=False)


def numerical_rank(singular_values: np.ndarray, shape: tuple[int, int]) -> int:
    """How many singular values exceed σ_1·max(shape)·eps (NumPy's ``matrix_rank`` tolerance);
    0 for a zero matrix."""
    sigma = np.asarray(singular_values, dtype=np.float64)
    if sigma.size == 0 or not sigma[0] > 0:
        return 0
    return int(np.sum(sigma > sigma[0] * max(shape) * np.finfo(np.float64).eps))


@dataclass(frozen=True)
class ColumnBasis:
    """An orthonormal basis (d_out × k) of ΔW's column space, ΔW's singular values, and whether
    ΔW is identically zero (then the basis is empty, d_out × 0)."""

    basis: np.ndarray
    singular_values: np.ndarray
    all_zero: bool


def delta_w_column_basis(a: np.ndarray, b: np.ndarray, scaling: float, k: int | None = None) -> ColumnBasis:
    """The top ``k`` directions of ΔW = scaling·B·A's column space: Q_B times the core's leading
    left singular vectors. ``k`` defaults to ΔW's numerical rank (0 when B = 0)."""
    a, b = _check_factors(a, b)
    q_b, core = _core(a, b, scaling)
    left, sigma, _ = np.linalg.svd(core, full_matrices=False)
    all_zero = not np.any(sigma > 0)
    if k is None:
        k = numerical_rank(sigma, (b.shape[0], a.shape[1]))
    if not 0 <= k <= left.shape[1]:
        raise ValueError(f"k = {k}: ΔW's column space has at most {left.shape[1]} directions here")
    return ColumnBasis(basis=q_b @ left[:, :k], singular_values=sigma, all_zero=all_zero)


def spectrum_statistics(singular_values: np.ndarray) -> dict[str, float]:
    """k90, effective_rank, stable_rank (the activation spectra's definitions, spectra.py),
    frobenius_norm, spectral_norm of a decreasing spectrum; for a zero spectrum the norms are 0
    and the three ranks NaN."""
    from workflow_scripts.analyses import spectra

    sigma = np.asarray(singular_values, dtype=np.float64)
    shared = spectra.spectrum_statistics(sigma)
    return {**{name: shared[name] for name in ("k90", "effective_rank", "stable_rank")},
            "frobenius_norm": float(np.sqrt(np.sum(sigma**2))), "spectral_norm": float(sigma[0]) if sigma.size else 0.0}


def spectra_table(matrices: Factors, scaling: float) -> pd.DataFrame:
    """Tidy: block, module, statistic, k (1-based for ``sigma``, empty for the scalars), value,
    all_zero (ΔW of that module is identically zero)."""
    rows = []
    for (block, module), (a, b) in matrices.items():
        sigma = delta_w_singular_values(a, b, scaling)
        all_zero = not np.any(sigma > 0)
        rows += [(block, module, "sigma", k, value, all_zero) for k, value in enumerate(sigma, start=1)]
        rows += [(block, module, name, None, value, all_zero)
                 for name, value in spectrum_statistics(sigma).items()]
    table = pd.DataFrame(rows, columns=["block", "module", "statistic", "k", "value", "all_zero"])
    table["k"] = table["k"].astype("Int64")
    table["value"] = table["value"].astype(np.float64)
    return table


def run_weight_spectra(weights_dir: str | Path) -> pd.DataFrame:
    """The weight-spectra table of one run's ``weights/`` folder."""
    matrices, scaling, _ = adapter_matrices(weights_dir)
    return spectra_table(matrices, scaling)


# ---------------------------------------------------------------------------------------------
# Figure and entry point


def weight_spectra_figure(table: pd.DataFrame, title: str):
    """Per module (columns): σ_k of ΔW on a log scale against k, a line per block; below, k90 and
    effective rank per block. Modules whose ΔW is zero are said so instead of plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = [m for m in MODULES if m in set(table["module"])]
    blocks = sorted(table["block"].unique())
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(blocks), 1)))
    figure, axes = plt.subplots(2, len(modules), figsize=(4.2 * len(modules), 6.4), squeeze=False)
    for column, module in enumerate(modules):
        part = table[table["module"] == module]
        spectrum_axis, rank_axis = axes[0, column], axes[1, column]
        zero_blocks = []
        for colour, block in zip(colours, blocks):
            sigma = part[(part["block"] == block) & (part["statistic"] == "sigma")]
            if sigma.empty:
                continue
            if sigma["all_zero"].iloc[0]:
                zero_blocks.append(int(block))
                continue
            positive = sigma[sigma["value"] > 0]  # a log axis cannot show exact zeros
            spectrum_axis.plot(positive["k"].astype(int), positive["value"], marker="o", markersize=3,
                               color=colour, label=f"block {block}")
        if spectrum_axis.lines:
            spectrum_axis.set_yscale("log")
        spectrum_axis.set_xlabel("k")
        spectrum_axis.set_ylabel("σ_k of ΔW")
        spectrum_axis.set_title(module)
        if zero_blocks:
            spectrum_axis.text(0.5, 0.5, f"ΔW = 0 in blocks {zero_blocks}", transform=spectrum_axis.transAxes,
                               ha="center", va="center")
        if spectrum_axis.lines:
            spectrum_axis.legend(fontsize=7, ncol=2 if len(blocks) > 8 else 1)
        for name, marker in (("k90", "o"), ("effective_rank", "s")):
            values = part[part["statistic"] == name].sort_values("block")
            rank_axis.plot(values["block"], values["value"], marker=marker, label=name.replace("_", " "))
        if part.loc[part["statistic"] == "k90", "value"].isna().all():
            rank_axis.text(0.5, 0.5, "undefined: ΔW = 0", transform=rank_axis.transAxes, ha="center",
                           va="center")
        rank_axis.set_xticks(blocks)
        rank_axis.set_xlabel("encoder block")
        rank_axis.set_ylabel("rank measure of ΔW")
        rank_axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import analysis_parser, publish
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    parser = analysis_parser("workflow_scripts.analyses.weight_spectra", __doc__, acts=False, settings=False)
    parser.add_argument("--weights", required=True, help="the run's weights/ folder (PEFT adapter)")
    args = parser.parse_args(argv)
    run = Run.from_wildcards(vars(args))
    matrices, scaling, rank = adapter_matrices(args.weights)
    check_adapter_matches_run(args.weights, matrices, rank, run)
    record = provenance("weight_spectra", {}, run=run.id, weights=str(args.weights), scaling=scaling)
    publish(spectra_table(matrices, scaling), run, args.out, record, weight_spectra_figure,
            f"singular values of ΔW = s·B·A (s = {scaling:g})")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
