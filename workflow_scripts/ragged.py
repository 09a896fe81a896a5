"""Ragged (variable-length) arrays in one Zarr v3 group, compressed-sparse-row style.

Every item (a clip) is a run of rows of one shared array, and ``offsets`` says where each run
starts::

    <name>    [total_rows, *row_shape]   the items' rows, concatenated in item order
    offsets   int64 [n_items + 1]        item i is <name>[offsets[i]:offsets[i+1]]
    attributes  "utt_ids" (item order) plus whatever the store kind adds

The audio cache (``samples``, 1-D rows) and the log-mel cache (``mel``, rows of n_mels) are
such stores; their modules document their own attributes. Writing is append-only by one
writer, in large blocks, into a temporary folder that is renamed into place on success.
"""

from __future__ import annotations

import numpy as np

from workflow_scripts.atomic import atomic_path

FLUSH_BYTES = 16 << 20  # write in blocks of about 16 MiB


class RaggedWriter:
    """Append items to a new ragged store; the store appears only when the ``with`` succeeds.

    >>> with RaggedWriter("logmel80.zarr", "mel", (80,), chunk_rows=8192) as writer:  # doctest: +SKIP
    ...     writer.append("utt1", frames)
    ...     writer.attrs["n_mels"] = 80
    """

    def __init__(self, path: str, name: str, row_shape: tuple[int, ...], chunk_rows: int, dtype: str = "float32"):
        self.path, self.name, self.row_shape = path, name, tuple(row_shape)
        self.chunk_rows, self.dtype = chunk_rows, dtype
        self.utt_ids: list[str] = []
        self.offsets = [0]
        self.attrs: dict = {}
        self._pending: list[np.ndarray] = []
        self._pending_bytes = 0
        self._written = 0

    def __enter__(self) -> "RaggedWriter":
        import zarr  # here, not at the top: pure modules import this package with torch alone

        self._atomic = atomic_path(self.path, directory=True)
        self._group = zarr.open_group(str(self._atomic.__enter__()), mode="w", zarr_format=3)
        self._data = self._group.create_array(
            self.name, shape=(0, *self.row_shape), chunks=(self.chunk_rows, *self.row_shape),
            dtype=self.dtype, fill_value=0,
        )
        return self

    def append(self, utt_id: str, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{utt_id}: rows must be [n, {', '.join(map(str, self.row_shape))}], got {rows.shape}")
        self.utt_ids.append(utt_id)
        self.offsets.append(self.offsets[-1] + len(rows))
        self._pending.append(np.asarray(rows, dtype=self.dtype))
        self._pending_bytes += self._pending[-1].nbytes
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            end = self.offsets[-1]
            self._data.resize((end, *self.row_shape))
            self._data[self._written : end] = np.concatenate(self._pending)
            self._written, self._pending, self._pending_bytes = end, [], 0

    def __exit__(self, kind, error, trace) -> bool:
        if kind is None:
            self._flush()
            offsets = np.asarray(self.offsets, dtype=np.int64)
            self._group.create_array("offsets", data=offsets, chunks=(len(offsets),))
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
        return self.data[int(self.offsets[index]) : int(self.offsets[index + 1])]

    def load_all(self) -> list[np.ndarray]:
        """Every item, read in one pass (a dataset's cache fits in memory)."""
        everything = self.data[:]
        return [everything[self.offsets[i] : self.offsets[i + 1]] for i in range(len(self))]
