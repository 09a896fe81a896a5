"""Linear probes: a planted linear signal found at its layer only, the choice of C by validation
UAR, refusals of splits a probe cannot use, and the entry point on a real captured store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from toy_runs import CLASSES, captured_lora_run, toy_run

from workflow_scripts.analyses.probes import (
    fit_and_score_probe,
    fit_probe,
    head_table,
    main,
    probe_table,
    scores,
    store_probes,
)
from workflow_scripts.errors import InputError
from workflow_scripts.metrics import classification_report

SETTINGS = {"c_grid": [0.001, 0.01, 0.1, 1.0, 10.0], "max_iter": 2000, "seed": 0}


def planted(per_split: dict, n_classes=4, layers=4, hidden=16, signal_layer=2, shift=4.0, seed=0):
    """Gaussian noise ``[n, layers, hidden]`` where only ``signal_layer`` moves each class by
    ``shift`` along its own random unit direction; ``per_split`` is clips per class per split."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_classes, hidden))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    labels = np.concatenate([np.repeat(np.arange(n_classes), k) for k in per_split.values()])
    splits = np.concatenate([np.full(k * n_classes, split) for split, k in per_split.items()])
    pooled = rng.normal(size=(len(labels), layers, hidden)).astype(np.float32)
    pooled[:, signal_layer] += shift * directions[labels]
    return pooled, labels, splits


def test_a_planted_signal_is_found_at_its_layer_and_nowhere_else():
    pooled, labels, splits = planted({"train": 200, "val": 100, "test": 100})
    table = probe_table(pooled, labels, splits, ["a", "b", "c", "d"], SETTINGS)
    uar = table[table["statistic"] == "uar"].set_index("layer")["value"]
    assert uar[2] > 0.9
    assert all(uar[layer] < 0.45 for layer in (0, 1, 3))  # chance is 0.25
    assert len(table) == 4 * 5 and set(table["statistic"]) == {"uar", "war", "macro_f1", "c", "val_uar"}
    assert (table["readout"] == "probe").all() and (table["clips"] == 400).all()


def test_c_is_the_grid_s_best_on_validation_uar_and_the_probe_fitted_with_it_is_scored():
    # A weak signal and few training clips, so the regularisation matters.
    pooled, labels, splits = planted({"train": 15, "val": 60, "test": 60}, layers=1, signal_layer=0,
                                     shift=0.6, seed=3)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
        (pooled[splits == s, 0], labels[splits == s]) for s in ("train", "val", "test"))
    classes = ["a", "b", "c", "d"]
    grid = [10.0, 0.001, 1.0, 0.01, 0.1]  # unsorted on purpose
    result = fit_and_score_probe(train_x, train_y, val_x, val_y, test_x, test_y, classes, grid, 2000, 0)
    val_uar = {}
    for c in grid:  # the direct loop
        probe = fit_probe(train_x, train_y, c, 2000, 0)
        val_uar[c] = scores(val_y, probe.predict(val_x.astype(float)), classes)["uar"]
    assert len(set(val_uar.values())) > 1  # the choice is not trivial
    best = min(c for c in grid if val_uar[c] == max(val_uar.values()))
    assert result["c"] == best and result["val_uar"] == max(val_uar.values())
    probe = fit_probe(train_x, train_y, best, 2000, 0)
    expected = scores(test_y, probe.predict(test_x.astype(float)), classes)
    assert {k: result[k] for k in expected} == expected


def test_ties_on_validation_go_to_the_smaller_c():
    pooled, labels, splits = planted({"train": 30, "val": 30, "test": 30}, layers=1, signal_layer=0,
                                     shift=20.0)  # separable: every C scores 1.0 on validation
    data = [a for s in ("train", "val", "test") for a in (pooled[splits == s, 0], labels[splits == s])]
    result = fit_and_score_probe(*data, ["a", "b", "c", "d"], [1.0, 0.1, 10.0], 2000, 0)
    assert result["val_uar"] == 1.0 and result["c"] == 0.1


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_split_with_one_class_is_refused_and_named(split):
    pooled, labels, splits = planted({"train": 5, "val": 5, "test": 5}, layers=1, signal_layer=0)
    labels = labels.copy()
    labels[splits == split] = 1
    with pytest.raises(InputError, match=rf"acts.zarr: the '{split}' split has clips of one class only .*"
                                         "at least two classes"):
        probe_table(pooled, labels, splits, ["a", "b", "c", "d"], SETTINGS, source="acts.zarr")


