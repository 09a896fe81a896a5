"""Layer erasure: known answers for the metrics and scores, erasures that must change nothing (an
identity block skipped, a zero LoRA delta removed), one that must (a trained LoRA delta, equal to
zeroing its B weights), hooks removed afterwards, and the entry point end to end."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from toy_runs import CLASSES, build_toy_dataset, toy_config, toy_run, train_run

from workflow_scripts.analyses.erasure import (
    STATISTICS,
    condition_metrics,
    conditions_for,
    deltas,
    erasure_settings,
    erasure_table,
    main,
    run_conditions,
    run_erasure,
)
from workflow_scripts.capture.passes import lora_modules, lora_parts
from workflow_scripts.capture.run import feature_batches, fold_clips, load_run_model
from workflow_scripts.errors import InputError
from workflow_scripts.features import FeatureStore, collate
from workflow_scripts.models.encoder import classification_model, classify

SETTINGS = {"batch_size": 5, "device": "cpu", "legacy": False, "max_seconds": 30, "classes": CLASSES}
METHODS = {"lora": ("q_proj+v_proj", 4), "lora_init": ("q_proj+v_proj", 4), "frozen": ("none", 0)}


def test_condition_metrics_known_answer():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]]))
    metrics = condition_metrics(logits, np.array([0, 1, 2, 2]), ["a", "b", "c"])
    assert metrics["war"] == pytest.approx(0.5)
    assert metrics["uar"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert metrics["confidence"] == pytest.approx((0.7 + 0.5 + 0.8 + 0.6) / 4)
    true_class = [0.7, 0.25, 0.8, 0.1]
    assert metrics["loss"] == pytest.approx(-sum(math.log(p) for p in true_class) / 4)


def test_the_scores_as_the_paper_wrote_them_and_sign_corrected():
    baseline = {"uar": 0.6, "war": 0.7, "confidence": 0.8, "loss": 0.9}
    erased = {"uar": 0.4, "war": 0.6, "confidence": 0.5, "loss": 1.9}
    d = deltas(baseline, erased)
    assert d["delta_uar"] == pytest.approx(0.2) and d["delta_war"] == pytest.approx(0.1)
    assert d["delta_confidence"] == pytest.approx(0.3) and d["delta_loss"] == pytest.approx(1.0)
    assert d["score_paper"] == pytest.approx(0.1 + 0.15 - 0.1)
    assert d["score_corrected"] == pytest.approx(0.1 + 0.15 + 0.1)
    assert all(v == 0 for v in deltas(baseline, baseline).values())


def test_conditions_in_order_and_lora_ones_only_with_lora():
    assert conditions_for(2, False) == [("baseline", -1), ("skip_block", 0), ("skip_block", 1),
                                        ("skip_first", 1), ("skip_first", 2)]
    with_lora = conditions_for(2, True)
    assert len(with_lora) == 4 * 2 + 1
    assert with_lora[5:] == [("lora_off", 0), ("lora_off", 1), ("lora_off_from", 0), ("lora_off_from", 1)]


def test_table_is_tidy_with_zero_deltas_at_the_baseline():
    rng = np.random.default_rng(0)
    logits = {("baseline", -1): rng.normal(size=(6, 4)), ("skip_block", 0): rng.normal(size=(6, 4))}
    table = erasure_table(logits, np.array([0, 1, 2, 3, 0, 1]), CLASSES)
    assert list(table.columns) == ["condition", "layer", "statistic", "value", "clips"]
    assert len(table) == 2 * len(STATISTICS) and (table["clips"] == 6).all()
    baseline = table[table["condition"] == "baseline"].set_index("statistic")["value"]
    assert (baseline[list(STATISTICS[4:])] == 0).all()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = build_toy_dataset(tmp_path_factory.mktemp("erasure"))
    for method, (targets, rank) in METHODS.items():
        train_run(root, root / method, method=method, targets=targets, rank=rank)
    return root


def model_of(dataset, method):
    targets, rank = METHODS[method]
    run = toy_run(method, targets, rank)
    return load_run_model(run, dataset / "tiny", dataset / method / "weights", CLASSES)


@pytest.fixture(scope="module")
def test_batches(dataset):
    store = FeatureStore(str(dataset / "logmel80.zarr"))
    clips = fold_clips(toy_run(), pd.read_parquet(dataset / "manifest.parquet"),
                       pd.read_parquet(dataset / "folds.parquet"), store, CLASSES)
    test = clips[clips["split"] == "test"].reset_index(drop=True)
    return [(f, m) for _, f, m in feature_batches(test, store, SETTINGS, 5, torch.device("cpu"))]


def test_skipping_a_block_that_is_the_identity_changes_nothing(dataset, test_batches):
    model = model_of(dataset, "lora")
    block = classification_model(model).encoder.layers[1]
    with torch.no_grad():  # attention and MLP add exactly zero: the block outputs its input
        for linear in (block.self_attn.out_proj, block.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
    conditions = [("baseline", -1), ("skip_block", 1), ("skip_block", 0)]
    logits = run_conditions(model, test_batches, conditions, False)
    np.testing.assert_array_equal(logits[("skip_block", 1)], logits[("baseline", -1)])
    assert not np.allclose(logits[("skip_block", 0)], logits[("baseline", -1)])  # the other block is not
    table = erasure_table(logits, np.zeros(len(logits[("baseline", -1)]), dtype=int), CLASSES)
    assert (table[table["condition"] == "skip_block"].query("layer == 1")["value"].iloc[4:] == 0).all()


def test_removing_a_zero_lora_delta_changes_nothing(dataset, test_batches):
    model = model_of(dataset, "lora_init")
    assert all(not lora_parts(m)[1].weight.any() for m in lora_modules(model).values())  # B = 0
    conditions = conditions_for(2, True)
    logits = run_conditions(model, test_batches, conditions, False)
    for key in conditions:
        if key[0].startswith("lora_off"):
            np.testing.assert_array_equal(logits[key], logits[("baseline", -1)])


def test_removing_a_trained_lora_delta_equals_zeroing_its_b_weights(dataset, test_batches):
    model = model_of(dataset, "lora")
    conditions = [("baseline", -1), ("lora_off", 0), ("lora_off_from", 0)]
    logits = run_conditions(model, test_batches, conditions, False)
    assert np.abs(logits[("lora_off", 0)] - logits[("baseline", -1)]).max() > 1e-4  # the ablation is real
    with torch.no_grad():  # independently: the adapter's B weights at block 0 set to zero
        for (block, _), module in lora_modules(model).items():
            if block == 0:
                lora_parts(module)[1].weight.zero_()
        zeroed = np.concatenate([classify(model, f, m).numpy() for f, m in test_batches])
    np.testing.assert_allclose(logits[("lora_off", 0)], zeroed, atol=1e-6)
    assert not np.allclose(logits[("lora_off_from", 0)], zeroed)  # block 1's delta also removed there


def _hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_are_removed_afterwards_also_after_an_error(dataset, test_batches):
    model = model_of(dataset, "lora")
    before = _hooks(model)
    logits = run_conditions(model, test_batches, conditions_for(2, True), False)
    assert _hooks(model) == before
    again = run_conditions(model, test_batches, [("baseline", -1)], False)
    np.testing.assert_array_equal(again[("baseline", -1)], logits[("baseline", -1)])
    bad = [(torch.zeros(1, 3, 10), torch.ones(1, 10, dtype=torch.bool))]  # 3 mel bins: conv1 fails
    with pytest.raises(RuntimeError):
        run_conditions(model, bad, [("skip_first", 2)], False)
    with pytest.raises(RuntimeError):
        run_conditions(model, bad, [("lora_off_from", 0)], False)
    assert _hooks(model) == before


def arguments(dataset, method, out):
    targets, rank = METHODS[method]
    run = toy_run(method, targets, rank)
    return ["--spec", json.dumps(SETTINGS), "--dataset", run.dataset, "--protocol", run.protocol,
            "--model", run.model, "--method", method, "--targets", targets, "--rank", str(rank),
            "--seed", "0", "--fold", "1", "--checkpoint", str(dataset / "tiny"),
            "--features", str(dataset / "logmel80.zarr"), "--manifest", str(dataset / "manifest.parquet"),
            "--folds", str(dataset / "folds.parquet"),
            "--weights", str(dataset / method / "weights"), "--out", str(out)]


def test_main_writes_the_table_with_run_columns_and_the_figure(dataset, tmp_path, capsys):
    started = time.perf_counter()
    main(arguments(dataset, "lora", tmp_path / "lora.parquet"))
    with capsys.disabled():
        print(f"\nerasure main() on the toy lora run: {time.perf_counter() - started:.2f} s")
    table = pd.read_parquet(tmp_path / "lora.parquet")
    assert list(table.columns[:9]) == ["run", "dataset", "protocol", "model", "method", "targets", "rank",
                                       "seed", "fold"]
    assert (table["run"] == toy_run().id).all() and (table["clips"] == 16).all()
    assert list(dict.fromkeys(zip(table["condition"], table["layer"]))) == conditions_for(2, True)
    assert len(table) == 9 * len(STATISTICS)
    predictions = pd.read_parquet(dataset / "lora" / "predictions.parquet").query("split == 'test'")
    from workflow_scripts.metrics import classification_report

    uar = classification_report(predictions["label"].map(CLASSES.index),
                                predictions["prediction"].map(CLASSES.index), CLASSES)["uar"]
    baseline = table[table["condition"] == "baseline"].set_index("statistic")["value"]
    assert baseline["uar"] == pytest.approx(uar)  # the baseline is the run as it was evaluated
    assert (tmp_path / "lora.png").stat().st_size > 0 and (tmp_path / "lora.svg").stat().st_size > 0

    main(arguments(dataset, "frozen", tmp_path / "frozen.parquet"))
    frozen = pd.read_parquet(tmp_path / "frozen.parquet")
    assert set(frozen["condition"]) == {"baseline", "skip_block", "skip_first"}
    assert (tmp_path / "frozen.svg").exists()


def test_a_fold_without_test_clips_is_named(dataset, tmp_path):
    folds = pd.read_parquet(dataset / "folds.parquet")
    folds.loc[folds["split"] == "test", "split"] = "val"
    folds.to_parquet(tmp_path / "folds.parquet")
    with pytest.raises(InputError, match=r"fold 1 of toy \(loso_speaker\) has no test clips"):
        run_erasure(toy_run(), SETTINGS, dataset / "tiny", dataset / "lora" / "weights",
                    dataset / "logmel80.zarr", dataset / "manifest.parquet", tmp_path / "folds.parquet")


def test_legacy_runs_the_30_s_window(dataset, monkeypatch):
    import workflow_scripts.analyses.erasure as erasure

    monkeypatch.setattr(erasure, "conditions_for", lambda *_: [("baseline", -1)])  # 30-s passes are slow

    def baseline(legacy):
        table = run_erasure(toy_run(), {**SETTINGS, "legacy": legacy}, dataset / "tiny",
                            dataset / "lora" / "weights", dataset / "logmel80.zarr",
                            dataset / "manifest.parquet", dataset / "folds.parquet")
        return table.set_index("statistic")["value"]

    legacy = baseline(True)
    model = model_of(dataset, "lora")
    store = FeatureStore(str(dataset / "logmel80.zarr"))
    clips = fold_clips(toy_run(), pd.read_parquet(dataset / "manifest.parquet"),
                       pd.read_parquet(dataset / "folds.parquet"), store, CLASSES)
    test = clips[clips["split"] == "test"].reset_index(drop=True)
    features, _ = collate([store[store.index[u]] for u in test["utt_id"]], 3000, legacy=True)
    assert features.shape[-1] == 3000
    with torch.no_grad():  # independently: every clip in one 30-s batch, unmasked
        logits = classify(model, features, None, legacy=True).numpy()
    expected = condition_metrics(logits, test["label"].to_numpy(), CLASSES)
    assert legacy["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert legacy["loss"] != pytest.approx(baseline(False)["loss"], rel=1e-5)


def test_settings_from_a_config():
    config = toy_config(legacy=True)
    config["analyses"]["erasure"] = {"batch_size": 16}  # the key the workflow's schema adds
    assert erasure_settings(config, "toy") == {"batch_size": 16, "device": "cpu", "legacy": True,
                                               "max_seconds": config["audio"]["max_seconds"],
                                               "classes": CLASSES}
