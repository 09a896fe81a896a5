"""The original's CKA function (the paper's notebook, cell 28), exactly: per-sample flattened
inputs in their own dtype, its kernels and centring, 0.0 when a norm is 0."""

from __future__ import annotations

import numpy as np

from workflow_scripts.analyses.cka.estimators import KERNELS

LEGACY_ESTIMATOR = "legacy"


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
