"""Reading the capture stores for CKA: a quantity of one (block, module) as a :class:`Side`
(its first pass: overall and per-clip means), its feature-space moments and the numerical basis
of the permutation null (later passes, once per side), all streamed in row blocks; and a
split's pooled residuals for the layer × layer matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workflow_scripts.analyses.cka.estimators import degenerate
from workflow_scripts.analyses.cka.moments import FrameMoments, rows_per_block
from workflow_scripts.errors import InputError

#: Directions of a set's centred rows whose energy (an eigenvalue of the centred Gram matrix) is
#: at most this fraction of the largest are rounding; the frame-level null drops them.
RANK_RTOL = 1e-12
# The grads.zarr quantities by their names in the paper.
QUANTITIES = {"U": "a_out", "V": "b_out", "gU": "a_grad", "gV": "b_grad"}


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


def split_residuals(store, split: str) -> tuple[list[str], np.ndarray]:
    """Utterance ids and pooled residuals ``[clips, L + 1, d]`` of a split's clips."""
    utterances = store.utterances()
    chosen = (utterances["split"] == split).to_numpy()
    if not chosen.any():
        raise InputError(f"analyses.cka.split: {store.path} has no {split!r} clips")
    return utterances["utt_id"][chosen].tolist(), np.asarray(store.pooled("resid")[chosen], dtype=np.float64)
