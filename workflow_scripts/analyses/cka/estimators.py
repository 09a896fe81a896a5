"""The Gram form of CKA: linear and RBF Gram matrices, centring and U-centering, biased and
debiased HSIC, CKA from two Gram matrices, and every pair of two lists of sets at once (the
layer × layer matrix) with a seeded permutation null. Pure numpy on arrays (float64); the
definitions are in the package docstring."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import blas

KERNELS = ("linear", "rbf")
ESTIMATORS = ("biased", "debiased")
#: A side whose column-centred Frobenius norm is at most this fraction of its raw norm has no
#: variance (all rows equal up to rounding): CKA is undefined there, reported as NaN.
ZERO_VARIANCE_RTOL = 1e-10


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