def test_a_split_without_clips_is_refused_and_named():
    pooled, labels, splits = planted({"train": 5, "val": 5, "test": 5}, layers=1, signal_layer=0)
    splits = np.where(splits == "val", "train", splits)
    with pytest.raises(InputError, match=r"the 'val' split has no clips; a probe needs at least two classes"):
        probe_table(pooled, labels, splits, ["a", "b", "c", "d"], SETTINGS)


def test_head_rows_are_the_test_clips_argmax_known_answer():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0], [9.0, 9.0]])
    labels, splits = np.array([0, 0, 1, 1, 1]), np.array(["test", "test", "test", "test", "train"])
    table = head_table(logits, labels, splits, ["a", "b"], layer=6).set_index("statistic")
    # test clips: predictions 0, 1, 0, 1 against 0, 0, 1, 1 -> recall 1/2 per class
    assert table.loc["uar", "value"] == 0.5 and table.loc["war", "value"] == 0.5
    assert (table["layer"] == 6).all() and (table["readout"] == "head").all() and (table["clips"] == 4).all()


@pytest.mark.parametrize("grid", [[], [0.1, 0.0], [0.1, "1"]])
def test_a_bad_c_grid_names_its_key(grid):
    from workflow_scripts.analyses.probes import check_settings

    with pytest.raises(InputError, match="analyses.probes.c_grid"):
        check_settings({**SETTINGS, "c_grid": grid})


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    return captured_lora_run(tmp_path_factory.mktemp("probes"))


def run_arguments(run) -> list[str]:
    return [a for name in ("dataset", "protocol", "model", "method", "targets", "rank", "seed", "fold")
            for a in (f"--{name}", str(getattr(run, name)))]


def test_the_entry_point_writes_the_table_with_the_run_and_the_figures(captured, tmp_path):
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.provenance import read_provenance

    out = tmp_path / "probes" / "run.parquet"
    main(run_arguments(toy_run()) + ["--acts", str(captured), "--spec", json.dumps(SETTINGS),
                                     "--out", str(out)])
    table = pd.read_parquet(out)
    run_columns = ["run", "dataset", "protocol", "model", "method", "targets", "rank", "seed", "fold"]
    assert list(table.columns) == run_columns + ["readout", "layer", "statistic", "value", "clips"]
    assert (table["run"] == toy_run().id).all() and (table["fold"] == 1).all()
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".svg").stat().st_size > 0
    assert read_provenance(out)["step"] == "probes"

    store = CaptureStore(captured)
    probes = table[table["readout"] == "probe"]
    assert set(probes["layer"]) == set(range(store.n_layers + 1))
    assert set(probes.loc[probes["statistic"] == "c", "value"]) <= set(SETTINGS["c_grid"])
    head = table[table["readout"] == "head"].set_index("statistic")
    assert (head["layer"] == store.n_layers).all()
    test = (store.utterances()["split"] == "test").to_numpy()
    expected = classification_report(store.utterances()["label"].to_numpy()[test],
                                      np.argmax(store.logits()[test], axis=-1), CLASSES)
    for name in ("uar", "war", "macro_f1"):
        assert head.loc[name, "value"] == pytest.approx(expected[name])
    assert (table["clips"] == test.sum()).all()


def test_a_store_of_another_run_is_refused(captured, tmp_path):
    with pytest.raises(InputError, match="holds run"):
        main(run_arguments(toy_run(seed=1)) + ["--acts", str(captured), "--spec", json.dumps(SETTINGS),
                                                "--out", str(tmp_path / "x.parquet")])


def test_store_probes_names_the_store_when_a_split_is_unusable(captured, monkeypatch):
    from workflow_scripts.capture.store import CaptureStore

    store = CaptureStore(captured)
    utterances = store.utterances()
    utterances.loc[utterances["split"] == "val", "label"] = 0
    monkeypatch.setattr(store, "utterances", lambda: utterances)
    with pytest.raises(InputError, match=r"acts.zarr: the 'val' split has clips of one class only"):
        store_probes(store, SETTINGS)
