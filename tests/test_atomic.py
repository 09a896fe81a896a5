import pandas as pd
import pytest

from workflow_scripts.atomic import atomic_path, write_json, write_table


def test_file_appears_only_on_success(tmp_path):
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary left behind either
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"


def test_directory_output_replaces_old_one_whole(tmp_path):
    target = tmp_path / "store.zarr"
    target.mkdir()
    (target / "stale").write_text("old")
    with atomic_path(target, directory=True) as tmp:
        (tmp / "fresh").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["fresh"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "x.json"):
            pass
    assert not (tmp_path / "x.json").exists()


def test_table_round_trip_with_provenance(tmp_path):
    from workflow_scripts.provenance import read_provenance

    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    write_table(tmp_path / "t.parquet", frame, provenance={"step": "test", "config_hash": "abc"})
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame, check_dtype=False)
    assert read_provenance(tmp_path / "t.parquet")["config_hash"] == "abc"
    write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_outputs_get_the_umask_permissions_not_private_ones(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "store", directory=True) as tmp:
            (tmp / "weights").write_bytes(b"x")
            os.chmod(tmp / "weights", 0o600)  # what safetensors does
        with atomic_path(tmp_path / "table.csv") as tmp:
            tmp.write_text("a")
    finally:
        os.umask(old)
    assert oct((tmp_path / "store").stat().st_mode & 0o777) == "0o755"
    assert oct((tmp_path / "store" / "weights").stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "table.csv").stat().st_mode & 0o777) == "0o644"
