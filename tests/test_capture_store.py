"""The store spec: the document and the code agree, written stores obey them, xarray and dask
open them, and a killed capture leaves nothing that looks complete."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from toy_runs import build_toy_dataset, toy_config, toy_run, train_run

from workflow_scripts.capture.run import capture_store
from workflow_scripts.capture.settings import capture_settings
from workflow_scripts.capture.store import REQUIRED_ATTRIBUTES, SPEC, CaptureStore, validate_store
from workflow_scripts.errors import InputError

DOC = Path(__file__).resolve().parent.parent / "docs" / "activation-store.md"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = build_toy_dataset(tmp_path_factory.mktemp("store"))
    train_run(root, root / "lora", epochs=1)
    return root


def capture_args(root: Path, kind: str, out: Path, **capture) -> list[str]:
    spec = capture_settings(toy_config(capture=capture), "toy", kind)
    run = toy_run()
    return ["--store", kind, "--dataset", run.dataset, "--protocol", run.protocol, "--model", run.model,
            "--method", run.method, "--targets", run.targets, "--rank", str(run.rank), "--seed", str(run.seed),
            "--fold", str(run.fold), "--checkpoint", str(root / "tiny"), "--weights", str(root / "lora" / "weights"),
            "--features", str(root / "logmel80.zarr"), "--manifest", str(root / "manifest.parquet"),
            "--folds", str(root / "folds.parquet"), "--spec", json.dumps(spec), "--out", str(out)]


@pytest.fixture(scope="module")
def stores(setting):
    """Both stores, written by the entry point the rules run."""
    from workflow_scripts.capture.run import main

    for kind in ("acts", "grads"):
        main(capture_args(setting, kind, setting / f"{kind}.zarr", frame_dtype="float16"))
    return {kind: setting / f"{kind}.zarr" for kind in ("acts", "grads")}


def documented_arrays() -> list[tuple]:
    rows = re.findall(r"^\| `([^`]+)` \| ([a-z, ]+) \| \(([a-z_, ]+)\) \| (\w+) \| (.+?) \|$", DOC.read_text(), re.M)
    return [(path, tuple(kinds.split(", ")), tuple(dims.split(", ")), dtype, meaning)
            for path, kinds, dims, dtype, meaning in rows]


def test_the_document_lists_exactly_the_code_s_arrays():
    assert documented_arrays() == [(s.path, s.kinds, s.dims, s.dtype, s.meaning) for s in SPEC]
    for attribute in REQUIRED_ATTRIBUTES:
        assert f"`{attribute}`" in DOC.read_text(), attribute


@pytest.mark.parametrize("kind", ["acts", "grads"])
def test_written_stores_obey_the_spec(stores, kind):
    assert validate_store(stores[kind]) == []
    group = zarr.open_group(str(stores[kind]), mode="r")
    assert group.attrs["kind"] == kind and group.attrs["run"] == toy_run().id
    expected = "float16" if kind == "acts" else "float32"
    assert group["lora/0/v_proj/a_out"].dtype == np.dtype(expected)


def test_validation_finds_a_departure(stores, tmp_path):
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(stores["acts"], broken)
    shutil.rmtree(broken / "logits")
    shutil.rmtree(broken / "lora" / "1" / "q_proj" / "b_out")
    group = zarr.open_group(str(broken), mode="r+")
    group.create_array("lora/1/q_proj/b_out", shape=(3, 32), dtype="float32", dimension_names=["frame", "hidden"])
    group.create_array("extra", shape=(2,), dtype="int64")
    problems = validate_store(broken)
    assert "logits is missing" in problems
    assert "extra is not in the spec of a acts store" in problems
    assert any(p.startswith("lora/1/q_proj/b_out: dimensions ('frame', 'hidden')") for p in problems)
    assert any("lora/1/q_proj/b_out: 3 rows" in p for p in problems)


def test_xarray_opens_the_utterance_level_arrays_with_named_dimensions(stores):
    import xarray

    dataset = xarray.open_zarr(str(stores["acts"]))
    assert dataset["resid"].dims == ("utterance", "layer", "hidden")
    assert dataset["contribution"].dims == ("utterance", "block", "statistic")
    assert list(dataset["layer"].values) == [0, 1, 2]
    utt = str(dataset["utterance"].values[3])
    store = CaptureStore(stores["acts"])
    np.testing.assert_array_equal(dataset["resid"].sel(utterance=utt, layer=2).values, store.pooled("resid")[3, 2])
    # Lazily, through dask: a reduction over utterances computes only when asked.
    assert hasattr(dataset["normed"].data, "dask")
    np.testing.assert_allclose(dataset["normed"].mean("utterance").compute().values,
                               store.pooled("normed").mean(0), rtol=1e-6)
    per_frame = dataset["contribution"].sum("utterance") / dataset["n_frames"].sum()
    assert per_frame.sel(statistic="attn_ratio").shape == (2,)


def test_dask_reads_frame_level_arrays_lazily(stores):
    import dask.array

    store = CaptureStore(stores["grads"], kind="grads")
    lazy = dask.array.from_zarr(store.frame_array(("lora", 1, "v_proj", "b_grad")))
    np.testing.assert_allclose(lazy.sum(axis=0).compute(), store.frames(("lora", 1, "v_proj", "b_grad")).sum(0),
                               rtol=1e-5, atol=1e-9)
    assert lazy.shape[0] == store.frame_offsets[-1] == store.utterances()["n_frames"].sum()


def test_the_reader_refuses_the_wrong_kind_and_non_stores(stores, tmp_path):
    with pytest.raises(InputError, match=r"acts.zarr is a acts store, not grads"):
        CaptureStore(stores["acts"], kind="grads")
    with pytest.raises(InputError, match=r"not an activation store \(no zarr.json\): run the capture rules"):
        CaptureStore(tmp_path / "nothing.zarr")
    with pytest.raises(InputError, match=r"acts.zarr holds run toy/loso_speaker/tiny/lora/q_proj\+v_proj/r4/seed0/fold1, "
                                          r"not toy/loso_speaker/tiny/frozen/none/r0/seed0/fold1"):
        CaptureStore(stores["acts"], kind="acts", run=toy_run("frozen", "none", 0).id)
    with pytest.raises(KeyError, match=r"has no frames/resid/9"):
        CaptureStore(stores["acts"]).frame_array(("resid", 9))


def test_a_capture_killed_midway_leaves_no_store_and_a_rerun_writes_a_correct_one(setting, tmp_path):
    out = tmp_path / "acts.zarr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "workflow_scripts.capture.run", *capture_args(setting, "acts", out, batch_size=1)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # Kill it once the temporary store holds a few batches' chunks.
    while time.monotonic() < deadline and process.poll() is None:
        partial = list(tmp_path.glob(".acts.zarr.*.tmp/resid/c/*"))
        if partial:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the capture finished before it could be killed: " + process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()
    with pytest.raises(InputError):
        CaptureStore(out)
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert validate_store(out) == []
    capture_store("acts", toy_run(), capture_settings(toy_config(), "toy", "acts"), setting / "tiny",
                  setting / "lora" / "weights", setting / "logmel80.zarr", setting / "manifest.parquet",
                  setting / "folds.parquet", tmp_path / "reference.zarr")
    np.testing.assert_allclose(CaptureStore(out).pooled("resid"), CaptureStore(tmp_path / "reference.zarr").pooled("resid"),
                               atol=1e-6)
