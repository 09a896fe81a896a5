import numpy as np
import pytest

from workflow_scripts import ragged
from workflow_scripts.ragged import RaggedReader, RaggedWriter


def test_round_trip_across_chunks(tmp_path):
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


def test_ragged_arrays_share_offsets_and_refuse_mismatched_items(tmp_path):
    import zarr

    from workflow_scripts.ragged import RaggedArrays, chunk_rows_for, item_rows

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    arrays = RaggedArrays(group)
    arrays.add("a/x", (2,), "float32", chunk_rows=2, dimension_names=["frame", "w"])
    arrays.add("b", (), "int64")
    items = [np.arange(2 * n, dtype=np.float32).reshape(n, 2) for n in (3, 0, 5)]
    for n, rows in zip((3, 0, 5), items):
        arrays.append({"a/x": rows, "b": np.full(n, n)}, f"item{n}")
    with pytest.raises(ValueError, match=r"bad: its arrays disagree on its number of rows: \[1, 2\]"):
        arrays.append({"a/x": np.zeros((2, 2)), "b": np.zeros(1)}, "bad")
    with pytest.raises(ValueError, match=r"bad needs rows for exactly \['a/x', 'b'\]"):
        arrays.append({"a/x": np.zeros((2, 2))}, "bad")
    arrays.close()
    offsets = group["offsets"][:]
    assert offsets.tolist() == [0, 3, 3, 8]
    for index, rows in enumerate(items):
        np.testing.assert_array_equal(item_rows(group["a/x"], offsets, index), rows)
    assert group["b"][:].tolist() == [3, 3, 3, 5, 5, 5, 5, 5]
    assert group["a/x"].metadata.dimension_names == ("frame", "w")
    assert chunk_rows_for((512,), "float32", least=1024) == 2048  # 4 MiB of 2-kB rows
    assert chunk_rows_for((1,), "float16", most=4096) == 4096
    assert chunk_rows_for((512,), "float32", target_bytes=1 << 20, least=1024) == 1024


def test_appends_are_written_a_whole_chunk_at_a_time_from_copies(tmp_path, monkeypatch):
    """Each chunk is written once (no partial chunk rewritten), and the buffer holds copies: a
    view would keep the whole array it was cut from alive."""
    import zarr

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    appender = ragged.ArrayAppender(group, "x", (2,), "float32", chunk_rows=4)
    writes = []
    original = type(appender.array).__setitem__
    monkeypatch.setattr(type(appender.array), "__setitem__",
                        lambda array, key, value: (writes.append((key.start, key.stop)), original(array, key, value)))
    batch = np.arange(40, dtype=np.float32).reshape(20, 2)
    for start, stop in [(0, 3), (3, 6), (6, 7), (7, 16), (16, 19)]:
        appender.append(batch[start:stop])
        assert not any(np.shares_memory(pending, batch) for pending in appender._pending)
    appender.close()
    assert writes == [(0, 4), (4, 16), (16, 19)]
    np.testing.assert_array_equal(group["x"][:], batch[:19])
