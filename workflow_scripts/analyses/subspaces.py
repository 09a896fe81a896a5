"""Principal angles between the column spaces of LoRA updates ΔW = s·B·A across runs of one
comparison group: runs that share dataset, protocol, model, method and target modules, and differ
in rank, seed or fold. Do two seeds, two ranks or two folds adapt each module in the same output
directions?

For every run, every adapted (block, module) gets an orthonormal basis U of ΔW's column space in
R^d_out (``weight_spectra.delta_w_column_basis``: from the r × r core, never the d_out × d_in
matrix; k = ΔW's numerical rank, so k = r for a trained run). For two runs' bases U1 (d × k1)
and U2 (d × k2), the cosines of the min(k1, k2) principal angles are the singular values of
U1ᵀU2 (clipped to [0, 1], decreasing; ../shared/notes/analysis-math.md, "Spectra"). Reported:
the mean cos² over those angles (1: one subspace contains the other; 0: orthogonal) and the
largest cosine (1: they share a direction).

Chance level: for U2 spanning a uniformly random k2-dimensional subspace, E[U2U2ᵀ] = (k2/d)·I, so
E[Σ_i cos²θ_i] = E‖U1ᵀU2‖²_F = tr(U1ᵀ E[U2U2ᵀ] U1) = k1·k2/d, and the mean over min(k1, k2)
angles is max(k1, k2)/d. Two rank-8 updates of a 512-wide module at chance share 8/512 ≈ 0.016.

An untrained ``lora_init`` run has B = 0, so ΔW = 0 has no column space: its pairs are reported
with k = 0, NaN similarities and ``all_zero`` true.

Table: the group's dataset, protocol, model, method, targets; then run_1, run_2 (run ids,
run_1 < run_2), differs (the wildcards that differ: ``rank``, ``seed``, ``fold`` or a
combination such as ``rank+seed``), block, module, d_out, k1, k2, mean_cos2, max_cos, chance,
all_zero; one row per unordered pair of runs × (block, module) adapted in both. Figure: a
heatmap per module, rows = run pairs, columns = blocks, colour = mean cos², chance stated.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.analyses.weight_spectra import (
    adapter_matrices,
    check_adapter_matches_run,
    delta_w_column_basis,
    module_order,
)
from workflow_scripts.cli import parse_assignments, run_main
from workflow_scripts.errors import InputError, describe_offenders
from workflow_scripts.figure_style import MODULES
from workflow_scripts.runs import LORA_METHODS, Run

log = logging.getLogger(__name__)

#: What a comparison group shares, and what may differ between its runs (RUN_PATTERN's order).
GROUP_FIELDS = ("dataset", "protocol", "model", "method", "targets")
VARYING_FIELDS = ("rank", "seed", "fold")
# How a differing wildcard is written in a pair's label ("r8", "seed0", "fold1", as in run ids).
FIELD_PREFIX = {"rank": "r", "seed": "seed", "fold": "fold"}
ORTHONORMAL_TOLERANCE = 1e-8


# ---------------------------------------------------------------------------------------------
# Principal angles


def _check_basis(basis: np.ndarray, name: str) -> np.ndarray:
    basis = np.asarray(basis, dtype=np.float64)
    if basis.ndim != 2:
        raise ValueError(f"{name}: a basis is a d × k matrix, got shape {basis.shape}")
    gram = basis.T @ basis
    if not np.allclose(gram, np.eye(basis.shape[1]), atol=ORTHONORMAL_TOLERANCE):
        raise ValueError(f"{name}: the columns are not orthonormal")
    return basis


def principal_angles(basis_1: np.ndarray, basis_2: np.ndarray) -> np.ndarray:
    """The cosines of the principal angles between the subspaces spanned by two orthonormal
    bases (d × k1, d × k2): the min(k1, k2) singular values of U1ᵀU2, clipped to [0, 1],
    decreasing (float64). Empty when either subspace is {0}."""
    u1, u2 = _check_basis(basis_1, "basis_1"), _check_basis(basis_2, "basis_2")
    if u1.shape[0] != u2.shape[0]:
        raise ValueError(f"the subspaces live in different spaces: R^{u1.shape[0]} and R^{u2.shape[0]}")
    if u1.shape[1] == 0 or u2.shape[1] == 0:
        return np.zeros(0)
    # Rounding can put a cosine a few ulps above 1 (an angle of exactly 0).
    return np.clip(np.linalg.svd(u1.T @ u2, compute_uv=False), 0.0, 1.0)


def chance_mean_cos2(k1: int, k2: int, d: int) -> float:
    """The expected mean cos² over the min(k1, k2) principal angles between a fixed k1- and a
    uniformly random k2-dimensional subspace of R^d: max(k1, k2) / d (module docstring)."""
    if min(k1, k2) == 0:
        return math.nan
    return max(k1, k2) / d


def subspace_similarity(basis_1: np.ndarray, basis_2: np.ndarray) -> dict:
    """k1, k2, mean_cos2 (mean cos² over the min(k1, k2) principal angles), max_cos (the largest
    cosine) and chance (the mean_cos2 of random subspaces of the same dimensions); the
    similarities are NaN when either subspace is {0}."""
    cosines = principal_angles(basis_1, basis_2)
    d, k1, k2 = np.shape(basis_1)[0], np.shape(basis_1)[1], np.shape(basis_2)[1]
    empty = cosines.size == 0
    return {
        "k1": int(k1), "k2": int(k2),
        "mean_cos2": math.nan if empty else float(np.mean(cosines**2)),
        "max_cos": math.nan if empty else float(cosines[0]),
        "chance": chance_mean_cos2(k1, k2, d),
    }


# ---------------------------------------------------------------------------------------------
# A comparison group of runs


def differing_fields(run_1: Run, run_2: Run) -> list[str]:
    """The wildcards (rank, seed, fold) in which two runs of a group differ."""
    return [name for name in VARYING_FIELDS if getattr(run_1, name) != getattr(run_2, name)]


def comparison_group(runs: list[Run]) -> dict:
    """The fields the runs share (dataset ... targets); InputError if they are not one LoRA group."""
    groups = sorted({tuple(getattr(run, f) for f in GROUP_FIELDS) for run in runs})
    if len(groups) > 1:
        raise InputError(describe_offenders(
            f"the runs form {len(groups)} comparison groups, not one (a group shares "
            f"{', '.join(GROUP_FIELDS)})", ["/".join(group) for group in groups]))
    group = dict(zip(GROUP_FIELDS, groups[0]))
    if group["method"] not in LORA_METHODS:
        raise InputError(f"method {group['method']!r} has no LoRA adapter; subspaces compare runs of "
                         f"{list(LORA_METHODS)}")
    return group


def _column_bases(run: Run, weights_dir: str | Path) -> dict[tuple[int, str], object]:
    matrices, scaling, rank = adapter_matrices(weights_dir)
    check_adapter_matches_run(weights_dir, matrices, rank, run)
    return {key: delta_w_column_basis(a, b, scaling) for key, (a, b) in matrices.items()}


COLUMNS = [*GROUP_FIELDS, "run_1", "run_2", "differs", "block", "module", "d_out", "k1", "k2", "mean_cos2",
           "max_cos", "chance", "all_zero"]


def group_subspaces(runs: dict[str, str | Path]) -> pd.DataFrame:
    """The subspace table (module docstring) of a comparison group: ``{run id: weights/ folder}``."""
    if len(runs) < 2:
        raise InputError(f"a comparison group needs two runs to compare, got {len(runs)} "
                         f"({', '.join(runs) or 'none'}); give every run of the group")
    parsed = {run_id: Run.from_id(run_id) for run_id in runs}
    group = comparison_group(list(parsed.values()))
    bases = {}
    for run_id in sorted(runs):
        bases[run_id] = _column_bases(parsed[run_id], runs[run_id])
        log.info("read %s (%d adapted modules)", run_id, len(bases[run_id]))

    rows = []
    for id_1, id_2 in itertools.combinations(sorted(runs), 2):
        differs = "+".join(differing_fields(parsed[id_1], parsed[id_2]))
        shared = sorted(set(bases[id_1]) & set(bases[id_2]), key=module_order)
        for block, module in shared:
            first, second = bases[id_1][(block, module)], bases[id_2][(block, module)]
            if first.basis.shape[0] != second.basis.shape[0]:
                raise InputError(f"block {block} {module}: ΔW has {first.basis.shape[0]} output rows in "
                                 f"{id_1} but {second.basis.shape[0]} in {id_2} (runs of different models?)")
            similarity = subspace_similarity(first.basis, second.basis)
            rows.append({**group, "run_1": id_1, "run_2": id_2, "differs": differs, "block": block,
                         "module": module, "d_out": first.basis.shape[0], **similarity,
                         "all_zero": bool(first.all_zero or second.all_zero)})
    if not rows:
        raise InputError(describe_offenders("the runs share no adapted (block, module) to compare",
                                            sorted(runs)))
    table = pd.DataFrame(rows, columns=COLUMNS)
    zero = table.loc[table["all_zero"], ["run_1", "run_2"]].drop_duplicates()
    if len(zero):
        log.warning("%d run pairs include a ΔW = 0 (B = 0, e.g. lora_init): their similarities are NaN",
                    len(zero))
    return table


# ---------------------------------------------------------------------------------------------
# Figure and entry point


def pair_label(run_1: str, run_2: str) -> str:
    """A pair of runs named by the wildcards that differ, e.g. ``fold1 vs fold2`` or
    ``r8 seed0 vs r16 seed1``."""
    first, second = Run.from_id(run_1), Run.from_id(run_2)
    fields = differing_fields(first, second)

    def name(run: Run) -> str:
        return " ".join(f"{FIELD_PREFIX[f]}{getattr(run, f)}" for f in fields)

    return f"{name(first)} vs {name(second)}"


def _chance_text(chance: pd.Series) -> str:
    values = sorted(chance.dropna().unique())
    if not values:
        return "chance undefined (ΔW = 0)"
    if len(values) == 1:
        return f"chance max(k1,k2)/d = {values[0]:.3g}"
    return f"chance max(k1,k2)/d = {values[0]:.3g}–{values[-1]:.3g}"


def subspaces_figure(table: pd.DataFrame, title: str):
    """A heatmap per module: rows = run pairs (named by what differs), columns = blocks, colour =
    mean cos² over the principal angles; blank cells are pairs with a ΔW = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    modules = [m for m in MODULES if m in set(table["module"])]
    pairs = table[["run_1", "run_2"]].drop_duplicates().sort_values(["run_1", "run_2"])
    labels = {(a, b): pair_label(a, b) for a, b in pairs.itertuples(index=False)}
    n_blocks = table["block"].nunique()
    # The colour scale runs from 0 to the largest value (or chance, if larger): nothing is clipped.
    # (0 to 1 when every ΔW is zero and there is nothing to scale to.)
    shown = [*table["mean_cos2"].dropna(), *table["chance"].dropna()]
    top = float(max(shown)) if shown and max(shown) > 0 else 1.0
    annotate = len(labels) <= 40 and n_blocks <= 16
    height = 2.6 + 0.32 * len(labels)
    width = max(3.5, 0.55 * n_blocks + 2.6)
    figure, axes = plt.subplots(1, len(modules), figsize=(width * len(modules), height), squeeze=False)
    for axis, module in zip(axes[0], modules):
        part = table[table["module"] == module].copy()
        part["pair"] = [labels[(a, b)] for a, b in zip(part["run_1"], part["run_2"])]
        grid = part.pivot_table(index="pair", columns="block", values="mean_cos2", dropna=False,
                                aggfunc="first")
        grid = grid.reindex([labels[key] for key in labels])
        sns.heatmap(grid, ax=axis, vmin=0.0, vmax=top, cmap="viridis", annot=annotate, fmt=".3f",
                    annot_kws={"fontsize": 7}, cbar_kws={"label": "mean cos²"})
        if part["mean_cos2"].isna().all():
            axis.text(0.5, 0.5, "no column space: ΔW = 0 (B = 0)", transform=axis.transAxes, ha="center",
                      va="center")
        axis.set_xlabel("encoder block")
        axis.set_ylabel("run pair")
        axis.set_title(f"{module}\n{_chance_text(part['chance'])}", fontsize=9)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import OUT_HELP, save_figure, write_analysis
    from workflow_scripts.cli import entry_parser
    from workflow_scripts.provenance import provenance

    parser = entry_parser("workflow_scripts.analyses.subspaces", __doc__, settings=False)
    parser.add_argument("--run", action="append", required=True, metavar="RUN_ID=WEIGHTS_DIR",
                        help="a run of the comparison group and its weights/ folder (repeat for every run)")
    parser.add_argument("--out", required=True, help=OUT_HELP)
    args = parser.parse_args(argv)
    runs = parse_assignments(args.run, "--run", "RUN_ID=WEIGHTS_DIR")
    table = group_subspaces(runs)
    group = "/".join(str(table[f].iloc[0]) for f in GROUP_FIELDS)
    record = provenance("subspaces", {}, group=group, runs=runs)
    write_analysis(table, args.out, record)
    save_figure(subspaces_figure(table, f"principal angles between ΔW column spaces\n{group}"),
                Path(args.out).with_suffix(".png"))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
