"""Training keeps checkpoints (training.checkpoints): the files, their metadata and contents, a
run's results unchanged by keeping them, resuming, and bad input. Tiny random Whisper, toy data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from toy_runs import CLASSES, build_toy_dataset, settings, toy_config, toy_run, train_run

from workflow_scripts.errors import InputError
from workflow_scripts.runs import check_training_config
from workflow_scripts.train.checkpoints import (
    FORMAT,
    checkpoint_metadata,
    load_checkpoint_tensors,
    require_checkpoint,
)
from workflow_scripts.train.methods import build_model, load_trained, trainable_state

KEPT = {"epochs": [0, 1, 2], "steps": [1, 3]}
EPOCHS = 2  # the toy's default is 3; two keep the runs cheap
# 64 training clips in batches of 8: 8 optimiser steps per epoch.
STEPS = {"epoch0": 0, "step1": 1, "step3": 3, "epoch1": 8, "epoch2": 16}
RUN_ID = "toy/loso_speaker/tiny/lora/q_proj+v_proj/r4/seed0/fold1"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_toy_dataset(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """The same LoRA run trained with checkpoints (``kept``) and without (``plain``)."""
    root = tmp_path_factory.mktemp("runs")
    return {"kept": (root / "kept", train_run(dataset, root / "kept", epochs=EPOCHS, checkpoints=KEPT)),
            "plain": (root / "plain", train_run(dataset, root / "plain", epochs=EPOCHS))}


def test_keeping_checkpoints_does_not_change_the_run(runs):
    (kept, with_them), (plain, without) = runs["kept"], runs["plain"]
    for key in ("test", "val", "best_epoch", "trainable_parameters"):
        assert with_them[key] == without[key]
    pd.testing.assert_frame_equal(pd.read_parquet(kept / "predictions.parquet"),
                                  pd.read_parquet(plain / "predictions.parquet"))
    pd.testing.assert_frame_equal(pd.read_csv(kept / "history.csv").drop(columns="seconds"),
                                  pd.read_csv(plain / "history.csv").drop(columns="seconds"))
    a, b = (load_file(folder / "weights" / "adapter_model.safetensors") for folder in (kept, plain))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert sorted(p.name for p in (plain / "checkpoints").iterdir()) == []  # the default keeps none


def test_checkpoint_files_carry_the_documented_metadata(runs):
    folder = runs["kept"][0] / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{name}.safetensors" for name in STEPS)
    assert not (runs["kept"][0] / ".resume").exists()
    for name, step in STEPS.items():
        metadata = checkpoint_metadata(folder / f"{name}.safetensors")
        assert metadata == {"format": FORMAT, "run": RUN_ID, "method": "lora", "checkpoint": name, "step": step,
                            "epoch": step / 8, "steps_per_epoch": 8, "scaling": 2.0}  # alpha 8 / rank 4


def test_epoch0_is_the_initial_state_and_the_best_epoch_the_saved_weights(runs, dataset):
    folder, metrics = runs["kept"][0] / "checkpoints", runs["kept"][1]
    initial = trainable_state(build_model(dataset / "tiny", CLASSES, toy_run(), settings()["lora"]))
    epoch0 = load_checkpoint_tensors(folder / "epoch0.safetensors")
    assert epoch0.keys() == initial.keys()  # peft's names, the head under modules_to_save
    assert any("lora_A.default" in name for name in epoch0)
    assert any("modules_to_save" in name for name in epoch0)
    assert all(torch.equal(epoch0[name], initial[name]) for name in initial)
    step1 = load_checkpoint_tensors(folder / "step1.safetensors", "np")
    assert not all(np.array_equal(step1[name], epoch0[name].numpy()) for name in epoch0)
    saved = load_trained(runs["kept"][0] / "weights", dataset / "tiny", CLASSES, "lora").state_dict()
    best = load_checkpoint_tensors(folder / f"epoch{metrics['best_epoch']}.safetensors")
    assert all(torch.equal(best[name], saved[name]) for name in best)


def test_a_resumed_run_keeps_the_checkpoints_of_its_killed_attempt(runs, dataset, tmp_path, monkeypatch, caplog):
    from workflow_scripts.train import loop

    class Killed(Exception):
        pass

    real_evaluate, calls = loop.evaluate, []

    def evaluate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # during epoch 2, after epoch 1's resume state
            raise Killed
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate_then_die)
    with pytest.raises(Killed):
        train_run(dataset, tmp_path, epochs=EPOCHS, checkpoints=KEPT)
    early = ["epoch0", "epoch1", "step1", "step3"]
    assert sorted(p.stem for p in (tmp_path / ".resume" / "checkpoints").iterdir()) == early
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    with caplog.at_level("INFO", logger="workflow_scripts.train.loop"):
        resumed = train_run(dataset, tmp_path, epochs=EPOCHS, checkpoints=KEPT)
    assert "resuming after epoch 1" in caplog.text
    assert resumed["test"] == runs["kept"][1]["test"]
    for name in STEPS:  # the same files as the uninterrupted run's, early ones included
        a = load_checkpoint_tensors(tmp_path / "checkpoints" / f"{name}.safetensors")
        b = load_checkpoint_tensors(runs["kept"][0] / "checkpoints" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_full_keeps_every_weight_and_drops_checkpoints_left_by_other_settings(dataset, tmp_path):
    leftover = tmp_path / ".resume" / "checkpoints" / "step5.safetensors"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"from a run with other settings")
    train_run(dataset, tmp_path, method="full", targets="none", rank=0, epochs=1,
              checkpoints={"epochs": [0, 1]})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch0.safetensors",
                                                                             "epoch1.safetensors"]
    metadata = checkpoint_metadata(tmp_path / "checkpoints" / "epoch1.safetensors")
    assert (metadata["method"], metadata["scaling"], metadata["step"]) == ("full", None, 8)
    model = load_trained(tmp_path / "weights", dataset / "tiny", CLASSES, "full")
    epoch1 = load_checkpoint_tensors(tmp_path / "checkpoints" / "epoch1.safetensors")
    state = model.state_dict()
    assert "encoder.layers.0.fc1.weight" in epoch1 and "encoder.embed_positions.weight" not in epoch1
    assert all(torch.equal(epoch1[name], state[name]) for name in epoch1)  # one epoch: the best


def test_methods_that_keep_none_get_an_empty_folder_and_ignore_the_setting(dataset, tmp_path):
    for method in ("frozen", "lora_init", "lora_random"):
        assert "checkpoints" not in settings(method, checkpoints=KEPT)
        assert settings(method, checkpoints=KEPT) == settings(method)  # a change reruns nothing
    assert settings("lora", checkpoints=KEPT)["checkpoints"] == KEPT
    assert settings("full", checkpoints=KEPT)["checkpoints"] == KEPT
    train_run(dataset, tmp_path, method="lora_init", epochs=EPOCHS, checkpoints=KEPT)
    assert (tmp_path / "checkpoints").is_dir() and not any((tmp_path / "checkpoints").iterdir())


def test_steps_outside_the_first_epoch_and_late_epochs_stop_before_training(dataset, tmp_path):
    with pytest.raises(InputError, match=r"training\.checkpoints\.steps: \[8, 9\] do not lie within the first "
                                         r"epoch, which has 8 optimiser steps"):
        train_run(dataset, tmp_path / "steps", checkpoints={"steps": [1, 8, 9]})
    assert not (tmp_path / "steps").exists()
    late = r"training\.checkpoints\.epochs: \[5\] lie after the last epoch \(training\.epochs = 3\)"
    with pytest.raises(InputError, match=late):
        check_training_config(toy_config(checkpoints={"epochs": [1, 5]}))
    with pytest.raises(InputError, match=late):
        train_run(dataset, tmp_path / "epochs", checkpoints={"epochs": [1, 5]})
    assert not (tmp_path / "epochs").exists()
    check_training_config(toy_config(checkpoints={"epochs": [0, 3]}))


def test_a_checkpoint_the_run_did_not_keep_names_run_checkpoint_and_setting(runs, tmp_path):
    folder = runs["kept"][0]
    assert require_checkpoint(RUN_ID, folder, "step3") == folder / "checkpoints" / "step3.safetensors"
    with pytest.raises(InputError) as error:
        require_checkpoint(RUN_ID, folder, "step5", kept=["epoch0", "step5"])
    message = str(error.value)
    assert RUN_ID in message and "checkpoint step5 was not kept" in message and "training.checkpoints" in message
    assert "['epoch0', 'step1', 'step3', 'epoch1', 'epoch2']" in message  # what the run holds, in order
    with pytest.raises(InputError, match=r"the run keeps no checkpoints .* epoch2 is asked for. "
                                         r"To add it, set training.checkpoints"):
        require_checkpoint(RUN_ID, tmp_path, "epoch2")
    assert json.loads((folder / "metrics.json").read_text())["run"] == RUN_ID
