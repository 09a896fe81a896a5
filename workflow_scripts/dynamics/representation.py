"""Representation change per checkpoint: how far each layer of a run has moved from where it
started (the base, ``epoch0``) and from where it ends (the final epoch's checkpoint).

For each residual-stream position l (0 = embedding output ... L), the linear debiased CKA
(analysis-math.md; ``analyses.cka.estimators``) between the clips' pooled residuals at l in the
checkpoint's store and at l in the reference's store, over the ``dynamics.split`` clips. CKA pairs
rows, so the three stores must hold the same clips in the same order (each is a capture of the
same run's fold): a difference is refused, naming both stores. Each value has a permutation null:
``dynamics.permutations`` shuffles of the reference's rows (seed ``dynamics.seed``, the same
shuffles at every layer and for both references), summarised by its mean and 95th percentile.

Table (one row per reference and layer): checkpoint, step, epoch (from the checkpoint store's
attributes), reference (``base``/``final``), layer, value, null_mean, null_p95, clips. NaN where a
side has no variance at that layer (CKA is undefined there).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from workflow_scripts.cli import resolve_spec, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.train.checkpoints import checkpoint_order, parse_checkpoint

log = logging.getLogger(__name__)

ANALYSIS = "dynamics_representation"
REFERENCES = ("base", "final")
#: The checkpoint id the base reference must be: the initialisation.
BASE_CHECKPOINT = "epoch0"
ESTIMATOR = "debiased"
COLUMNS = ["checkpoint", "step", "epoch", "reference", "layer", "value", "null_mean", "null_p95", "clips"]


def checkpoint_attributes(store) -> dict:
    """The checkpoint id, optimiser steps done and epoch of a checkpoint store (its attributes),
    or an :class:`InputError` naming the store if it is not one."""
    missing = [key for key in ("checkpoint", "step", "epoch") if key not in store.attrs]
    if missing:
        raise InputError(f"{store.path} is not a checkpoint store (its attributes lack {missing}): "
                         "it should be results/acts/{run}/checkpoints/{checkpoint}.zarr")
    parse_checkpoint(store.attrs["checkpoint"])
    return {"checkpoint": str(store.attrs["checkpoint"]), "step": int(store.attrs["step"]),
            "epoch": float(store.attrs["epoch"])}


def check_same_clips(first, second) -> None:
    """Two stores must hold the same clips (utterance ids and their splits) in the same order."""
    if first.utt_ids != second.utt_ids:
        only = sorted(set(first.utt_ids) ^ set(second.utt_ids))
        detail = (f"{len(only)} clips in one only, e.g. {only[:3]}" if only
                  else "the same clips in another order")
        raise InputError(f"{first.path} and {second.path} hold different clips ({detail}); the representation "
                         "change pairs rows, so both must be captures of the same run's fold")
    first_splits, second_splits = (store.utterances()["split"].tolist() for store in (first, second))
    if first_splits != second_splits:
        raise InputError(f"{first.path} and {second.path} hold the same clips in different splits "
                         "(captured with different folds?)")


def check_references(store, base, final) -> None:
    """``base`` is the run's ``epoch0`` store, ``final`` an epoch checkpoint no earlier than
    ``store``'s (a wiring mistake otherwise), and all three hold the same clips."""
    checkpoint = checkpoint_attributes(store)["checkpoint"]
    base_id, final_id = checkpoint_attributes(base)["checkpoint"], checkpoint_attributes(final)["checkpoint"]
    if base_id != BASE_CHECKPOINT:
        raise InputError(f"--base {base.path} holds checkpoint {base_id}, not the initialisation {BASE_CHECKPOINT}")
    if parse_checkpoint(final_id)[0] != "epoch":
        raise InputError(f"--final {final.path} holds checkpoint {final_id}, not an epoch checkpoint")
    if checkpoint_order(final_id) < checkpoint_order(checkpoint):
        raise InputError(f"--final {final.path} holds checkpoint {final_id}, which is not the run's final one: "
                         f"{store.path} holds a later one ({checkpoint})")
    check_same_clips(store, base)
    check_same_clips(store, final)


def split_rows(store, split: str) -> np.ndarray:
    """Which rows of a store are ``split`` clips (at least 4: debiased HSIC needs them)."""
    chosen = (store.utterances()["split"] == split).to_numpy()
    if chosen.sum() < 4:
        raise InputError(f"dynamics.split: {store.path} has {int(chosen.sum())} {split!r} clips; the debiased "
                         "CKA of the representation change needs at least 4")
    return chosen


def layer_diagonal(xs: list, ys: list, shuffles: list[np.ndarray]) -> list[dict]:
    """Linear debiased CKA of ``xs[l]`` against ``ys[l]`` at every layer l (only the diagonal of
    the layer × layer matrix: one pair of Gram matrices each), with the null of ``shuffles``."""
    from workflow_scripts.analyses.cka.estimators import cka_matrix_from_grams, linear_grams

    (grams_x, notes_x), (grams_y, notes_y) = linear_grams(xs), linear_grams(ys)
    rows = []
    for layer, (kx, note_x, ky, note_y) in enumerate(zip(grams_x, notes_x, grams_y, notes_y)):
        result = cka_matrix_from_grams(kx[None], ky[None], ESTIMATOR, shuffles, [note_x], [note_y], centred=True)
        rows.append({"layer": layer, "value": float(result.values[0, 0]),
                     "null_mean": float(result.null_mean[0, 0]), "null_p95": float(result.null_p95[0, 0])})
    return rows


def representation_change(store, base, final, settings) -> pd.DataFrame:
    """The dynamics_representation table of checkpoint store ``store`` against the run's ``base``
    (epoch0) and ``final`` checkpoint stores (see the module docstring); ``settings`` is a
    :class:`workflow_scripts.dynamics.settings.RepresentationSettings`."""
    from workflow_scripts.analyses.cka.estimators import permutations

    check_references(store, base, final)
    chosen = split_rows(store, settings.split)
    n = int(chosen.sum())

    def layers(side) -> list[np.ndarray]:
        pooled = np.asarray(side.pooled("resid")[chosen], dtype=np.float64)
        return [pooled[:, layer] for layer in range(pooled.shape[1])]

    own = layers(store)
    shuffles = permutations(n, settings.permutations, settings.seed)
    rows = []
    for reference, side in zip(REFERENCES, (base, final)):
        rows += [{"reference": reference, **row} for row in layer_diagonal(own, layers(side), shuffles)]
    table = pd.DataFrame(rows)
    for key, value in checkpoint_attributes(store).items():
        table[key] = value
    table["clips"] = n
    return table[COLUMNS]


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import analysis_parser, with_run_columns, write_analysis
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.dynamics.settings import RepresentationSettings
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    parser = analysis_parser("workflow_scripts.dynamics.representation", __doc__)
    parser.add_argument("--base", required=True, help="the run's epoch0 checkpoint store")
    parser.add_argument("--final", required=True, help="the run's final epoch checkpoint store")
    args = parser.parse_args(argv)
    run = Run.from_wildcards(vars(args))
    settings = RepresentationSettings.from_spec(
        resolve_spec(args, lambda config: RepresentationSettings.from_config(config).as_dict()))
    store, base, final = (CaptureStore(path, kind="acts", run=run.id) for path in (args.acts, args.base, args.final))
    table = with_run_columns(representation_change(store, base, final, settings), run)
    write_analysis(table, args.out, provenance(ANALYSIS, settings.as_dict(), run=run.id, acts=args.acts,
                                               base=args.base, final=args.final))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
