"""The checkpoint capture (workflow_scripts.dynamics.capture): a run's model at a training
checkpoint, captured as an acts store without frame-level arrays. Tiny random Whisper, toy data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from toy_runs import build_toy_dataset, toy_config, toy_run, train_run

from workflow_scripts.capture.run import capture_store
from workflow_scripts.capture.settings import capture_settings
from workflow_scripts.capture.store import CaptureStore, validate_store
from workflow_scripts.dynamics.capture import capture_checkpoint, main
from workflow_scripts.errors import InputError

POOLED = ("resid", "normed")


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The toy dataset; a LoRA run of one epoch keeping epoch0 and epoch1 and its acts store; the
    lora_init reference of the same seed and its acts store; the run's two checkpoint stores."""
    root = build_toy_dataset(tmp_path_factory.mktemp("dynamics_capture"))
    inputs = [root / "tiny", root / "logmel80.zarr", root / "manifest.parquet", root / "folds.parquet"]
    acts = capture_settings(toy_config(), "toy", "acts")
    train_run(root, root / "lora", epochs=1, checkpoints={"epochs": [0, 1]})
    train_run(root, root / "init", method="lora_init")
    capture_store("acts", toy_run(), acts, inputs[0], root / "lora" / "weights", *inputs[1:], root / "lora.zarr")
    capture_store("acts", toy_run("lora_init"), acts, inputs[0], root / "init" / "weights", *inputs[1:],
                  root / "init.zarr")
    settings = capture_settings(toy_config(), "toy", "checkpoint")
    capture_checkpoint(toy_run(), settings, "epoch0", root / "lora", *inputs, root / "epoch0.zarr")
    run = toy_run()
    main(["--dataset", run.dataset, "--protocol", run.protocol, "--model", run.model, "--method", run.method,
          "--targets", run.targets, "--rank", str(run.rank), "--seed", str(run.seed), "--fold", str(run.fold),
          "--checkpoint-id", "epoch1", "--run-dir", str(root / "lora"), "--checkpoint", str(inputs[0]),
          "--features", str(inputs[1]), "--manifest", str(inputs[2]), "--folds", str(inputs[3]),
          "--spec", json.dumps(settings), "--out", str(root / "epoch1.zarr")])
    return root


def same_pooled_arrays(a: CaptureStore, b: CaptureStore) -> bool:
    return (a.utt_ids == b.utt_ids and np.array_equal(a.logits(), b.logits())
            and all(np.array_equal(a.pooled(name), b.pooled(name)) for name in POOLED))


def test_epoch0_capture_equals_the_untrained_lora_reference_of_the_same_seed(setting):
    epoch0 = CaptureStore(setting / "epoch0.zarr", "acts", run=toy_run().id)
    init = CaptureStore(setting / "init.zarr", "acts")
    assert same_pooled_arrays(epoch0, init)
    trained = CaptureStore(setting / "lora.zarr", "acts")
    assert not np.array_equal(epoch0.pooled("resid"), trained.pooled("resid"))


def test_the_final_checkpoint_capture_equals_the_run_s_acts_store(setting):
    # One epoch: the best epoch is epoch1, whose parameters are the run's weights.
    assert json.loads((setting / "lora" / "metrics.json").read_text())["best_epoch"] == 1
    epoch1 = CaptureStore(setting / "epoch1.zarr", "acts", run=toy_run().id)
    assert same_pooled_arrays(epoch1, CaptureStore(setting / "lora.zarr", "acts"))
    utterances, acts = epoch1.utterances(), CaptureStore(setting / "lora.zarr", "acts").utterances()
    assert utterances.equals(acts)  # every clip of the fold, with its split, label and prediction


def test_a_checkpoint_store_is_a_valid_acts_store_without_frames(setting):
    for name, step, epoch in [("epoch0", 0, 0.0), ("epoch1", 8, 1.0)]:
        path = setting / f"{name}.zarr"
        assert validate_store(path) == []
        store = CaptureStore(path, "acts")
        assert (store.attrs["checkpoint"], store.attrs["step"], store.attrs["epoch"]) == (name, step, epoch)
        assert store.attrs["resid_layers"] == [] and store.attrs["lora_b_blocks"] == []
        assert store.attrs["provenance"]["step"] == "capture_checkpoint"
        assert store.frame_items == [] and store.frame_offsets.tolist() == [0]
        assert "resid" not in store.group["frames"]
        # The adapted modules are listed, but hold no rows.
        assert store.attrs["modules"] == ["q_proj", "v_proj"]
        assert all(store.frame_array(("lora", b, m, "a_out")).shape[0] == 0 for b, m in store.adapted())
        assert len(store) == len(CaptureStore(setting / "lora.zarr", "acts"))


def test_a_checkpoint_the_run_did_not_keep_is_named_and_writes_nothing(setting, tmp_path):
    settings = capture_settings(toy_config(), "toy", "checkpoint")
    inputs = [setting / "tiny", setting / "logmel80.zarr", setting / "manifest.parquet", setting / "folds.parquet"]
    with pytest.raises(InputError) as error:
        capture_checkpoint(toy_run(), settings, "step3", setting / "lora", *inputs, tmp_path / "step3.zarr")
    message = str(error.value)
    assert toy_run().id in message and "checkpoint step3 was not kept" in message
    assert "training.checkpoints" in message and "['epoch0', 'epoch1']" in message
    with pytest.raises(InputError, match=r"the run keeps no checkpoints"):
        capture_checkpoint(toy_run(), settings, "epoch0", tmp_path, *inputs, tmp_path / "epoch0.zarr")
    with pytest.raises(InputError, match=r"'latest' is not a checkpoint id"):
        capture_checkpoint(toy_run(), settings, "latest", setting / "lora", *inputs, tmp_path / "latest.zarr")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_capture_settings_leave_out_the_frame_level_keys():
    settings = capture_settings(toy_config(), "toy", "checkpoint")
    assert settings["capture"] == {"batch_size": 16}
    frames = {"resid_layers": [0], "lora_b_blocks": [1], "frame_dtype": "float16"}
    assert capture_settings(toy_config(capture=frames), "toy", "checkpoint") == settings
    assert capture_settings(toy_config(capture=frames), "toy", "acts") != capture_settings(toy_config(), "toy", "acts")
    assert capture_settings(toy_config(capture={"batch_size": 4}), "toy", "checkpoint") != settings
    with pytest.raises(InputError, match=r"unknown store kind 'frames'"):
        capture_settings(toy_config(), "toy", "frames")
