"""The two store-level analyses: ``gradient_pairings`` (LoRA A/B outputs and gradients within
and across a trained run and its untrained references, per (block, module) and level: frame,
utterance, flattened) and ``layer_cka`` (every layer of one run's pooled residuals against every
layer of another's), their checks of the stores and the tables' columns."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from workflow_scripts.analyses.cka.estimators import layer_matrices, null_summary, permutations
from workflow_scripts.analyses.cka.legacy import (
    LEGACY_ESTIMATOR,
    legacy_center,
    legacy_cka_centred,
    legacy_gram,
)
from workflow_scripts.analyses.cka.moments import CrossMoments, rows_per_block
from workflow_scripts.analyses.cka.settings import cka_settings, kernel_views
from workflow_scripts.analyses.cka.stores import (
    QUANTITIES,
    Side,
    basis_rows,
    frame_moments,
    null_moments,
    read_side,
    row_blocks,
    split_residuals,
)
from workflow_scripts.errors import InputError

log = logging.getLogger(__name__)

TRAINED = "trained"
REFERENCES = ("lora_random", "lora_init")
#: The paper's four CKA series (notebook cell 29): (side a, side b, kernel). "Untrained" there is
#: a LoRA re-initialised N(0, 0.02): our lora_random.
PAPER_SERIES = {
    "learned_layer_similarities": (("trained", "U"), ("lora_random", "U"), "linear"),
    "random_layer_similarities": (("trained", "V"), ("lora_random", "V"), "rbf"),
    "learned_layer_grad_similarities": (("trained", "gV"), ("trained", "gU"), "rbf"),
    "random_layer_grad_similarities": (("lora_random", "gV"), ("lora_random", "gU"), "rbf"),
}


# --- gradient pairings ----------------------------------------------------------------------------


def level_note(sides: tuple, notes: tuple) -> str:
    """The ``note`` of a row: which side(s) have no variance, e.g. "all zero: lora_init V"."""
    return "; ".join(f"{note}: {side.label}" for side, note in zip(sides, notes) if note)


def with_norms(rows: np.ndarray) -> np.ndarray:
    """``[rows, ‖row‖²]``: the operand of :meth:`CrossMoments.update_joined`."""
    joined = np.empty((len(rows), rows.shape[1] + 1))
    joined[:, :-1] = rows
    np.einsum("ij,ij->i", rows, rows, out=joined[:, -1])
    return joined


def frame_pair(x: Side, y: Side, shuffles: list[np.ndarray], estimators: list[str]) -> list[dict]:
    """Linear CKA with frames as samples, a row per estimator. The value: X and Y streamed side
    by side in row blocks. The null: both sides in their numerical bases (:func:`null_moments`),
    Y held in memory to gather its permuted rows, X streamed; one product per permutation."""
    mx, my = frame_moments(x), frame_moments(y)
    note = level_note((x, y), (mx.note(), my.note()))
    common = {"kernel": "linear", "rbf_multiple": np.nan, "note": note}
    if note:
        return [{**common, "estimator": e, "value": np.nan, "null_mean": np.nan, "null_p95": np.nan}
                for e in estimators]
    p, q = x.mean.size, y.mean.size
    rows = rows_per_block(p + q)
    observed = CrossMoments(p, q)
    for (_, x_block), (_, y_block) in zip(row_blocks(x.array, rows), row_blocks(y.array, rows)):
        observed.update_joined(with_norms(x_block - x.mean), with_norms(y_block - y.mean))
    null_x, null_y = (null_moments(x), null_moments(y)) if len(shuffles) else (None, None)
    crosses = []
    if len(shuffles):
        y_rows = with_norms(np.concatenate([basis_rows(y, block) for _, block in row_blocks(y.array)]))
        crosses = [CrossMoments(null_x.widths[0], null_y.widths[0]) for _ in shuffles]
        for start, block in row_blocks(x.array, rows):
            x_rows = with_norms(basis_rows(x, block))
            for order, cross in zip(shuffles, crosses):
                cross.update_joined(x_rows, y_rows[order[start : start + len(block)]])
    result = []
    for estimator in estimators:
        null = np.array([cross.cka(null_x, null_y, estimator) for cross in crosses])
        null_mean, null_p95 = null_summary(null)
        result.append({**common, "estimator": estimator, "value": observed.cka(mx, my, estimator),
                       "null_mean": float(null_mean), "null_p95": float(null_p95)})
    return result


def utterance_pair(x: Side, y: Side, views: list[tuple[str, float]], estimators: list[str],
                   shuffles: list[np.ndarray]) -> list[dict]:
    """Gram-form CKA of the clips' mean frames for every kernel view and estimator."""
    note = level_note((x, y), (x.clip_note, y.clip_note))
    if note:
        return [{"kernel": kernel, "rbf_multiple": multiple, "estimator": estimator, "value": np.nan,
                 "null_mean": np.nan, "null_p95": np.nan, "note": note}
                for kernel, multiple in views for estimator in estimators]
    results = layer_matrices([x.clip_means], [y.clip_means], views, estimators, shuffles)
    return [{"kernel": kernel, "rbf_multiple": multiple, "estimator": estimator, "value": result.values[0, 0],
             "null_mean": result.null_mean[0, 0], "null_p95": result.null_p95[0, 0], "note": note}
            for (kernel, multiple, estimator), result in results.items()]


