"""Ragged (variable-length) arrays in Zarr v3 groups, compressed-sparse-row style.

Every item (a clip) is a run of rows of one shared array, and ``offsets`` says where each run
starts::

    <name>    [total_rows, *row_shape]   the items' rows, concatenated in item order
    offsets   int64 [n_items + 1]        item i is <name>[offsets[i]:offsets[i+1]]
    attributes  "utt_ids" (item order) plus whatever the store kind adds

The audio cache (``samples``, 1-D rows) and the log-mel cache (``mel``, rows of n_mels) are
such stores, written by :class:`RaggedWriter`; their modules document their own attributes.
The activation stores (``workflow_scripts.capture.store``) are built from the same parts:
:class:`ArrayAppender` (one array grown along its first axis) and :class:`RaggedArrays`
(several ragged arrays that share one ``offsets``). Writing is append-only by one writer, in
large blocks, into a temporary folder that is renamed into place on success.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from workflow_scripts.atomic import atomic_path

CHUNK_BYTES = 4 << 20  # default chunk size (uncompressed): few files, cheap partial reads
# Ragged arrays declared without a chunk size (the activation stores' frame-level arrays, up to a
# few hundred per store) get smaller chunks, since each buffers up to about two chunks in memory.
FRAME_CHUNK_BYTES = 1 << 20


def chunk_rows_for(row_shape: Sequence[int], dtype, *, target_bytes: int = CHUNK_BYTES, least: int = 1,
                   most: int = 1 << 20) -> int:
    """Rows per chunk so that a chunk holds about ``target_bytes``, within ``[least, most]``."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return int(min(most, max(least, target_bytes // max(row_bytes, 1))))


