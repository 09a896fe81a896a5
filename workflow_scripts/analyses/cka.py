"""Centered kernel alignment (CKA, paper 3.7): how similar two sets of representations of the
same inputs are, for LoRA's A and B outputs and gradients and for the residual stream.

Definitions (float64 throughout; ../shared/notes/analysis-math.md):

* Gram matrices over the n samples: linear K = XXᵀ; RBF K_ij = exp(−d²_ij / (2σ²)) with
  σ² = multiple² · median of the squared pairwise distances, the median taken over all n² entries
  INCLUDING the zero diagonal (Kornblith et al.'s convention); if that median is 0 (over half the
  pairs coincide) the median of the non-zero distances is used, and if every distance is 0 the
  kernel is constant (all ones) and CKA is reported as NaN, not divided by zero.
* Biased HSIC = tr(KHLH)/(n−1)², H = I − 11ᵀ/n. Debiased HSIC (Song et al. 2012) by U-centering
  (Székely & Rizzo 2014): ⟨K̃, L̃⟩/(n(n−3)), n ≥ 4. CKA = HSIC(K, L)/sqrt(HSIC(K, K)·HSIC(L, L)).
  A side without variance (all rows equal, e.g. an all-zero array) gives NaN; the tables say why
  in ``note`` ("all zero" or "constant").
* Frames as samples (n ≫ p) use the feature-space form of linear CKA and never form an n × n
  matrix. With X shifted by any fixed vector (the column means of a first pass), the moments
  XᵀY, XᵀX, YᵀY, the column sums s, the row norms a_i = ‖x_i‖², b_i = ‖y_i‖² and their sums
  Σa_i, Σa_i b_i, Σ b_i x_i, Σ a_i y_i (and the same for X, X and Y, Y) are accumulated batch by
  batch. Biased: ‖XᵀY − s_x s_yᵀ/n‖²_F/(n−1)². Debiased, with K' = K − diag(a), L' = L − diag(b):
  tr(K'L') = ‖XᵀY‖²_F − Σ a_i b_i; 1ᵀK'1 = ‖s_x‖² − Σ a_i; 1ᵀK'L'1 = s_xᵀXᵀY s_y − s_x·Σ b_i x_i
  − s_y·Σ a_i y_i + Σ a_i b_i; HSIC₁ = [tr(K'L') + 1ᵀK'1·1ᵀL'1/((n−1)(n−2)) − 2·1ᵀK'L'1/(n−2)]
  / (n(n−3)). Both are invariant to the shift (debiased HSIC ignores additive row and column
  terms of K), so the first pass's means only serve accuracy.
* Permutation null: the rows of Y are shuffled (``numpy.random.default_rng(seed)``, ``count``
  permutations, the same ones for every value of a level) and the statistic recomputed; the null's
  mean and 95th percentile are reported beside each value. At frame level Y of one (block,
  module) is held in memory and X streamed in row blocks; XᵀY_π is accumulated per permutation,
  with both sides first rotated into the basis of their centred rows' numerical column space
  (directions holding at most ``RANK_RTOL`` = 1e-12 of the energy, i.e. rounding, dropped): linear
  CKA is invariant to the rotation, and a B output V = s·UBᵀ of rank r costs r columns, not d_out.
* ``legacy``: the original's function, exactly: per-sample flattened inputs in their own dtype
  (float32), linear K = XXᵀ or ``sklearn.metrics.pairwise.rbf_kernel(X)`` (gamma = 1/D), centred
  with H, HSIC = Σ Kc∘Lc, CKA = HSIC/(‖Kc‖_F‖Lc‖_F), 0.0 when a norm is 0.

Two analyses read the capture stores:

``gradient_pairings`` (``--grads``): a trained LoRA run's grads.zarr and its untrained references
on the same fold (``lora_random``, ``lora_init``). For every adapted (block, module), with
U = a_out, V = b_out, gU = a_grad, gV = b_grad: within each model U~V and gU~gV, across models
trained~reference for each of U, V, gU, gV; the paper's four pairings are tagged
(``paper_series``, ``paper_kernel``). Levels: ``frame`` (frames as samples, linear, feature space,
streamed), ``utterance`` (each clip's mean frame, Gram form, linear and RBF at each multiple) and,
for a store captured under ``legacy``, ``flattened`` (the original's function on [clips, 1500·d],
estimator ``legacy``). lora_init's B outputs and A gradients are identically zero: NaN, note
"all zero".

``layer_cka`` (``--acts``/``--other-acts``): the pooled residual stream (layers 0..L) of two runs
on the same clips of a split, every layer of one against every layer of the other, for LoRA vs
frozen and for two seeds of one configuration (the noise floor).

Tables (long): one row per value with ``value``, ``null_mean``, ``null_p95``, ``permutations``,
``n`` and ``note``; figures: CKA per block for each pairing with the null band (mean..p95)
shaded, and layer × layer heatmaps with the null's p95 in each title.

Entry point, two modes (plus the run's wildcards ``--dataset`` ... ``--fold`` and ``--spec``/``--config``)::

    --grads TRAINED/grads.zarr [--reference lora_random=PATH] [--reference lora_init=PATH] --out T.parquet
    --acts A/acts.zarr --other-acts B/acts.zarr --pairing lora_vs_frozen|seed_vs_seed --out T.parquet

The frame level's cost is dominated by the permutation null: one product [frames, p]ᵀ[frames, q]
per permutation and pairing, p and q the sides' numerical ranks.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.linalg import blas

from workflow_scripts.cli import parse_assignments, resolve_spec, run_main
from workflow_scripts.errors import InputError

log = logging.getLogger(__name__)

KERNELS = ("linear", "rbf")
ESTIMATORS = ("biased", "debiased")
LEGACY_ESTIMATOR = "legacy"
LEVELS = ("frame", "utterance", "flattened")
SPLITS = ("train", "val", "test")
DEFAULTS = {"kernels": ["linear", "rbf"], "rbf_multiples": [0.5, 1.0, 2.0], "estimators": ["biased", "debiased"],
            "permutations": 20, "seed": 0, "split": "test"}
#: A side whose column-centred Frobenius norm is at most this fraction of its raw norm has no
#: variance (all rows equal up to rounding): CKA is undefined there, reported as NaN.
ZERO_VARIANCE_RTOL = 1e-10
#: Directions of a set's centred rows whose energy (an eigenvalue of the centred Gram matrix) is
#: at most this fraction of the largest are rounding; the frame-level null drops them.
RANK_RTOL = 1e-12
#: Bytes of float64 rows per streamed block (frame level).
BLOCK_BYTES = 8 << 20

# The grads.zarr quantities by their names in the paper.
QUANTITIES = {"U": "a_out", "V": "b_out", "gU": "a_grad", "gV": "b_grad"}
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


# --- Gram matrices and HSIC ---------------------------------------------------------------------


def _samples(x) -> np.ndarray:
    """``x`` as float64 ``[n, features]`` (each sample flattened)."""
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))


def _norm(x: np.ndarray) -> float:
    """Frobenius norm (an einsum: BLAS's threaded level-1 calls stall on a busy machine)."""
    return float(np.sqrt(np.einsum("ij,ij->", x, x))) if x.ndim == 2 else float(np.sqrt(np.einsum("i,i->", x, x)))


def centred_samples(x) -> tuple[np.ndarray, str]:
    """``x`` as float64 ``[n, features]`` with its column means removed, and why CKA against it
    is undefined: "all zero", "constant" (every row the same, up to rounding) or "" (defined)."""
    x = np.asarray(x)
    centred = np.array(x, dtype=np.float64).reshape(x.shape[0], int(np.prod(x.shape[1:])))  # a copy
    if not np.any(centred):
        return centred, "all zero"
    mean = centred.mean(0)
    centred -= mean
    spread = _norm(centred) ** 2
    raw = spread + len(centred) * float(np.einsum("i,i->", mean, mean))  # ‖X‖² = ‖X − 1μᵀ‖² + n‖μ‖²
    return centred, "constant" if spread <= ZERO_VARIANCE_RTOL**2 * raw else ""


def degenerate(x) -> str:
    """Why CKA against ``x [n, ...]`` is undefined: "all zero", "constant" (every row the same,
    up to rounding) or "" (it is defined)."""
    return centred_samples(x)[1]


def linear_gram(x) -> np.ndarray:
    """K = XXᵀ (float64) of ``x [n, ...]`` flattened per sample."""
    x = _samples(x)
    return x @ x.T


def squared_distances(gram: np.ndarray) -> np.ndarray:
    """‖x_i − x_j‖² from a linear Gram matrix (clipped at 0, diagonal exactly 0)."""
    diagonal = np.diag(gram)
    distances = gram * -2.0
    distances += diagonal[:, None]
    distances += diagonal[None, :]
    np.maximum(distances, 0, out=distances)
    np.fill_diagonal(distances, 0)
    return distances


def rbf_bandwidth(distances: np.ndarray, multiple: float = 1.0) -> float | None:
    """σ² = multiple² · median of the squared distances (a symmetric matrix, zero diagonal), the
    zero diagonal included (Kornblith's convention); the median of the non-zero ones if that is
    0; None if every distance is 0."""
    n = len(distances)
    upper = distances[_upper_triangle(n)]
    median = _median_with_zero_diagonal(upper, n)
    if median == 0:
        positive = upper[upper > 0]  # each off-diagonal distance twice: the same median
        if positive.size == 0:
            return None
        median = float(np.median(positive))
    return multiple**2 * median


@functools.lru_cache(maxsize=4)
def _upper_triangle(n: int) -> np.ndarray:
    """A mask of the strict upper triangle of an n × n matrix (the same n for every layer)."""
    return np.triu(np.ones((n, n), dtype=bool), 1)


def _median_with_zero_diagonal(upper: np.ndarray, n: int) -> float:
    """``np.median`` of the symmetric n × n matrix with a zero diagonal whose upper triangle is
    ``upper``, from the triangle alone: sorted, the n² entries are the n diagonal zeros, then
    each off-diagonal value twice, so entry i ≥ n is sorted(upper)[(i − n) // 2]."""
    total = n * n
    middle = [total // 2] if total % 2 else [total // 2 - 1, total // 2]
    ranks = sorted({(i - n) // 2 for i in middle if i >= n})
    ordered = np.partition(upper, ranks) if ranks else upper
    values = [0.0 if i < n else float(ordered[(i - n) // 2]) for i in middle]
    return sum(values) / len(values)


def rbf_from_distances(distances: np.ndarray, multiple: float = 1.0, median: float | None = None) -> np.ndarray:
    """The RBF Gram matrix of squared distances at ``multiple`` times the median bandwidth; all
    ones (a constant kernel, which CKA reports as NaN) when every distance is 0. ``median``:
    ``rbf_bandwidth(distances)``, if known (one per layer serves every multiple)."""
    if median is None:
        median = rbf_bandwidth(distances, 1.0)
    sigma2 = None if median is None else multiple**2 * median
    if sigma2 is None:
        return np.ones_like(distances)
    kernel = distances * (-1 / (2 * sigma2))
    return np.exp(kernel, out=kernel)


def rbf_gram(x, multiple: float = 1.0) -> np.ndarray:
    """K_ij = exp(−‖x_i − x_j‖²/(2σ²)), σ² = multiple² · median of the squared distances over all
    n² pairs including the zero diagonal (Kornblith et al.'s convention; the median of the
    non-zero distances if that is 0). When every row is the same (no distance, or only rounding
    noise below ``ZERO_VARIANCE_RTOL`` of the data's scale) the kernel is all ones: no bandwidth is
    divided by, and CKA against it is NaN."""
    centred, note = centred_samples(x)
    if note:
        return np.ones((len(centred), len(centred)))
    return rbf_from_distances(squared_distances(centred @ centred.T), multiple)


def center_gram(k: np.ndarray) -> np.ndarray:
    """HKH, H = I − 11ᵀ/n (row, column and grand means removed)."""
    k = np.asarray(k, dtype=np.float64)
    column_means, row_means = k.mean(0), k.mean(1)
    centred = k - column_means
    centred -= row_means[:, None]
    centred += column_means.mean()
    return centred


def u_center(k: np.ndarray) -> np.ndarray:
    """Székely & Rizzo's U-centering: zero the diagonal, remove row and column means with n − 2 in
    the denominator, add back the grand mean with (n − 1)(n − 2), zero the diagonal again."""
    k = np.array(k, dtype=np.float64)
    n = len(k)
    if n < 4:
        raise ValueError(f"debiased HSIC needs at least 4 samples, got {n}")
    np.fill_diagonal(k, 0)
    means = k.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    k -= means[:, None]
    k -= means[None, :]
    np.fill_diagonal(k, 0)
    return k


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    """tr(KHLH)/(n − 1)²."""
    n = len(k)
    return float(np.sum(center_gram(k) * center_gram(l)) / (n - 1) ** 2)


def hsic_debiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC by U-centering: ⟨K̃, L̃⟩/(n(n − 3)); n ≥ 4."""
    n = len(k)
    return float(np.sum(u_center(k) * u_center(l)) / (n * (n - 3)))


def _centred(k: np.ndarray, estimator: str) -> np.ndarray:
    if estimator == "biased":
        return center_gram(k)
    if estimator == "debiased":
        return u_center(k)
    raise ValueError(f"estimator {estimator!r}: choose from {list(ESTIMATORS)}")


def _flat_gram(k: np.ndarray, centred: np.ndarray) -> bool:
    """Whether a centred Gram matrix is zero up to rounding (a side without variance)."""
    scale = _norm(k)
    return scale == 0 or _norm(centred) <= ZERO_VARIANCE_RTOL * scale


def cka_from_grams(k: np.ndarray, l: np.ndarray, estimator: str = "biased") -> float:
    """HSIC(K, L)/sqrt(HSIC(K, K)·HSIC(L, L)); NaN when either centred Gram matrix is zero."""
    kc, lc = _centred(k, estimator), _centred(l, estimator)
    if _flat_gram(k, kc) or _flat_gram(l, lc):
        return float("nan")
    return float(np.sum(kc * lc) / np.sqrt(np.sum(kc * kc) * np.sum(lc * lc)))


def gram(x, kernel: str = "linear", multiple: float = 1.0) -> np.ndarray:
    """The Gram matrix of ``x`` for ``kernel``; linear on column-centred data (HKH is the same,
    and centring first keeps float64 from cancelling a large mean)."""
    if kernel == "linear":
        centred, _ = centred_samples(x)
        return centred @ centred.T
    if kernel == "rbf":
        return rbf_gram(x, multiple)
    raise ValueError(f"kernel {kernel!r}: choose from {list(KERNELS)}")


def cka(x, y, kernel: str = "linear", estimator: str = "biased", multiple: float = 1.0) -> float:
    """CKA of ``x [n, ...]`` and ``y [n, ...]`` (samples flattened) in the Gram form; NaN when a
    side has no variance (see :func:`degenerate`)."""
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same samples on both sides: {len(x)} and {len(y)} rows")
    if degenerate(x) or degenerate(y):
        return float("nan")
    return cka_from_grams(gram(x, kernel, multiple), gram(y, kernel, multiple), estimator)


# --- permutations and the layer x layer matrix ----------------------------------------------------


def permutations(n: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` seeded permutations of ``n`` rows (the same for every value of one level)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(count)]


def null_summary(null: np.ndarray) -> tuple:
    """Mean and 95th percentile over the last axis (NaN without permutations)."""
    null = np.asarray(null, dtype=np.float64)
    if null.shape[-1] == 0:
        nan = np.full(null.shape[:-1], np.nan)
        return nan, nan
    return null.mean(-1), np.percentile(null, 95, axis=-1)


@dataclass
class CKAMatrix:
    """CKA of every set of ``xs`` against every set of ``ys`` ([len(xs), len(ys)]), with the
    permutation null's mean and 95th percentile per cell; ``notes_x``/``notes_y`` say which sets
    have no variance (their rows and columns are NaN)."""

    values: np.ndarray
    null_mean: np.ndarray
    null_p95: np.ndarray
    permutations: int
    n: int
    notes_x: list[str] = field(default_factory=list)
    notes_y: list[str] = field(default_factory=list)


def cka_matrix_from_grams(ks, ls, estimator: str = "biased", shuffles: list[np.ndarray] = (),
                          notes_x: list[str] | None = None, notes_y: list[str] | None = None,
                          centred: bool = False) -> CKAMatrix:
    """All pairs of Gram matrices at once (``ks``, ``ls``: lists or ``[count, n, n]`` stacks): each
    centred once, every HSIC in one matrix product; each permutation π of ``shuffles`` reorders
    the rows and columns of the ``ls`` (shuffling Y's rows), which commutes with centring and
    U-centering. ``centred``: the Gram matrices are of column-centred data, so HKH = K and the
    biased estimator skips the centring."""
    n = len(ks[0])
    kc, lc = _centred_stack(ks, estimator, centred), _centred_stack(ls, estimator, centred)
    notes_x = list(notes_x) if notes_x is not None else ["" for _ in ks]
    notes_y = list(notes_y) if notes_y is not None else ["" for _ in ls]
    notes_x = [note or ("constant" if _flat_gram(k, c) else "") for note, k, c in zip(notes_x, ks, kc)]
    notes_y = [note or ("constant" if _flat_gram(l, c) else "") for note, l, c in zip(notes_y, ls, lc)]
    a, b = kc.reshape(len(kc), -1), lc.reshape(len(lc), -1)
    norms = np.sqrt(np.outer(np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)))
    undefined = np.array([bool(v) for v in notes_x])[:, None] | np.array([bool(v) for v in notes_y])[None, :]

    def values(b_matrix: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            result = (a @ b_matrix.T) / norms
        result[undefined] = np.nan
        return result

    null = np.stack([values(lc[:, p][:, :, p].reshape(len(lc), -1)) for p in shuffles], -1) \
        if len(shuffles) else np.empty((len(ks), len(ls), 0))
    null_mean, null_p95 = null_summary(null)
    return CKAMatrix(values(b), null_mean, null_p95, len(shuffles), n, notes_x, notes_y)


def _centred_stack(grams, estimator: str, centred: bool) -> np.ndarray:
    """The Gram matrices centred for ``estimator`` as one ``[count, n, n]`` array (``grams``
    itself when it already is one and HKH would not change it)."""
    if centred and estimator == "biased" and isinstance(grams, np.ndarray):
        return grams
    stack = np.empty((len(grams), *np.shape(grams[0])))
    for out, gram in zip(stack, grams):
        out[:] = _centred(gram, estimator)
    return stack


def linear_grams(arrays: list) -> tuple[np.ndarray, list[str]]:
    """The linear Gram matrices of the column-centred arrays as one ``[count, n, n]`` float64
    stack, each by a symmetric rank-k update (BLAS syrk: half the products of XXᵀ), and each
    array's note (see :func:`centred_samples`)."""
    n = len(arrays[0])
    grams, notes = np.zeros((len(arrays), n, n)), []
    for gram, x in zip(grams, arrays):
        centred, note = centred_samples(x)
        notes.append(note)
        # syrk fills one triangle of its F-ordered output, here gram.T, in place: gram's lower one.
        blas.dsyrk(1.0, centred.T, trans=1, c=gram.T, overwrite_c=1)
        gram += gram.T
        gram.flat[:: n + 1] /= 2
    return grams, notes


def cka_matrix(xs: list, ys: list, kernel: str = "linear", estimator: str = "biased", multiple: float = 1.0,
               permutation_count: int = 0, seed: int = 0) -> CKAMatrix:
    """CKA of every array of ``xs`` against every array of ``ys`` (the same n samples each), one
    Gram matrix per array, with a permutation null of ``permutation_count`` shuffles of Y's rows."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}: choose from {list(KERNELS)}")
    view = (kernel, float("nan") if kernel == "linear" else float(multiple))
    shuffles = permutations(len(xs[0]), permutation_count, seed)
    return next(iter(layer_matrices(xs, ys, [view], [estimator], shuffles).values()))


def layer_matrices(xs: list, ys: list, views: list[tuple[str, float]], estimators: list[str],
                   shuffles: list[np.ndarray] = ()) -> dict[tuple, CKAMatrix]:
    """``cka_matrix`` for several kernels and estimators at once, ``{(kernel, rbf_multiple,
    estimator): CKAMatrix}``: one linear Gram matrix per array (of the column-centred data), every
    RBF kernel a function of its distances, each centred once per estimator."""
    n = len(xs[0])
    if any(len(x) != n for x in [*xs, *ys]):
        raise ValueError("CKA matrices need the same samples in every array")
    (linear_x, notes_x), (linear_y, notes_y) = linear_grams(xs), linear_grams(ys)
    distances = None  # per side, per array: (squared distances, their median bandwidth), once for every multiple
    results = {}

    def rbf(side: list, notes: list[str], multiple: float) -> list[np.ndarray]:
        return [np.ones_like(d) if note else rbf_from_distances(d, multiple, median)
                for (d, median), note in zip(side, notes)]

    for kernel, multiple in views:
        centred = kernel == "linear"
        if centred:
            ks, ls = linear_x, linear_y
        else:
            if distances is None:
                distances = [[(d, rbf_bandwidth(d, 1.0)) for d in map(squared_distances, grams)]
                             for grams in (linear_x, linear_y)]
            ks, ls = rbf(distances[0], notes_x, multiple), rbf(distances[1], notes_y, multiple)
        for estimator in estimators:
            results[kernel, multiple, estimator] = cka_matrix_from_grams(ks, ls, estimator, shuffles,
                                                                         notes_x, notes_y, centred)
    return results


# --- the feature-space form, streamed -----------------------------------------------------------


def _feature_hsic(n: int, xty: np.ndarray, s_x: np.ndarray, s_y: np.ndarray, sum_ab: float, x_by_b: np.ndarray,
                  y_by_a: np.ndarray, sum_a: float, sum_b: float, estimator: str) -> float:
    """HSIC of linear kernels from feature-space moments (module docstring): ``xty`` = Σ x_i y_iᵀ,
    ``s`` the column sums, ``sum_ab`` = Σ a_i b_i, ``x_by_b`` = Σ b_i x_i, ``y_by_a`` = Σ a_i y_i,
    ``sum_a`` = Σ a_i, ``sum_b`` = Σ b_i (a_i = ‖x_i‖², b_i = ‖y_i‖²)."""
    if estimator == "biased":
        centred = xty - np.outer(s_x, s_y) / n
        return float(np.sum(centred * centred) / (n - 1) ** 2)
    if estimator != "debiased":
        raise ValueError(f"estimator {estimator!r}: choose from {list(ESTIMATORS)}")
    if n < 4:
        raise ValueError(f"debiased HSIC needs at least 4 samples, got {n}")
    trace = float(np.sum(xty * xty)) - sum_ab
    k_sum = float(np.einsum("i,i->", s_x, s_x)) - sum_a
    l_sum = float(np.einsum("i,i->", s_y, s_y)) - sum_b
    kl_sum = float(s_x @ xty @ s_y) - float(s_x @ x_by_b) - float(s_y @ y_by_a) + sum_ab
    return (trace + k_sum * l_sum / ((n - 1) * (n - 2)) - 2 * kl_sum / (n - 2)) / (n * (n - 3))


class FrameMoments:
    """Streamed feature-space moments of k feature sets over the same rows (frames), each set
    shifted by a fixed vector (its column means from a first pass, or zero). Each row
    contributes w wᵀ, w = [z, a, 1] (z the shifted sets concatenated, a each set's ‖z‖²), so a
    batch costs one matrix product; the blocks of Σ w wᵀ are the joint Gram ZᵀZ, the
    row-norm-weighted column sums Σ a_i z_i, the column sums, Σ a aᵀ, Σ a and n. Enough for
    linear CKA (biased and debiased) between any two of the sets, and, with
    :class:`CrossMoments`, against another stream."""

    def __init__(self, widths: list[int], shifts: list[np.ndarray] | None = None):
        self.widths = [int(w) for w in widths]
        self.edges = np.concatenate([[0], np.cumsum(self.widths)]).astype(int)
        total, k = int(self.edges[-1]), len(self.widths)
        self.shift = (np.zeros(total) if shifts is None
                      else np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in shifts]))
        if self.shift.shape != (total,):
            raise ValueError(f"shifts of {self.shift.size} columns for sets of {total}")
        self.n = 0
        self.moments = np.zeros((total + k + 1, total + k + 1))

    # The blocks of Σ w wᵀ, by meaning.
    @property
    def gram(self) -> np.ndarray:
        p = self.edges[-1]
        return self.moments[:p, :p]

    @property
    def weighted(self) -> np.ndarray:
        """Column m: Σ_i a_i^(m) z_i."""
        p = self.edges[-1]
        return self.moments[:p, p:-1]

    @property
    def sums(self) -> np.ndarray:
        return self.moments[: self.edges[-1], -1]

    @property
    def norm_products(self) -> np.ndarray:
        p = self.edges[-1]
        return self.moments[p:-1, p:-1]

    @property
    def norm_sums(self) -> np.ndarray:
        return self.moments[self.edges[-1] : -1, -1]

    def _slice(self, index: int) -> slice:
        return slice(int(self.edges[index]), int(self.edges[index + 1]))

    def update(self, *blocks) -> np.ndarray:
        """Add rows: one block ``[rows, width_m]`` per set, the same rows in each. Returns the
        rows' ``[z, a]`` (the shifted sets concatenated, float64, then each set's row norm), a
        view, for :class:`CrossMoments`."""
        blocks = [np.asarray(b) for b in blocks]
        rows, total, k = blocks[0].shape[0], int(self.edges[-1]), len(self.widths)
        widths = [int(np.prod(b.shape[1:])) for b in blocks]
        if widths != self.widths or any(b.shape[0] != rows for b in blocks):
            raise ValueError(f"blocks of widths {widths} and rows {[b.shape[0] for b in blocks]}; "
                             f"the sets have widths {self.widths}, the same rows each")
        w = np.empty((rows, total + k + 1))
        for index, block in enumerate(blocks):
            w[:, self._slice(index)] = block.reshape(rows, self.widths[index])
        z = w[:, :total]
        z -= self.shift
        if rows:
            w[:, total:-1] = np.add.reduceat(z * z, self.edges[:-1], axis=1)
        w[:, -1] = 1
        self.n += rows
        self.moments += w.T @ w
        return w[:, :-1]

    def note(self, index: int = 0) -> str:
        """"all zero", "constant" or "" for set ``index`` (as :func:`degenerate`)."""
        part = self._slice(index)
        sums, shift = self.sums[part], self.shift[part]
        shifted = np.trace(self.gram[part, part])
        # Σ‖x_i‖² before the shift: Σ‖z_i + s‖² = Σ‖z_i‖² + 2 s·Σz_i + n‖s‖² (0 exactly for zeros).
        raw = shifted + 2 * float(shift @ sums) + self.n * float(shift @ shift)
        if raw <= 0:
            return "all zero"
        centred = shifted - np.einsum("i,i->", sums, sums) / self.n
        return "constant" if centred <= ZERO_VARIANCE_RTOL**2 * raw else ""

    def hsic(self, l: int, m: int, estimator: str) -> float:
        x, y = self._slice(l), self._slice(m)
        weighted, norm_sums = self.weighted, self.norm_sums
        return _feature_hsic(self.n, self.gram[x, y], self.sums[x], self.sums[y], self.norm_products[l, m],
                             weighted[x, m], weighted[y, l], norm_sums[l], norm_sums[m], estimator)

    def cka(self, l: int, m: int, estimator: str = "biased") -> float:
        """Linear CKA between sets ``l`` and ``m``; NaN if either has no variance."""
        if self.note(l) or self.note(m):
            return float("nan")
        return self.hsic(l, m, estimator) / np.sqrt(self.hsic(l, l, estimator) * self.hsic(m, m, estimator))

    def hsic_matrix(self, estimator: str) -> np.ndarray:
        """HSIC between every pair of the sets at once: :func:`_feature_hsic`'s terms as block
        sums of the joint moments (``np.add.reduceat`` over the sets' column ranges)."""
        n, starts = self.n, self.edges[:-1]

        def blocks(matrix: np.ndarray) -> np.ndarray:  # [P, P] -> [k, k] sums over each pair's block
            return np.add.reduceat(np.add.reduceat(matrix, starts, axis=0), starts, axis=1)

        sums, gram = self.sums, self.gram
        if estimator == "biased":
            centred = gram - np.outer(sums, sums) / n
            return blocks(centred * centred) / (n - 1) ** 2
        if estimator != "debiased":
            raise ValueError(f"estimator {estimator!r}: choose from {list(ESTIMATORS)}")
        if n < 4:
            raise ValueError(f"debiased HSIC needs at least 4 samples, got {n}")
        products, norm_sums = self.norm_products, self.norm_sums
        trace = blocks(gram * gram) - products
        k_sums = np.add.reduceat(sums * sums, starts) - norm_sums
        weighted = np.add.reduceat(sums[:, None] * self.weighted, starts, axis=0)  # [l, m]: s_l · Σ a^(m) x^(l)
        kl_sums = blocks(np.outer(sums, sums) * gram) - weighted - weighted.T + products
        return (trace + np.outer(k_sums, k_sums) / ((n - 1) * (n - 2)) - 2 * kl_sums / (n - 2)) / (n * (n - 3))

    def cka_matrix(self, estimator: str = "biased") -> np.ndarray:
        """Linear CKA between every pair of the sets; NaN rows and columns for sets without variance."""
        hsic = self.hsic_matrix(estimator)
        own = np.diag(hsic).copy()
        defined = np.array([not self.note(l) for l in range(len(self.widths))])
        own[~defined] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            return hsic / np.sqrt(np.outer(own, own))


class CrossMoments:
    """The moments between a streamed X and a Y that depend on how their rows are paired (XᵀY,
    Σ b_i x_i, Σ a_i y_i, Σ a_i b_i: the blocks of Σ [x, a]ᵀ[y, b]), for rows shifted as in X's
    and Y's :class:`FrameMoments`; with those, linear CKA of X and Y. One per permutation for
    the null."""

    def __init__(self, width_x: int, width_y: int):
        self.n = 0
        self.moments = np.zeros((width_x + 1, width_y + 1))

    @property
    def xty(self) -> np.ndarray:
        return self.moments[:-1, :-1]

    def update(self, x: np.ndarray, a: np.ndarray, y: np.ndarray, b: np.ndarray) -> None:
        """Shifted rows ``x``, ``y`` (float64) and their row norms ``a``, ``b``."""
        self.update_joined(np.column_stack([x, a]), np.column_stack([y, b]))

    def update_joined(self, xa: np.ndarray, yb: np.ndarray) -> None:
        """The same from ``[x, a]`` and ``[y, b]`` already side by side (one matrix product)."""
        self.n += len(xa)
        self.moments += xa.T @ yb

    def hsic(self, mx: FrameMoments, my: FrameMoments, estimator: str) -> float:
        m = self.moments
        return _feature_hsic(self.n, m[:-1, :-1], mx.sums, my.sums, float(m[-1, -1]), m[:-1, -1], m[-1, :-1],
                             float(mx.norm_sums[0]), float(my.norm_sums[0]), estimator)

    def cka(self, mx: FrameMoments, my: FrameMoments, estimator: str = "biased") -> float:
        if self.n != mx.n or self.n != my.n:
            raise ValueError(f"moments over {mx.n} and {my.n} rows, cross moments over {self.n}")
        if mx.note() or my.note():
            return float("nan")
        return self.hsic(mx, my, estimator) / np.sqrt(mx.hsic(0, 0, estimator) * my.hsic(0, 0, estimator))


class StreamingLinearCKA:
    """Linear CKA of X [n, p] and Y [n, q] with frames as samples, in feature space: feed row
    batches to :meth:`update`, read :meth:`result`. ``mean_x``/``mean_y`` (the column means from
    a first pass) only condition the arithmetic: the result does not depend on them. Never
    forms an n × n matrix; memory is O((p + q)²)."""

    def __init__(self, mean_x, mean_y):
        mean_x, mean_y = np.ravel(mean_x), np.ravel(mean_y)
        self.x = FrameMoments([mean_x.size], [mean_x])
        self.y = FrameMoments([mean_y.size], [mean_y])
        self.cross = CrossMoments(mean_x.size, mean_y.size)

    def update(self, x, y) -> None:
        if len(x) != len(y):
            raise ValueError(f"a batch needs the same rows of X and Y: {len(x)} and {len(y)}")
        self.cross.update_joined(self.x.update(x), self.y.update(y))

    def result(self, estimator: str = "biased") -> float:
        return self.cross.cka(self.x, self.y, estimator)


def frame_cka_matrix(arrays: list, estimators: list[str] = ("biased", "debiased")) -> dict[str, np.ndarray]:
    """Linear CKA with frames as samples between every pair of ``arrays`` (the same rows each:
    Zarr or numpy ``[frames, width]``), streamed in row blocks in one pass, each set shifted by
    the column means of its first 1024 rows (any fixed shift gives the same CKA; one near the
    mean keeps a large mean from cancelling). ``{estimator: [len(arrays), len(arrays)]}``."""
    widths = [int(np.prod(a.shape[1:])) for a in arrays]
    rows = rows_per_block(sum(widths))
    moments = None
    for start in range(0, arrays[0].shape[0], rows):
        blocks = [np.asarray(a[start : start + rows]).reshape(-1, w) for a, w in zip(arrays, widths)]
        if moments is None:
            moments = FrameMoments(widths, [block[:1024].mean(0, dtype=np.float64) for block in blocks])
        moments.update(*blocks)
    return {estimator: moments.cka_matrix(estimator) for estimator in estimators}


# --- the original's function (legacy) -----------------------------------------------------------


def _legacy_samples(x) -> np.ndarray:
    """``x`` flattened per sample in its own dtype (float16 promoted to float32: the original's
    tensors were float32, and numpy has no fast float16 matrix product)."""
    x = np.asarray(x)
    if x.dtype == np.float16 or x.dtype.kind != "f":
        x = x.astype(np.float32)
    return x.reshape(len(x), -1)


def legacy_gram(x, kernel: str) -> np.ndarray:
    """The original's kernel in the input's dtype: XXᵀ, or ``rbf_kernel(X)`` (gamma = 1/D)."""
    x = _legacy_samples(x)
    if kernel == "linear":
        return x @ x.T
    if kernel == "rbf":
        from sklearn.metrics.pairwise import rbf_kernel

        return rbf_kernel(x)
    raise ValueError(f"kernel {kernel!r}: choose from {list(KERNELS)}")


def legacy_center(k: np.ndarray, kernel: str) -> np.ndarray:
    """The original's centring, in the Gram matrix's dtype: its torch path (linear) multiplies by
    the matrix of 1/n, its numpy path (RBF) subtracts means."""
    n = len(k)
    if kernel == "linear":
        unit = np.full((n, n), 1 / n, dtype=k.dtype)
        return k - unit @ k - k @ unit + unit @ k @ unit
    return k - k.mean(axis=1, keepdims=True) - k.mean(axis=0, keepdims=True) + k.mean()


def legacy_cka_centred(kc: np.ndarray, lc: np.ndarray) -> float:
    """Σ Kc∘Lc / (‖Kc‖_F ‖Lc‖_F), 0.0 when a norm is 0 (the original's fallback)."""
    norm_k, norm_l = np.sqrt(np.sum(kc * kc)), np.sqrt(np.sum(lc * lc))
    if norm_k == 0 or norm_l == 0:
        return 0.0
    return float(np.sum(kc * lc) / (norm_k * norm_l))


def legacy_cka(x, y, kernel: str = "linear") -> float:
    """The paper's CKA exactly (notebook cell 28): biased, in the inputs' dtype, samples
    flattened, RBF with sklearn's default gamma = 1/D; 0.0 when a centred kernel is zero."""
    return legacy_cka_centred(legacy_center(legacy_gram(x, kernel), kernel),
                              legacy_center(legacy_gram(y, kernel), kernel))


# --- settings -------------------------------------------------------------------------------------


def cka_settings(raw: dict | None) -> dict:
    """The settings with defaults filled in, checked; a bad key raises :class:`InputError` naming it."""
    settings = {**DEFAULTS, **(raw or {})}
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise InputError(f"analyses.cka: unknown settings {unknown}; known: {sorted(DEFAULTS)}")
    kernels, estimators = settings["kernels"], settings["estimators"]
    if not isinstance(kernels, list) or not kernels or any(k not in KERNELS for k in kernels):
        raise InputError(f"analyses.cka.kernels: {kernels!r} is not a non-empty list of {list(KERNELS)}")
    if not isinstance(estimators, list) or not estimators or any(e not in ESTIMATORS for e in estimators):
        raise InputError(f"analyses.cka.estimators: {estimators!r} is not a non-empty list of {list(ESTIMATORS)}")
    multiples = settings["rbf_multiples"]
    if (not isinstance(multiples, list) or ("rbf" in kernels and not multiples)
            or any(isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0 for m in multiples)):
        raise InputError(f"analyses.cka.rbf_multiples: {multiples!r} is not a non-empty list of positive numbers")
    for key in ("permutations", "seed"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"analyses.cka.{key}: {value!r} is not a non-negative integer")
    if settings["split"] not in SPLITS:
        raise InputError(f"analyses.cka.split: {settings['split']!r} is not one of {list(SPLITS)}")
    return {**settings, "kernels": list(dict.fromkeys(kernels)), "estimators": list(dict.fromkeys(estimators)),
            "rbf_multiples": [float(m) for m in dict.fromkeys(multiples)]}


def kernel_views(settings: dict) -> list[tuple[str, float]]:
    """``(kernel, rbf_multiple)`` of every Gram-form kernel the settings ask for (NaN multiple for linear)."""
    views = []
    for kernel in settings["kernels"]:
        if kernel == "linear":
            views.append(("linear", float("nan")))
        else:
            views += [("rbf", m) for m in settings["rbf_multiples"]]
    return views


# --- reading the stores ----------------------------------------------------------------------------


def rows_per_block(width: int) -> int:
    """Rows of a streamed block: about ``BLOCK_BYTES`` of float64."""
    return max(1024, BLOCK_BYTES // (8 * max(int(width), 1)))


def row_blocks(array, rows: int | None = None):
    """``(start, float64 rows)`` of a frame-level array, block by block."""
    total, width = array.shape[0], int(np.prod(array.shape[1:]))
    rows = rows or rows_per_block(width)
    for start in range(0, total, rows):
        yield start, np.asarray(array[start : start + rows], dtype=np.float64).reshape(-1, width)


def clip_sums(array, offsets: np.ndarray, rows: int | None = None) -> np.ndarray:
    """Each item's rows summed ``[items, width]`` (float64), streamed in row blocks."""
    offsets = np.asarray(offsets, dtype=np.int64)
    width = int(np.prod(array.shape[1:]))
    sums = np.zeros((len(offsets) - 1, width))
    for start, block in row_blocks(array, rows):
        stop = start + len(block)
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        last = int(np.searchsorted(offsets, stop, side="left"))
        edges = np.clip(offsets[first : last + 1], start, stop) - start
        for item, (a, b) in enumerate(zip(edges[:-1], edges[1:]), start=first):
            if b > a:
                sums[item] += block[a:b].sum(0)
    return sums


@dataclass
class Side:
    """One quantity of one store at one (block, module): where its rows are and what a first
    pass over them gave (column means, clip means, why CKA against it is undefined)."""

    model: str
    quantity: str
    array: object  # the Zarr (or numpy) array of its frame rows
    mean: np.ndarray
    clip_means: np.ndarray
    clip_note: str  # why CKA of the clip means is undefined ("" if it is defined)
    moments: FrameMoments | None = None
    basis: np.ndarray | None = None  # of the null's rows (:func:`null_moments`)
    null_moments: FrameMoments | None = None

    @property
    def label(self) -> str:
        return f"{self.model} {self.quantity}"


def read_side(store, model: str, quantity: str, block: int, module: str) -> Side:
    """The first pass over a store's (block, module) quantity: its per-clip and overall means."""
    key = ("lora", block, module, QUANTITIES[quantity])
    try:
        array = store.frame_array(key)
    except KeyError as error:
        raise InputError(f"{store.path}: {error.args[0]}") from error
    offsets = store.frame_offsets
    lengths = np.diff(offsets)
    if array.shape[0] != offsets[-1] or np.any(lengths <= 0):
        raise InputError(f"{store.path}: lora/{block}/{module}/{QUANTITIES[quantity]} has {array.shape[0]} rows; "
                         f"frames/offsets says {int(offsets[-1])} with every clip at least one frame")
    sums = clip_sums(array, offsets)
    clip_means = sums / lengths[:, None]
    mean = sums.sum(0) / offsets[-1]
    return Side(model, quantity, array, mean, clip_means, degenerate(clip_means))


def level_note(sides: tuple, notes: tuple) -> str:
    """The ``note`` of a row: which side(s) have no variance, e.g. "all zero: lora_init V"."""
    return "; ".join(f"{note}: {side.label}" for side, note in zip(sides, notes) if note)


def frame_moments(side: Side) -> FrameMoments:
    """The second pass: the side's own feature-space moments (once per side)."""
    if side.moments is None:
        moments = FrameMoments([side.mean.size], [side.mean])
        for _, block in row_blocks(side.array):
            moments.update(block)
        side.moments = moments
    return side.moments


def numerical_basis(moments: FrameMoments) -> np.ndarray | None:
    """An orthonormal basis ``[p, k]`` of the column space of a set's centred rows without the
    directions that hold only rounding (eigenvalues of the centred Gram matrix at most
    ``RANK_RTOL`` of the largest), or None if none is dropped. A B output V = s·UBᵀ has rank r:
    in this basis it has r columns instead of d_out."""
    centred = moments.gram - np.outer(moments.sums, moments.sums) / moments.n
    values, vectors = np.linalg.eigh(centred)
    kept = values > RANK_RTOL * values[-1]
    return None if kept.all() else vectors[:, kept]


def basis_rows(side: Side, block: np.ndarray) -> np.ndarray:
    """Rows of ``side`` (float64), centred, in its numerical basis (see :func:`null_moments`)."""
    centred = block - side.mean
    return centred if side.basis is None else centred @ side.basis


def null_moments(side: Side) -> FrameMoments:
    """The moments of the side's centred rows in its :func:`numerical_basis` (a third pass, once
    per side), for the permutation null: rotating the rows leaves linear CKA unchanged, and the
    dropped directions hold at most ``RANK_RTOL`` of the energy."""
    if side.null_moments is None:
        side.basis = numerical_basis(frame_moments(side))
        moments = FrameMoments([side.mean.size if side.basis is None else side.basis.shape[1]])
        for _, block in row_blocks(side.array):
            moments.update(basis_rows(side, block))
        side.null_moments = moments
    return side.null_moments


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
    untrained references, at every adapted (block, module), per level (module docstring)."""
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


def split_residuals(store, split: str) -> tuple[list[str], np.ndarray]:
    """Utterance ids and pooled residuals ``[clips, L + 1, d]`` of a split's clips."""
    utterances = store.utterances()
    chosen = (utterances["split"] == split).to_numpy()
    if not chosen.any():
        raise InputError(f"analyses.cka.split: {store.path} has no {split!r} clips")
    return utterances["utt_id"][chosen].tolist(), np.asarray(store.pooled("resid")[chosen], dtype=np.float64)


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


# --- figures ----------------------------------------------------------------------------------------

GROUPS = (("within", ("U", "V"), "forward: U ~ V within each model"),
          ("within", ("gU", "gV"), "backward: gU ~ gV within each model"),
          ("across", ("U", "U"), "U: trained ~ reference"),
          ("across", ("V", "V"), "V: trained ~ reference"),
          ("across", ("gU", "gU"), "gU: trained ~ reference"),
          ("across", ("gV", "gV"), "gV: trained ~ reference"))


def _view_label(level: str, kernel: str, multiple: float, estimator: str) -> str:
    bandwidth = "" if kernel == "linear" else (" γ=1/D" if level == "flattened" else f" σ×{multiple:g}")
    return f"{level}, {kernel}{bandwidth}, {estimator}"


def figure_views(table: pd.DataFrame) -> list[tuple]:
    """The (level, kernel, rbf_multiple, estimator) columns of the pairings figure: every level,
    kernel and estimator, and of the RBF multiples only the one nearest 1 (the table has all)."""
    views = []
    for level in LEVELS:
        part = table[table["level"] == level]
        for kernel in KERNELS:
            rows = part[part["kernel"] == kernel]
            if rows.empty:
                continue
            multiples = rows["rbf_multiple"].dropna().unique()
            multiple = float(multiples[np.argmin(np.abs(np.log(multiples)))]) if multiples.size else np.nan
            for estimator in (*ESTIMATORS, LEGACY_ESTIMATOR):
                if (rows["estimator"] == estimator).any():
                    views.append((level, kernel, multiple, estimator))
    return views


def pairings_figure(table: pd.DataFrame, title: str):
    """CKA per block for each pairing (colour) and module (line style), the permutation null's
    band (mean..p95) shaded; a row per pairing group, a column per level/kernel/estimator. No
    fixed y-limits: debiased values may be negative, the original's values anything."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = figure_views(table)
    modules = sorted(table["module"].unique())
    styles = dict(zip(modules, ("-", "--", ":", "-.") * 3))
    pairs = sorted({(row.model_a, row.model_b) for row in table.itertuples()})
    colours = {pair: plt.get_cmap("tab10")(i % 10) for i, pair in enumerate(pairs)}
    figure, axes = plt.subplots(len(GROUPS), len(views), figsize=(3.3 * len(views), 2.3 * len(GROUPS)),
                                squeeze=False, sharex=True)
    handles = {}
    for r, (comparison, (qa, qb), group_title) in enumerate(GROUPS):
        for c, (level, kernel, multiple, estimator) in enumerate(views):
            axis = axes[r, c]
            part = table[(table["comparison"] == comparison) & (table["quantity_a"] == qa)
                         & (table["quantity_b"] == qb) & (table["level"] == level) & (table["kernel"] == kernel)
                         & (table["estimator"] == estimator)]
            if kernel == "rbf" and level != "flattened":
                part = part[np.isclose(part["rbf_multiple"], multiple)]
            undefined = []
            for (model_a, model_b, module), rows in part.groupby(["model_a", "model_b", "module"]):
                rows = rows.sort_values("block")
                colour = colours[model_a, model_b]
                label = model_a if comparison == "within" else f"{model_a} ~ {model_b}"
                if rows["value"].isna().all():
                    undefined.append(f"{label} {module}: {rows['note'].iloc[0] or 'undefined'}")
                    continue
                line, = axis.plot(rows["block"], rows["value"], marker="o", markersize=3, color=colour,
                                  linestyle=styles[module])
                axis.fill_between(rows["block"], rows["null_mean"], rows["null_p95"], color=colour, alpha=0.15,
                                  linewidth=0)
                handles.setdefault(label, line)
                handles.setdefault(f"module {module}", plt.Line2D([], [], color="grey", linestyle=styles[module]))
            if undefined:
                axis.text(0.02, 0.02, "\n".join(sorted(set(undefined))), transform=axis.transAxes, fontsize=6,
                          va="bottom", color="dimgrey")
            if r == 0:
                axis.set_title(_view_label(level, kernel, multiple, estimator), fontsize=8)
            if c == 0:
                axis.set_ylabel(f"{group_title}\nCKA", fontsize=7)
            if r == len(GROUPS) - 1:
                axis.set_xlabel("encoder block")
            axis.tick_params(labelsize=7)
    handles["permutation null (mean..p95)"] = plt.Rectangle((0, 0), 1, 1, color="grey", alpha=0.15)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    return figure


def layer_figure(table: pd.DataFrame, title: str):
    """A layer × layer heatmap per kernel view and estimator, each with a colour bar and the
    permutation null's 95th percentile (largest over the cells) in its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(zip(table["kernel"], table["rbf_multiple"].fillna(-1.0), table["estimator"])))
    columns = min(4, len(keys))
    rows_count = int(np.ceil(len(keys) / columns))
    figure, axes = plt.subplots(rows_count, columns, figsize=(4.2 * columns, 3.6 * rows_count), squeeze=False)
    for axis in axes.ravel()[len(keys):]:
        axis.set_visible(False)
    for axis, (kernel, multiple, estimator) in zip(axes.ravel(), keys):
        part = table[(table["kernel"] == kernel) & (table["rbf_multiple"].fillna(-1.0) == multiple)
                     & (table["estimator"] == estimator)]
        grid = part.pivot(index="layer_a", columns="layer_b", values="value")
        image = axis.imshow(grid.to_numpy(), origin="lower", cmap="viridis", aspect="auto")
        colourbar = figure.colorbar(image, ax=axis)
        colourbar.set_label("CKA", fontsize=8)
        if grid.shape[0] <= 13 and grid.shape[1] <= 13:  # larger grids: the colour bar alone
            for (i, j), value in np.ndenumerate(grid.to_numpy()):
                bright = not np.isnan(value) and image.norm(value) > 0.6  # viridis is light at the top
                axis.text(j, i, "nan" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=6,
                          color="black" if bright else "white")
        axis.set_xticks(range(grid.shape[1]), grid.columns)
        axis.set_yticks(range(grid.shape[0]), grid.index)
        axis.set_xlabel("layer, other run (B)")
        axis.set_ylabel("layer, this run (A)")
        bandwidth = "" if kernel == "linear" else f" σ×{multiple:g}"
        p95 = part["null_p95"].max()
        count = int(part["permutations"].iloc[0])
        null = "no permutations" if np.isnan(p95) else f"null p95 ≤ {p95:.3f} ({count} perm.)"
        axis.set_title(f"{kernel}{bandwidth}, {estimator}\n{null}", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


# --- entry point ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import analysis_parser, publish
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    parser = analysis_parser("workflow_scripts.analyses.cka", __doc__, acts=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--grads", help="the trained LoRA run's grads.zarr: the gradient pairings")
    source.add_argument("--acts", help="the run's acts.zarr (A): layer x layer CKA of its pooled residuals")
    parser.add_argument("--reference", action="append", metavar="NAME=PATH",
                        help="with --grads: an untrained reference's grads.zarr on the same fold, NAME "
                             f"one of {', '.join(REFERENCES)} (repeat for both)")
    parser.add_argument("--other-acts", help="with --acts: the other run's acts.zarr (B)")
    parser.add_argument("--pairing", choices=PAIRINGS,
                        help="with --acts: what B is, the frozen run (lora_vs_frozen) or another seed "
                             "(seed_vs_seed)")
    args = parser.parse_args(argv)
    run = Run.from_wildcards(vars(args))
    settings = cka_settings(resolve_spec(args, lambda config: config["analyses"].get("cka", {})))
    if args.grads:
        if args.other_acts or args.pairing:
            raise InputError("--other-acts and --pairing go with --acts, not --grads")
        references = parse_assignments(args.reference, "--reference", "NAME=PATH", REFERENCES)
        stores = {TRAINED: CaptureStore(args.grads, kind="grads", run=run.id)}
        stores.update({name: CaptureStore(path, kind="grads") for name, path in references.items()})
        record = provenance("cka", settings, run=run.id, grads=args.grads, references=references)
        publish(gradient_pairings(stores, settings), run, args.out, record, pairings_figure,
                "CKA of LoRA A/B outputs and gradients, grads clips")
    else:
        if args.reference:
            raise InputError("--reference goes with --grads, not --acts")
        if not (args.other_acts and args.pairing):
            raise InputError("--acts needs --other-acts and --pairing")
        store_a = CaptureStore(args.acts, kind="acts", run=run.id)
        store_b = CaptureStore(args.other_acts, kind="acts")
        check_layer_pairing(store_a, store_b, args.pairing)
        table = layer_cka(store_a, store_b, settings["split"], settings)
        table.insert(0, "pairing", args.pairing)
        record = provenance("cka", settings, run=run.id, acts=args.acts, other_acts=args.other_acts,
                            pairing=args.pairing)
        publish(table, run, args.out, record, layer_figure,
                f"layer x layer CKA of pooled residuals, {args.pairing} ({store_b.attrs.get('run')}), "
                f"{settings['split']} clips")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
