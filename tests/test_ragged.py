import numpy as np
import pytest

from workflow_scripts import ragged
from workflow_scripts.ragged import RaggedReader, RaggedWriter


def test_round_trip_across_flushes_and_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(ragged, "FLUSH_BYTES", 100)  # flush every few items
    items = {f"u{i}": np.arange(i * 3, dtype=np.float32).reshape(i, 3) for i in range(7)}  # u0 is empty
    with RaggedWriter(str(tmp_path / "s.zarr"), "rows", (3,), chunk_rows=4) as writer:
        for utt, rows in items.items():
            writer.append(utt, rows)
        writer.attrs["kind"] = "test"
    store = RaggedReader(str(tmp_path / "s.zarr"), "rows")
    assert store.utt_ids == list(items) and store.attrs["kind"] == "test"
    assert store.offsets.tolist() == [0, 0, 1, 3, 6, 10, 15, 21]
    assert [store.length(i) for i in range(7)] == list(range(7))
    for i, rows in enumerate(items.values()):
        np.testing.assert_array_equal(store[i], rows)
        np.testing.assert_array_equal(store.load_all()[i], rows)
    assert store.index["u5"] == 5


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with RaggedWriter(str(tmp_path / "s.zarr"), "rows", (), chunk_rows=4) as writer:
            writer.append("u0", np.zeros(3, dtype=np.float32))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
