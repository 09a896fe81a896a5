"""The feature-space form of linear CKA, streamed (frames as samples): float64 moments of row
blocks (:class:`FrameMoments`, and :class:`CrossMoments` for what depends on how two streams'
rows are paired), never an n × n matrix. The formulas are in the package docstring."""

from __future__ import annotations

import numpy as np

from workflow_scripts.analyses.cka.estimators import ESTIMATORS, ZERO_VARIANCE_RTOL

#: Bytes of float64 rows per streamed block (frame level).
BLOCK_BYTES = 8 << 20


def rows_per_block(width: int) -> int:
    """Rows of a streamed block: about ``BLOCK_BYTES`` of float64."""
    return max(1024, BLOCK_BYTES // (8 * max(int(width), 1)))


def _feature_hsic(n: int, xty: np.ndarray, s_x: np.ndarray, s_y: np.ndarray, sum_ab: float, x_by_b: np.ndarray,
                  y_by_a: np.ndarray, sum_a: float, sum_b: float, estimator: str) -> float:
    """HSIC of linear kernels from feature-space moments (package docstring): ``xty`` = Σ x_i y_iᵀ,
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