class ArrayAppender:
    """A new Zarr array grown along axis 0 by buffered appends.

    Rows are copied into a buffer and written a whole chunk at a time, so every chunk is
    compressed and written once, and the buffer never holds much more than one chunk: memory
    stays flat however many rows are appended. :meth:`close` writes the last, partial chunk.
    ``dimension_names`` name the axes (Zarr v3 metadata; xarray reads them).
    """

    def __init__(self, group, name: str, row_shape: Sequence[int], dtype, chunk_rows: int,
                 dimension_names: Sequence[str] | None = None, compressed: bool = True):
        self.name, self.row_shape, self.dtype = name, tuple(row_shape), np.dtype(dtype)
        self.chunk_rows = chunk_rows
        self.array = group.create_array(
            name, shape=(0, *self.row_shape), chunks=(chunk_rows, *self.row_shape), dtype=self.dtype,
            fill_value="" if self.dtype.kind == "T" else 0,
            dimension_names=list(dimension_names) if dimension_names else None,
            **({} if compressed else {"compressors": None}),  # else Zarr's default, zstd
        )
        self.rows = 0  # rows appended, written or not
        self._written = 0
        self._pending: list[np.ndarray] = []

    def append(self, rows: np.ndarray, item: str = "") -> None:
        """Append ``rows`` (``item`` names them in an error)."""
        # A copy: a view would keep the whole array it came from (say a batch) alive until written.
        rows = np.array(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{item or self.name}: rows must be [n, {', '.join(map(str, self.row_shape))}], got {rows.shape}")
        self._pending.append(rows)
        self.rows += len(rows)
        if self.rows - self._written >= self.chunk_rows:
            self._write(whole_chunks_only=True)

    def _write(self, whole_chunks_only: bool) -> None:
        pending = self.rows - self._written
        count = pending - pending % self.chunk_rows if whole_chunks_only else pending
        if count == 0:
            return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        end = self._written + count
        self.array.resize((end, *self.row_shape))
        self.array[self._written : end] = block[:count]
        self._pending = [block[count:].copy()] if count < len(block) else []
        self._written = end

    def close(self) -> None:
        """Write what is buffered."""
        self._write(whole_chunks_only=False)


class RaggedArrays:
    """Ragged arrays in one Zarr group that share ``offsets``: item i has the same number of rows
    in each of them (e.g. one clip's frames at several layers)."""

    def __init__(self, group):
        self.group = group
        self.arrays: dict[str, ArrayAppender] = {}
        self.offsets = [0]

    def add(self, name: str, row_shape: Sequence[int], dtype: str, *, chunk_rows: int | None = None,
            dimension_names: Sequence[str] | None = None, compressed: bool = True) -> None:
        """Declare an array (``name`` may hold '/' for nested groups) before the first append."""
        if len(self.offsets) > 1:
            raise RuntimeError(f"{name}: arrays must be added before the first item")
        chunk_rows = chunk_rows or chunk_rows_for(row_shape, dtype, target_bytes=FRAME_CHUNK_BYTES, least=256)
        self.arrays[name] = ArrayAppender(self.group, name, row_shape, dtype, chunk_rows, dimension_names, compressed)

    def append(self, rows: dict[str, np.ndarray], item: str = "an item") -> None:
        """Append one item (``item`` names it in an error): the same number of rows for every
        declared array."""
        if rows.keys() != self.arrays.keys():
            raise ValueError(f"{item} needs rows for exactly {sorted(self.arrays)}, got {sorted(rows)}")
        lengths = {len(value) for value in rows.values()}
        if len(lengths) > 1:
            raise ValueError(f"{item}: its arrays disagree on its number of rows: {sorted(lengths)}")
        for name, value in rows.items():
            self.arrays[name].append(value, item if len(rows) == 1 else f"{item}, {name}")
        self.offsets.append(self.offsets[-1] + (lengths.pop() if lengths else 0))

    def close(self, offsets_name: str = "offsets") -> None:
        """Write what is buffered and the offsets."""
        for appender in self.arrays.values():
            appender.close()
        offsets = np.asarray(self.offsets, dtype=np.int64)
        self.group.create_array(offsets_name, data=offsets, chunks=(len(offsets),),
                                dimension_names=["item_edge"])


def item_rows(array, offsets: np.ndarray, index: int) -> np.ndarray:
    """Item ``index``'s rows of a ragged ``array``."""
    return array[int(offsets[index]) : int(offsets[index + 1])]


class RaggedWriter:
    """Append items to a new single-array ragged store; the store appears only when the ``with`` succeeds.

    >>> with RaggedWriter("logmel80.zarr", "mel", (80,), chunk_rows=8192) as writer:  # doctest: +SKIP
    ...     writer.append("utt1", frames)
    ...     writer.attrs["n_mels"] = 80
    """

    def __init__(self, path: str, name: str, row_shape: tuple[int, ...], chunk_rows: int, dtype: str = "float32"):
        self.path, self.name, self.row_shape = path, name, tuple(row_shape)
        self.chunk_rows, self.dtype = chunk_rows, dtype
        self.utt_ids: list[str] = []
        self.attrs: dict = {}

    def __enter__(self) -> "RaggedWriter":
        import zarr  # here, not at the top: pure modules import this package with torch alone

        self._atomic = atomic_path(self.path, directory=True)
        self._group = zarr.open_group(str(self._atomic.__enter__()), mode="w", zarr_format=3)
        self._items = RaggedArrays(self._group)
        self._items.add(self.name, self.row_shape, self.dtype, chunk_rows=self.chunk_rows)
        return self

    @property
    def offsets(self) -> list[int]:
        return self._items.offsets

    def append(self, utt_id: str, rows: np.ndarray) -> None:
        self._items.append({self.name: rows}, utt_id)
        self.utt_ids.append(utt_id)

    def __exit__(self, kind, error, trace) -> bool:
        if kind is None:
            self._items.close()
            self._group.attrs.update({**self.attrs, "utt_ids": self.utt_ids})
        return self._atomic.__exit__(kind, error, trace)


class RaggedReader:
    """Read items back from a ragged store: ``store[i]`` is item i's rows."""

    def __init__(self, path: str, name: str):
        import zarr

        self.path = path
        group = zarr.open_group(path, mode="r")
        self.data = group[name]
        self.offsets = group["offsets"][:]
        self.attrs = dict(group.attrs)
        self.utt_ids = list(self.attrs["utt_ids"])
        self.index = {utt: i for i, utt in enumerate(self.utt_ids)}

    def __len__(self) -> int:
        return len(self.utt_ids)

    def length(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def __getitem__(self, index: int) -> np.ndarray:
        return item_rows(self.data, self.offsets, index)

    def load_all(self) -> list[np.ndarray]:
        """Every item, read in one pass (a dataset's cache fits in memory)."""
        everything = self.data[:]
        return [everything[self.offsets[i] : self.offsets[i + 1]] for i in range(len(self))]