def flattened_grams(side: Side, kernels: list[str], clips: int) -> tuple[dict[str, np.ndarray], str]:
    """The original's centred kernels of a legacy store's [clips, 1500·d] (its own dtype), and
    "all zero" if the side is (the original's function would return its 0.0 fallback)."""
    x = np.asarray(side.array[:]).reshape(clips, -1)
    if not np.any(x):
        return {}, "all zero"
    return {kernel: legacy_center(legacy_gram(x, kernel), kernel) for kernel in kernels}, ""


def flattened_pair(kx: dict, ky: dict, note: str, kernels: list[str], shuffles: list[np.ndarray]) -> list[dict]:
    """The original's CKA of two flattened sides (their centred kernels ``kx``, ``ky``) per
    kernel, the null from the permuted kernels of Y; NaN where ``note`` says a side is all zero
    (a constant kernel that is not all zero keeps the original's 0.0)."""
    rows = []
    for kernel in kernels:
        if note:
            value, null_mean, null_p95 = np.nan, np.nan, np.nan
        else:
            value = legacy_cka_centred(kx[kernel], ky[kernel])
            null = np.array([legacy_cka_centred(kx[kernel], ky[kernel][np.ix_(p, p)]) for p in shuffles])
            null_mean, null_p95 = (float(v) for v in null_summary(null))
        rows.append({"kernel": kernel, "rbf_multiple": np.nan, "estimator": LEGACY_ESTIMATOR, "value": value,
                     "null_mean": null_mean, "null_p95": null_p95, "note": note})
    return rows


def pairings(models: list[str]) -> list[tuple[str, tuple, tuple]]:
    """``(comparison, (model, quantity), (model, quantity))``: within each model U~V and gU~gV;
    trained~reference for U, V, gU, gV."""
    result = [("within", (model, a), (model, b)) for model in models for a, b in (("U", "V"), ("gU", "gV"))]
    result += [("across", (TRAINED, q), (ref, q)) for ref in models if ref != TRAINED for q in QUANTITIES]
    return result


def paper_series(a: tuple, b: tuple) -> tuple[str, str]:
    """The paper's name and kernel of the pairing (either order), or ("", "")."""
    for name, (first, second, kernel) in PAPER_SERIES.items():
        if {a, b} == {first, second}:
            return name, kernel
    return "", ""


def check_same_clips(stores: dict) -> None:
    """The stores must hold the same clips, in the same order, with the same frame offsets."""
    (first_name, first), *others = stores.items()
    for name, store in others:
        if store.frame_items != first.frame_items:
            raise InputError(f"{first.path} ({first_name}) and {store.path} ({name}) hold different clips "
                             "(or the same in another order); CKA pairs rows, so both must be captured on the "
                             "same grads subset of the same fold")
        if not np.array_equal(store.frame_offsets, first.frame_offsets):
            raise InputError(f"{first.path} ({first_name}) and {store.path} ({name}) hold the same clips with "
                             "different frame offsets (one captured under legacy, the other not?)")


