"""Training runs on a tiny random Whisper and synthetic, learnable log-mel features."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from toy_runs import CLASSES, build_toy_dataset, settings, train_run

from workflow_scripts.config import validate_config
from workflow_scripts.errors import InputError
from workflow_scripts.runs import Run, run_settings
from workflow_scripts.train.methods import load_trained
from workflow_scripts.train.run import run_training


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_toy_dataset(tmp_path_factory.mktemp("training"))


def split_sizes(dataset, fold=1) -> dict:
    folds = pd.read_parquet(dataset / "folds.parquet").query("protocol == 'loso_speaker' and fold == @fold")
    return folds["split"].value_counts().to_dict()


@pytest.fixture(scope="module")
def lora_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_run")
    return out, train_run(dataset, out)


def test_lora_run_writes_every_output(lora_run, dataset):
    out, metrics = lora_run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "history.csv", "metrics.json",
                                                     "predictions.parquet", "weights"]
    assert not any((out / "checkpoints").iterdir())  # training.checkpoints keeps none by default
    assert json.loads((out / "metrics.json").read_text())["run"] == metrics["run"]
    assert set(metrics["test"]) == {"uar", "war", "macro_f1", "per_class_recall", "confusion_matrix", "n"}
    assert metrics["selected_on"] == "val" and metrics["selected_on_test"] is False
    assert metrics["select_metric"] == "uar"
    assert metrics["trained_on"] == ["train"] and metrics["n_train"] == split_sizes(dataset)["train"] == 64
    assert 1 <= metrics["best_epoch"] <= 3 and metrics["test"]["n"] == 16
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"]
    assert (metrics["lora_alpha"], metrics["lora_alpha_policy"]) == (8.0, "ratio")  # 2 x rank 4
    assert metrics["provenance"]["settings"]["lr"] == 3e-3 and metrics["wall_seconds"] > 0
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["val_uar"].max() == pytest.approx(metrics["val"]["uar"])  # the best epoch was kept
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert list(predictions.columns) == ["utt_id", "split", "label", "prediction", "logits"]
    assert predictions["split"].value_counts().to_dict() == {"val": 16, "test": 16}


def test_predictions_carry_the_run_s_provenance(lora_run):
    from workflow_scripts.provenance import read_provenance

    out, metrics = lora_run
    record = read_provenance(out / "predictions.parquet")
    assert record["run"] == metrics["run"] and record["step"] == "train"
    assert record["config_hash"] and record["git_commit"] and record["packages"]["torch"]
    assert record == json.loads((out / "metrics.json").read_text())["provenance"]


def test_parameter_counts_leave_out_peft_s_copy_of_the_head(lora_run, dataset):
    from workflow_scripts.models.build import load_classifier

    base = sum(p.numel() for p in load_classifier(dataset / "tiny", CLASSES).parameters())
    lora = 2 * 2 * 4 * (32 + 32)  # 2 layers x (q_proj, v_proj) x rank 4 x (in + out)
    assert lora_run[1]["total_parameters"] == base + lora


def test_a_changed_input_invalidates_a_resume_state(dataset, tmp_path):
    from workflow_scripts.train.run import input_fingerprint

    folds = tmp_path / "folds.parquet"
    folds.write_bytes((dataset / "folds.parquet").read_bytes())
    before = input_fingerprint([dataset / "tiny", folds])
    os.utime(folds, ns=(1, 1))
    assert input_fingerprint([dataset / "tiny", folds]) != before


def test_lora_learns_the_synthetic_task(lora_run):
    assert lora_run[1]["test"]["uar"] >= 0.5  # chance is 0.25


def test_adapter_loads_with_plain_peft_and_reproduces_the_predictions(lora_run, dataset):
    from peft import PeftModel

    from workflow_scripts.features import FeatureStore, collate
    from workflow_scripts.models.build import load_classifier
    from workflow_scripts.models.encoder import classify

    out, _ = lora_run
    model = PeftModel.from_pretrained(load_classifier(dataset / "tiny", CLASSES), out / "weights").eval()
    assert (out / "weights" / "adapter_model.safetensors").is_file()
    predictions = pd.read_parquet(out / "predictions.parquet").query("split == 'test'")
    store = FeatureStore(str(dataset / "logmel80.zarr"))
    features, mask = collate([store[store.index[u]] for u in predictions["utt_id"]], max_frames=3000)
    with torch.no_grad():
        logits = classify(model, features, mask).numpy()
    np.testing.assert_allclose(logits, np.stack(predictions["logits"]), atol=1e-4)
    torch.testing.assert_close(
        next(p for n, p in model.named_parameters() if "lora_B" in n),
        next(p for n, p in load_trained(out / "weights", dataset / "tiny", CLASSES, "lora").named_parameters()
             if "lora_B" in n))


def test_same_config_and_seed_give_identical_metrics(lora_run, dataset, tmp_path):
    again = train_run(dataset, tmp_path / "again")
    first = lora_run[1]
    assert again["test"] == first["test"] and again["val"] == first["val"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "history.csv").drop(columns="seconds"),
                                  pd.read_csv(lora_run[0] / "history.csv").drop(columns="seconds"))
    train_run(dataset, tmp_path / "seed1", seed=1)
    other_losses = pd.read_csv(tmp_path / "seed1" / "history.csv")["train_loss"]
    assert not np.allclose(other_losses, pd.read_csv(lora_run[0] / "history.csv")["train_loss"])


def test_frozen_trains_only_the_head(dataset, tmp_path):
    metrics = train_run(dataset, tmp_path / "frozen", method="frozen", targets="none", rank=0)
    d, proj = 32, 256
    assert metrics["trainable_parameters"] == d * proj + proj + proj * 4 + 4
    assert (tmp_path / "frozen" / "weights" / "head.safetensors").is_file()
    model = load_trained(tmp_path / "frozen" / "weights", dataset / "tiny", CLASSES, "frozen")
    assert model.classifier.out_features == 4
    assert metrics["lora_alpha"] is None and metrics["lora_alpha_policy"] is None


def test_full_fine_tuning_trains_every_weight_but_the_fixed_positions(dataset, tmp_path):
    metrics = train_run(dataset, tmp_path / "full", method="full", targets="none", rank=0, epochs=1)
    positions = 1500 * 32  # the sinusoidal table, frozen by Hugging Face
    assert metrics["trainable_parameters"] == metrics["total_parameters"] - positions
    assert (tmp_path / "full" / "weights" / "model.safetensors").is_file()
    model = load_trained(tmp_path / "full" / "weights", dataset / "tiny", CLASSES, "full")
    assert model.config.id2label[2] == "angry"


def test_a_fixed_alpha_is_built_and_recorded(dataset, tmp_path):
    lora = {"alpha_policy": "fixed", "alpha": 64.0}
    metrics = train_run(dataset, tmp_path / "fixed", method="lora_init", rank=4, lora=lora)
    assert (metrics["lora_alpha"], metrics["lora_alpha_policy"]) == (64.0, "fixed")
    adapter = json.loads((tmp_path / "fixed" / "weights" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (4, 64.0)  # scaling 16, not 2


def test_class_weights_known_answer():
    from workflow_scripts.train.loop import class_weights

    weights = class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    # counts 3, 1, 2, 0 (an absent class counts as 1): 6 / (4 x count)
    torch.testing.assert_close(weights, torch.tensor([0.5, 1.5, 0.75, 1.5]))


def test_best_epoch_is_the_earliest_maximum_of_the_chosen_metric():
    from workflow_scripts.train.loop import best_epoch

    history = [{"epoch": 1, "val_uar": 0.50, "val_war": 0.60},
               {"epoch": 2, "val_uar": 0.70, "val_war": 0.60},
               {"epoch": 3, "val_uar": 0.60, "val_war": 0.80},
               {"epoch": 4, "val_uar": 0.70, "val_war": 0.80}]
    assert best_epoch(history, "val_uar") == 2  # tied with epoch 4: the earliest
    assert best_epoch(history, "val_war") == 3
    assert best_epoch(history[:1], "val_war") == 1


@pytest.mark.parametrize("metric, expected_epoch", [("uar", 2), ("war", 3)])
def test_the_loop_keeps_the_epoch_the_select_metric_picks(dataset, tmp_path, monkeypatch, metric,
                                                          expected_epoch):
    """The toy validation split is balanced (UAR = WAR), so the loop's per-epoch scores are
    scripted here to disagree; the run must keep the weights of the epoch its metric picks."""
    from workflow_scripts.train import loop

    scores = [(0.50, 0.60), (0.70, 0.60), (0.60, 0.80)]  # (UAR, WAR) of epochs 1-3
    snapshots = []

    def scripted_evaluate(classifier, data, classes, settings, device):
        snapshots.append(loop.trainable_state(classifier))
        uar, war = scores[len(snapshots) - 1]
        return {"uar": uar, "war": war, "macro_f1": 0.0}, None

    monkeypatch.setattr(loop, "evaluate", scripted_evaluate)
    out = tmp_path / metric
    metrics = train_run(dataset, out, method="frozen", targets="none", rank=0, select_metric=metric)
    assert metrics["select_metric"] == metric and metrics["best_epoch"] == expected_epoch
    kept = next(v for k, v in snapshots[expected_epoch - 1].items() if k.endswith("classifier.weight"))
    saved = load_trained(out / "weights", dataset / "tiny", CLASSES, "frozen").classifier.weight
    torch.testing.assert_close(saved, kept)
    assert not torch.equal(saved, next(v for k, v in snapshots[0].items() if k.endswith("classifier.weight")))


def test_class_weighted_run(dataset, tmp_path):
    metrics = train_run(dataset, tmp_path / "weighted", class_weighted=True, epochs=1)
    assert metrics["provenance"]["settings"]["class_weighted"] is True


def test_untrained_references(dataset, tmp_path):
    init = train_run(dataset, tmp_path / "init", method="lora_init")
    train_run(dataset, tmp_path / "random", method="lora_random")
    assert init["epochs"] == 0 and init["selected_on"] is None and init["select_metric"] is None
    assert init["trained_on"] == [] and init["n_train"] == 0 and init["val"] is not None
    assert pd.read_csv(tmp_path / "init" / "history.csv").empty
    init_model = load_trained(tmp_path / "init" / "weights", dataset / "tiny", CLASSES, "lora_init")
    random_model = load_trained(tmp_path / "random" / "weights", dataset / "tiny", CLASSES, "lora_random")
    b_init = [p for n, p in init_model.named_parameters() if "lora_B" in n]
    b_random = torch.cat([p.flatten() for n, p in random_model.named_parameters() if "lora_B" in n])
    assert all(torch.count_nonzero(b) == 0 for b in b_init)  # peft's B = 0
    assert float(b_random.std()) == pytest.approx(0.02, rel=0.15)  # the original's N(0, 0.02)


def test_references_and_frozen_run_without_the_settings_they_do_not_use(dataset, tmp_path):
    reference = settings("lora_random")
    assert "lr" not in reference and "select_on" not in reference and "epochs" not in reference
    metrics = run_training(Run("toy", "loso_speaker", "tiny", "lora_random", "v_proj", 4, 0, 1), reference,
                           dataset / "tiny", dataset / "logmel80.zarr", dataset / "manifest.parquet",
                           dataset / "folds.parquet", tmp_path / "reference")
    assert metrics["epochs"] == 0 and metrics["best_epoch"] == 0 and metrics["selected_on"] is None
    frozen = settings("frozen", epochs=1)
    assert "lora" not in frozen
    metrics = run_training(Run("toy", "loso_speaker", "tiny", "frozen", "none", 0, 0, 1), frozen, dataset / "tiny",
                           dataset / "logmel80.zarr", dataset / "manifest.parquet", dataset / "folds.parquet",
                           tmp_path / "frozen")
    assert metrics["epochs"] == 1 and metrics["selected_on"] == "val"


def test_clips_longer_than_max_seconds_are_listed_in_the_run_log(dataset, tmp_path, caplog):
    from workflow_scripts.features import FeatureStore

    store = FeatureStore(str(dataset / "logmel80.zarr"))
    folds = pd.read_parquet(dataset / "folds.parquet").query("fold == 1")
    lengths = np.diff(store.offsets)
    long = sorted(u for u in folds["utt_id"] if lengths[store.index[u]] > 80)  # 0.8 s = 80 frames
    assert 0 < len(long) < len(folds)
    with caplog.at_level("WARNING", logger="workflow_scripts.train.run"):
        train_run(dataset, tmp_path / "cropped", method="lora_init", audio={"max_seconds": 0.8})
    warning = next(r.getMessage() for r in caplog.records if "audio.max_seconds = 0.8 s" in r.getMessage())
    assert warning.startswith(f"{len(long)} clips of this run are longer than audio.max_seconds = 0.8 s")
    listed = [line.removeprefix("  - ") for line in warning.splitlines() if line.startswith("  - ")]
    assert set(listed) <= set(long) and len(listed) == min(len(long), 20)  # the first 20 and a count
    caplog.clear()
    with caplog.at_level("WARNING", logger="workflow_scripts.train.run"):
        train_run(dataset, tmp_path / "whole", method="lora_init")  # 30 s: nothing is cropped
    assert not [r for r in caplog.records if "clips of this run are longer" in r.getMessage()]


def test_the_clips_reported_cropped_are_those_collate_crops():
    from workflow_scripts.features import collate, max_frames_of
    from workflow_scripts.train.loop import SplitData
    from workflow_scripts.train.run import cropped_clips

    clips = [np.zeros((n, 80), dtype=np.float32) for n in (50, 51, 52, 53)]
    data = SplitData(clips=clips, labels=np.zeros(4, dtype=np.int64), utt_ids=["a", "b", "c", "d"])
    settings = {"legacy": False, "max_seconds": 0.51}  # 51 frames; collate keeps whole frame pairs
    _, mask = collate(clips, max_frames_of(settings["max_seconds"]))
    cropped_by_collate = [u for u, clip, kept in zip(data.utt_ids, clips, mask.sum(1)) if kept < len(clip)]
    assert cropped_clips({"test": data}, settings) == cropped_by_collate == ["d"]
    legacy = [np.zeros((n, 80), dtype=np.float32) for n in (2999, 3000, 3001)]
    data = SplitData(clips=legacy, labels=np.zeros(3, dtype=np.int64), utt_ids=["a", "b", "c"])
    assert cropped_clips({"test": data}, {"legacy": True, "max_seconds": 0.51}) == ["c"]


def test_legacy_selection_on_test_is_recorded(dataset, tmp_path):
    config = validate_config({
        "legacy": True, "datasets": {"toy": {"layout": "generic", "path": "x", "classes": CLASSES}},
        "training": {"epochs": 1, "lr": 3e-3, "device": "cpu", "select_on": "test"},
    })
    run = Run("toy", "loso_speaker", "tiny", "frozen", "none", 0, 0, 1)
    metrics = run_training(run, run_settings(config, "toy", "frozen"), dataset / "tiny", dataset / "logmel80.zarr",
                           dataset / "manifest.parquet", dataset / "folds.parquet", tmp_path / "legacy")
    assert metrics["selected_on"] == "test" and metrics["selected_on_test"] is True
    assert "test_uar" in pd.read_csv(tmp_path / "legacy" / "history.csv").columns
    # The original trained on every non-test clip: the fold's validation split joins training,
    # so it has no held-out score.
    sizes = split_sizes(dataset)
    assert metrics["trained_on"] == ["train", "val"] and metrics["n_train"] == sizes["train"] + sizes["val"]
    assert metrics["val"] is None
    predictions = pd.read_parquet(tmp_path / "legacy" / "predictions.parquet")
    assert predictions["split"].value_counts().to_dict() == {"test": sizes["test"]}


def test_bad_targets_and_missing_fold_stop_before_training(dataset, tmp_path):
    with pytest.raises(InputError, match=r"training\.targets: \['query'\] match no module of the encoder"):
        train_run(dataset, tmp_path / "bad", targets="query")
    with pytest.raises(InputError, match=r"has no fold 9 under protocol 'loso_speaker' \(folds: \[1, 2, 3, 4, 5, 6\]\)"):
        train_run(dataset, tmp_path / "bad", fold=9)
    assert not (tmp_path / "bad").exists()


def test_empty_training_split_is_named(dataset, tmp_path):
    folds = pd.read_parquet(dataset / "folds.parquet")
    folds = folds[~((folds.fold == 1) & (folds.split == "train"))]
    folds.to_parquet(tmp_path / "folds.parquet")
    run = Run("toy", "loso_speaker", "tiny", "lora", "v_proj", 4, 0, 1)
    with pytest.raises(InputError, match=r"fold 1: the train split is empty"):
        run_training(run, settings(), dataset / "tiny", dataset / "logmel80.zarr", dataset / "manifest.parquet",
                     tmp_path / "folds.parquet", tmp_path / "out")


def cli(dataset, out, epochs):
    spec = json.dumps(settings(epochs=epochs))
    return [sys.executable, "-m", "workflow_scripts.train.run", "--dataset", "toy", "--protocol", "loso_speaker",
            "--model", "tiny", "--method", "lora", "--targets", "q_proj+v_proj", "--rank", "4", "--seed", "0",
            "--fold", "2", "--checkpoint", str(dataset / "tiny"), "--features", str(dataset / "logmel80.zarr"),
            "--manifest", str(dataset / "manifest.parquet"), "--folds", str(dataset / "folds.parquet"),
            "--spec", spec, "--out", str(out)]


def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(dataset, tmp_path):
    epochs = 12
    subprocess.run(cli(dataset, tmp_path / "whole", epochs), check=True, capture_output=True)
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    resume_file = tmp_path / "killed" / ".resume" / "state.pt"
    process = subprocess.Popen(cli(dataset, tmp_path / "killed", epochs), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not resume_file.exists() and time.time() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)  # kill -9 right after the first epoch checkpoint
    process.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists(), "the run finished before it could be killed"
    finished = torch.load(resume_file, weights_only=False)["state"].epoch
    assert 1 <= finished < epochs

    rerun = subprocess.run(cli(dataset, tmp_path / "killed", epochs), check=True, capture_output=True, text=True)
    assert f"resuming after epoch {finished}" in rerun.stderr
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert resumed["test"] == whole["test"] and resumed["val"] == whole["val"]
    assert resumed["best_epoch"] == whole["best_epoch"]
    assert not (tmp_path / "killed" / ".resume").exists()  # cleaned up on success


def test_reported_scores_are_float32_and_agree_with_the_acts_store(dataset, tmp_path, monkeypatch):
    """On a GPU training and per-epoch scoring run under bf16 autocast; here CPU bf16 autocast
    stands in for it. The final scores must still be float32, as the acts store is captured, so
    that metrics.json, predictions.parquet and the store's logits give one number per run."""
    from toy_runs import toy_config, toy_run

    from workflow_scripts.capture.run import capture_store
    from workflow_scripts.capture.settings import capture_settings
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.metrics import classification_report
    from workflow_scripts.train import loop

    def cpu_bf16_autocast(device, enabled=True):
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=enabled)

    monkeypatch.setattr(loop, "autocast", cpu_bf16_autocast)
    out = tmp_path / "run"
    metrics = train_run(dataset, out, epochs=1)
    capture_store("acts", toy_run(), capture_settings(toy_config(), "toy", "acts"), dataset / "tiny",
                  out / "weights", dataset / "logmel80.zarr", dataset / "manifest.parquet",
                  dataset / "folds.parquet", tmp_path / "acts.zarr")
    store = CaptureStore(tmp_path / "acts.zarr", "acts")
    predictions = pd.read_parquet(out / "predictions.parquet").query("split == 'test'")
    position = {u: i for i, u in enumerate(store.utt_ids)}
    stored = store.logits()[[position[u] for u in predictions["utt_id"]]]
    # bf16 logits differ from float32 ones by about 1e-2; float32 ones agree to rounding.
    np.testing.assert_allclose(np.stack(predictions["logits"]), stored, atol=1e-5)
    labels = np.array([CLASSES.index(c) for c in predictions["label"]])
    from_store = classification_report(labels, stored.argmax(1), CLASSES)
    assert metrics["test"] == from_store
    assert json.loads((out / "metrics.json").read_text())["test"] == from_store
    # The probes' head row is read from the same store's logits: the same numbers again.
    from workflow_scripts.analyses.probes import head_table

    utterances = store.utterances()
    head = head_table(store.logits(), utterances["label"].to_numpy(), utterances["split"].to_numpy(),
                      store.classes, store.n_layers).set_index("statistic")["value"]
    assert {name: head[name] for name in ("uar", "war", "macro_f1")} == {
        name: metrics["test"][name] for name in ("uar", "war", "macro_f1")}
