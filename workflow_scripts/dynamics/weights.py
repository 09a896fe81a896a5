"""Weight dynamics of a LoRA run: how each adapted module's update ΔW_t = s·B_t·A_t at checkpoint t
compares with itself at the final checkpoint T.

Both checkpoints are files the run kept (``results/runs/{run}/checkpoints/{id}.safetensors``,
``workflow_scripts.train.checkpoints``); the scaling s is the checkpoint's metadata. Every number
is float64 and no d_out × d_in matrix is formed (no torch either: safetensors.numpy reads the files):

* ``frobenius``, ``stable_rank``, ``effective_rank``, ``k90``: the spectrum of ΔW_t from its
  r × r core (``analyses.weight_spectra``: same definitions as the weight spectra of a run's
  final adapter);
* ``cos_to_final``: cos(vec ΔW_t, vec ΔW_T) = ⟨ΔW_t, ΔW_T⟩_F / (‖ΔW_t‖_F ‖ΔW_T‖_F), with
  ⟨s_t B_t A_t, s_T B_T A_T⟩_F = s_t s_T trace((B_tᵀB_T)(A_T A_tᵀ)) (the trace's cyclic
  property; both factors are r × r) and ‖ΔW‖²_F = s² trace((BᵀB)(AAᵀ)) the same way;
* ``subspace_mean_cos2``, ``subspace_min_cos``: the principal angles between the column spaces
  of ΔW_t and ΔW_T (``analyses.subspaces.principal_angles``; each basis spans ΔW's numerical
  rank, r for a trained module): the mean cos² over the angles, and the cosine of the largest
  angle (1: the spaces coincide; 0: some direction of one is orthogonal to the other).

An untrained update (B = 0, epoch0) has frobenius 0 and NaN for everything else (undefined, not
divided by zero); so does any cos or subspace statistic against a ΔW_T = 0.

A ``full`` run keeps whole weight matrices, not factors: its ΔW_t = W_t − W0 would need dense
SVDs and has no rank r to compare column spaces at; it is refused with an InputError.

Table (dynamics_weights): the run's columns, checkpoint, step, epoch, block, module, statistic,
value; one row per (block, module, statistic). No figure (the dynamics summaries draw them).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.analyses.subspaces import principal_angles
from workflow_scripts.analyses.weight_spectra import (
    Factors,
    delta_w_column_basis,
    delta_w_singular_values,
    lora_factors,
    spectrum_statistics,
)
from workflow_scripts.cli import run_main
from workflow_scripts.errors import InputError
from workflow_scripts.train.checkpoints import checkpoint_file, load_checkpoint_tensors, run_checkpoint

log = logging.getLogger(__name__)

STATISTICS = ("frobenius", "stable_rank", "effective_rank", "k90", "cos_to_final", "subspace_mean_cos2",
              "subspace_min_cos")
#: The columns a table adds to the run's: which checkpoint, and how far into training it is.
CHECKPOINT_COLUMNS = ("checkpoint", "step", "epoch")


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint


def checkpoint_factors(run, run_dir: str | Path, checkpoint: str) -> tuple[Factors, float, dict]:
    """A LoRA run's factors at ``checkpoint`` (float64, ``{(block, module): (A, B)}``), its scaling
    and the checkpoint's metadata. InputError for a checkpoint the run did not keep (naming the
    run, the checkpoint and training.checkpoints), a run that is not ``lora``, or a file that is
    not this run's."""
    from safetensors import SafetensorError

    if run.method == "full":
        raise InputError(f"run {run.id}: method full keeps whole weight matrices, not LoRA factors; "
                         "the weight dynamics and intruder dimensions support lora runs only")
    if run.method != "lora":
        raise InputError(f"run {run.id}: method {run.method!r} keeps no checkpoints (only lora and full "
                         "runs train and keep them)")
    path = checkpoint_file(run_dir, checkpoint)
    try:
        path, metadata = run_checkpoint(run.id, run_dir, checkpoint)
        tensors = load_checkpoint_tensors(path, "np")
    except (OSError, SafetensorError, ValueError, KeyError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{path}: not a readable checkpoint ({error})") from error
    if metadata["scaling"] is None or not math.isfinite(metadata["scaling"]):
        raise InputError(f"{path}: scaling {metadata['scaling']!r} is not a number (not a LoRA checkpoint?)")
    return lora_factors(tensors, path, run.rank), metadata["scaling"], metadata


def checkpoint_columns(metadata: dict) -> dict:
    """checkpoint, step and epoch of a table's rows, from the checkpoint's metadata."""
    return {"checkpoint": metadata["checkpoint"], "step": int(metadata["step"]),
            "epoch": float(metadata["epoch"])}


# ---------------------------------------------------------------------------------------------
# The statistics of one module


def frobenius_inner(a_1: np.ndarray, b_1: np.ndarray, s_1: float, a_2: np.ndarray, b_2: np.ndarray,
                    s_2: float) -> float:
    """⟨s_1·B_1·A_1, s_2·B_2·A_2⟩_F = s_1·s_2·trace((B_1ᵀB_2)(A_2A_1ᵀ)), without the d_out × d_in
    products (A_i r_i × d_in, B_i d_out × r_i; the ranks may differ)."""
    a_1, b_1, a_2, b_2 = (np.asarray(m, dtype=np.float64) for m in (a_1, b_1, a_2, b_2))
    if a_1.shape[1] != a_2.shape[1] or b_1.shape[0] != b_2.shape[0]:
        raise ValueError(f"ΔW_1 is {b_1.shape[0]} × {a_1.shape[1]} but ΔW_2 {b_2.shape[0]} × {a_2.shape[1]}")
    # trace(XY) = Σ_ij X_ij Y_ji: no need for the product's off-diagonal.
    return float(s_1) * float(s_2) * float(np.sum((b_1.T @ b_2) * (a_2 @ a_1.T).T))


def update_cosine(a_t, b_t, s_t, a_final, b_final, s_final) -> float:
    """cos(vec ΔW_t, vec ΔW_T) in [−1, 1]; NaN when either update is zero."""
    norm_t = math.sqrt(max(frobenius_inner(a_t, b_t, s_t, a_t, b_t, s_t), 0.0))
    norm_final = math.sqrt(max(frobenius_inner(a_final, b_final, s_final, a_final, b_final, s_final), 0.0))
    if not (norm_t > 0 and norm_final > 0):
        return math.nan
    inner = frobenius_inner(a_t, b_t, s_t, a_final, b_final, s_final)
    return float(np.clip(inner / (norm_t * norm_final), -1.0, 1.0))


def column_space_angles(a_t, b_t, s_t, a_final, b_final, s_final) -> dict[str, float]:
    """subspace_mean_cos2 and subspace_min_cos between the column spaces of ΔW_t and ΔW_T (each
    spanning its numerical rank); NaN when either is zero."""
    first = delta_w_column_basis(a_t, b_t, s_t)
    second = delta_w_column_basis(a_final, b_final, s_final)
    cosines = principal_angles(first.basis, second.basis)
    if cosines.size == 0:
        return {"subspace_mean_cos2": math.nan, "subspace_min_cos": math.nan}
    return {"subspace_mean_cos2": float(np.mean(cosines**2)), "subspace_min_cos": float(cosines[-1])}


def module_statistics(a_t, b_t, s_t, a_final, b_final, s_final) -> dict[str, float]:
    """Every statistic of :data:`STATISTICS` for one module (module docstring)."""
    spectrum = spectrum_statistics(delta_w_singular_values(a_t, b_t, s_t))
    return {
        "frobenius": spectrum["frobenius_norm"],
        "stable_rank": spectrum["stable_rank"],
        "effective_rank": spectrum["effective_rank"],
        "k90": spectrum["k90"],
        "cos_to_final": update_cosine(a_t, b_t, s_t, a_final, b_final, s_final),
        **column_space_angles(a_t, b_t, s_t, a_final, b_final, s_final),
    }


def weights_table(factors: Factors, scaling: float, final_factors: Factors, final_scaling: float,
                  source: str = "the checkpoint", final_source: str = "the final checkpoint") -> pd.DataFrame:
    """Tidy: block, module, statistic, value; one row per adapted module of ``factors`` and
    statistic. Both checkpoints must adapt the same modules."""
    if set(factors) != set(final_factors):
        only = sorted(set(factors) ^ set(final_factors))
        raise InputError(f"{source} and {final_source} adapt different modules (in one only: {only})")
    rows = []
    for (block, module), (a_t, b_t) in factors.items():
        a_final, b_final = final_factors[(block, module)]
        values = module_statistics(a_t, b_t, scaling, a_final, b_final, final_scaling)
        rows += [(block, module, name, values[name]) for name in STATISTICS]
    table = pd.DataFrame(rows, columns=["block", "module", "statistic", "value"])
    table["block"] = table["block"].astype(np.int64)
    table["value"] = table["value"].astype(np.float64)
    return table


def run_weights_table(run, run_dir: str | Path, checkpoint: str, final: str) -> tuple[pd.DataFrame, dict]:
    """The dynamics_weights table of ``run`` at ``checkpoint`` against ``final`` (without the
    run's columns) and the checkpoint's metadata."""
    factors, scaling, metadata = checkpoint_factors(run, run_dir, checkpoint)
    final_factors, final_scaling, _ = checkpoint_factors(run, run_dir, final)
    table = weights_table(factors, scaling, final_factors, final_scaling,
                          f"{run.id} {checkpoint}", f"{run.id} {final}")
    for column, value in checkpoint_columns(metadata).items():
        table.insert(list(CHECKPOINT_COLUMNS).index(column), column, value)
    return table, metadata


# ---------------------------------------------------------------------------------------------
# Entry point


def add_checkpoint_arguments(parser) -> None:
    """The run's folder and the checkpoint analysed (shared with the intruder entry point)."""
    parser.add_argument("--run-dir", required=True, help="the run's folder, results/runs/{run}")
    parser.add_argument("--checkpoint-id", required=True,
                        help="the checkpoint analysed (epoch<N> or step<S>)")


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import analysis_parser, with_run_columns, write_analysis
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    parser = analysis_parser("workflow_scripts.dynamics.weights", __doc__, acts=False, settings=False)
    add_checkpoint_arguments(parser)
    parser.add_argument("--final-id", required=True, help="the run's final checkpoint (its last epoch)")
    args = parser.parse_args(argv)
    run = Run.from_wildcards(vars(args))
    table, metadata = run_weights_table(run, args.run_dir, args.checkpoint_id, args.final_id)
    record = provenance("dynamics_weights", {}, run=run.id, run_dir=str(args.run_dir),
                        checkpoint=args.checkpoint_id, final=args.final_id, scaling=metadata["scaling"])
    write_analysis(with_run_columns(table, run), args.out, record)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