def check_gradient_stores(stores: dict) -> None:
    if TRAINED not in stores:
        raise InputError("gradient_pairings needs the trained run's grads.zarr (key 'trained')")
    unknown = sorted(set(stores) - {TRAINED, *REFERENCES})
    if unknown:
        raise InputError(f"gradient_pairings: unknown references {unknown}; choose from {list(REFERENCES)}")
    trained = stores[TRAINED]
    for name, store in stores.items():
        if store.kind != "grads":
            raise InputError(f"{store.path} ({name}) is a {store.kind} store, not grads")
        if name != TRAINED and store.attrs.get("method") != name:
            raise InputError(f"{store.path} was given as {name} but holds a {store.attrs.get('method')} run")
        for key in ("dataset", "protocol", "model", "fold", "legacy"):
            if store.attrs.get(key) != trained.attrs.get(key):
                raise InputError(f"{store.path} ({name}) and {trained.path} (trained) differ in {key}: "
                                 f"{store.attrs.get(key)!r} and {trained.attrs.get(key)!r}")
        if store.adapted() != trained.adapted():
            raise InputError(f"{store.path} ({name}) and {trained.path} (trained) adapt different modules: "
                             f"{store.adapted()} and {trained.adapted()}")
    if not trained.adapted():
        raise InputError(f"{trained.path} has no LoRA arrays (a run without LoRA?)")
    check_same_clips(stores)


def gradient_pairings(stores: dict, settings: dict) -> pd.DataFrame:
    """CKA of the LoRA A/B outputs and gradients within and across a trained run and its
    untrained references, at every adapted (block, module), per level (package docstring)."""
    settings = cka_settings(settings)
    check_gradient_stores(stores)
    models = [m for m in (TRAINED, *REFERENCES) if m in stores]
    trained = stores[TRAINED]
    offsets = trained.frame_offsets
    clips, frames = len(offsets) - 1, int(offsets[-1])
    legacy = bool(trained.attrs.get("legacy"))
    estimators = settings["estimators"]
    if "debiased" in estimators and clips < 4:
        raise InputError(f"{trained.path}: {clips} clips; debiased HSIC needs at least 4 "
                         "(analyses.cka.estimators)")
    if legacy and np.unique(np.diff(offsets)).size != 1:
        raise InputError(f"{trained.path} is a legacy store but its clips have different numbers of frames; "
                         "the flattened form needs the same window (1500 frames) for every clip")
    count, seed = settings["permutations"], settings["seed"]
    frame_shuffles = permutations(frames, count, seed)
    clip_shuffles = permutations(clips, count, seed)
    views = kernel_views(settings)
    rows = []
    for block, module in trained.adapted():
        log.info("CKA at block %d %s", block, module)
        sides = {(model, q): read_side(stores[model], model, q, block, module)
                 for model in models for q in QUANTITIES}
        flat = ({key: flattened_grams(side, settings["kernels"], clips) for key, side in sides.items()}
                if legacy else {})
        for comparison, a, b in pairings(models):
            x, y = sides[a], sides[b]
            series, series_kernel = paper_series(a, b)
            common = {"block": block, "module": module, "comparison": comparison, "model_a": a[0],
                      "quantity_a": a[1], "model_b": b[0], "quantity_b": b[1],
                      "pairing": f"{a[0]} {a[1]} ~ {b[0]} {b[1]}",
                      "paper_series": series, "paper_kernel": series_kernel, "permutations": count}
            if "linear" in settings["kernels"]:
                rows += [{**common, "level": "frame", **row, "n": frames}
                         for row in frame_pair(x, y, frame_shuffles, estimators)]
            rows += [{**common, "level": "utterance", **row, "n": clips}
                     for row in utterance_pair(x, y, views, estimators, clip_shuffles)]
            if legacy:
                (kx, note_x), (ky, note_y) = flat[a], flat[b]
                note = level_note((x, y), (note_x, note_y))
                rows += [{**common, "level": "flattened", **row, "n": clips}
                         for row in flattened_pair(kx, ky, note, settings["kernels"], clip_shuffles)]
        for side in sides.values():
            side.moments = side.null_moments = None  # free the (block, module)'s moments before the next
    return order_columns(pd.DataFrame(rows), GRADIENT_COLUMNS)


GRADIENT_COLUMNS = ["block", "module", "level", "comparison", "pairing", "model_a", "quantity_a", "model_b",
                    "quantity_b", "paper_series", "paper_kernel", "kernel", "rbf_multiple", "estimator", "value",
                    "null_mean", "null_p95", "permutations", "n", "note"]


LAYER_COLUMNS = ["layer_a", "layer_b", "kernel", "rbf_multiple", "estimator", "value", "null_mean", "null_p95",
                 "permutations", "n", "other_run", "note"]


def order_columns(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    table = table.reindex(columns=columns)
    for name in ("value", "null_mean", "null_p95", "rbf_multiple"):
        table[name] = table[name].astype(np.float64)
    return table


# --- layer x layer ----------------------------------------------------------------------------------


def layer_cka(store_a, store_b, split: str, settings: dict) -> pd.DataFrame:
    """Every layer (0..L) of store A's pooled residuals against every layer of store B's, on the
    same clips of ``split``: CKA per kernel view and estimator, with the permutation null."""
    settings = cka_settings(settings)
    ids_a, resid_a = split_residuals(store_a, split)
    ids_b, resid_b = split_residuals(store_b, split)
    if sorted(ids_a) != sorted(ids_b):
        missing = sorted(set(ids_a) ^ set(ids_b))
        raise InputError(f"{store_a.path} and {store_b.path} hold different {split!r} clips "
                         f"({len(missing)} in one only, e.g. {missing[:3]}); layer CKA pairs the same clips")
    if ids_b != ids_a:  # the same clips in another order: B's rows follow A's
        position = {utt: i for i, utt in enumerate(ids_b)}
        resid_b = resid_b[[position[utt] for utt in ids_a]]
    n = len(ids_a)
    if "debiased" in settings["estimators"] and n < 4:
        raise InputError(f"{store_a.path}: {n} {split!r} clips; debiased HSIC needs at least 4")
    xs = [resid_a[:, layer] for layer in range(resid_a.shape[1])]
    ys = [resid_b[:, layer] for layer in range(resid_b.shape[1])]
    shuffles = permutations(n, settings["permutations"], settings["seed"])
    frames = []
    for (kernel, multiple, estimator), result in layer_matrices(xs, ys, kernel_views(settings),
                                                                settings["estimators"], shuffles).items():
        a, b = np.meshgrid(np.arange(len(xs)), np.arange(len(ys)), indexing="ij")
        notes = np.array([["; ".join(f"{note}: {side} layer {layer}" for note, side, layer in
                                     ((result.notes_x[i], "A", i), (result.notes_y[j], "B", j)) if note)
                           for j in range(len(ys))] for i in range(len(xs))], dtype=object)
        frames.append(pd.DataFrame({
            "layer_a": a.ravel(), "layer_b": b.ravel(), "kernel": kernel, "rbf_multiple": multiple,
            "estimator": estimator, "value": result.values.ravel(), "null_mean": result.null_mean.ravel(),
            "null_p95": result.null_p95.ravel(), "permutations": result.permutations, "n": n,
            "other_run": store_b.attrs.get("run", str(store_b.path)), "note": notes.ravel()}))
    return order_columns(pd.concat(frames, ignore_index=True), LAYER_COLUMNS)


PAIRINGS = ("lora_vs_frozen", "seed_vs_seed")


def check_layer_pairing(store_a, store_b, pairing: str) -> None:
    """``lora_vs_frozen``: B is the frozen run of A's dataset, protocol, model, seed and fold;
    ``seed_vs_seed``: B is A's configuration with another seed."""
    a, b = store_a.attrs, store_b.attrs
    shared = ["dataset", "protocol", "model", "fold", "legacy"]
    if pairing == "lora_vs_frozen":
        if b.get("method") != "frozen":
            raise InputError(f"--pairing lora_vs_frozen: {store_b.path} holds a {b.get('method')} run, not frozen")
        shared.append("seed")
    elif pairing == "seed_vs_seed":
        shared += ["method", "targets", "rank", "alpha"]
        if a.get("seed") == b.get("seed"):
            raise InputError(f"--pairing seed_vs_seed: {store_a.path} and {store_b.path} have the same seed "
                             f"{a.get('seed')}")
    else:
        raise InputError(f"--pairing {pairing!r}: choose from {list(PAIRINGS)}")
    for key in shared:
        if a.get(key) != b.get(key):
            raise InputError(f"--pairing {pairing}: {store_a.path} and {store_b.path} differ in {key} "
                             f"({a.get(key)!r} and {b.get(key)!r})")
