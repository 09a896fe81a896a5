"""Logit lens: known answers for the divergences, and the normed lens reproducing a real run's logits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from toy_runs import CLASSES, captured_lora_run, toy_run

from workflow_scripts.analyses.logit_lens import (
    apply_head,
    head_weights,
    js_divergence,
    kl_divergence,
    lens_statistics,
    log_softmax,
    store_lens,
)


def test_kl_is_zero_on_identical_and_positive_otherwise_with_the_paper_s_direction():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4))
    other = rng.normal(size=(50, 4))
    log_p, log_q = log_softmax(logits), log_softmax(other)
    np.testing.assert_allclose(kl_divergence(log_p, log_p), 0, atol=1e-15)
    assert (kl_divergence(log_p, log_q) > 0).all()
    p, q = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # KL(p‖q) by hand
    assert kl_divergence(np.log(p), np.log(q))[0] == pytest.approx(expected)
    assert kl_divergence(np.log(q), np.log(p))[0] != pytest.approx(expected)  # not symmetric


def test_js_is_symmetric_and_within_ln_2():
    rng = np.random.default_rng(1)
    log_p, log_q = log_softmax(rng.normal(size=(100, 5)) * 5), log_softmax(rng.normal(size=(100, 5)) * 5)
    np.testing.assert_allclose(js_divergence(log_p, log_q), js_divergence(log_q, log_p), atol=1e-14)
    assert (js_divergence(log_p, log_q) >= 0).all() and (js_divergence(log_p, log_q) <= math.log(2) + 1e-12).all()
    disjoint = np.log(np.array([[1.0, 1e-300], [1e-300, 1.0]]))
    assert js_divergence(disjoint[:1], disjoint[1:])[0] == pytest.approx(math.log(2))
    from scipy.spatial.distance import jensenshannon

    p, q = np.exp(log_p[0]), np.exp(log_q[0])
    assert js_divergence(log_p[:1], log_q[:1])[0] == pytest.approx(jensenshannon(p, q) ** 2)


def test_log_softmax_is_stable_in_float64():
    out = log_softmax(np.array([[1000.0, 0.0], [-1000.0, -1000.0]], dtype=np.float32))
    assert out.dtype == np.float64
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0)
    assert out[1, 0] == pytest.approx(math.log(0.5))


def test_statistics_per_layer_known_answer():
    final = np.array([[2.0, 0.0], [0.0, 2.0]])
    lens = np.stack([np.array([[0.0, 2.0], [0.0, 2.0]]), final], axis=1)  # layer 0 half wrong, layer 1 = final
    table = lens_statistics(final, lens, np.array([0, 1]), ["a", "b"]).pivot(index="layer", columns="statistic",
                                                                             values="value")
    assert table.loc[0, "agreement"] == 0.5 and table.loc[1, "agreement"] == 1.0
    assert table.loc[1, "kl_final_layer"] == pytest.approx(0, abs=1e-15) and table.loc[0, "kl_final_layer"] > 0
    assert table.loc[0, "uar"] == 0.5 and table.loc[1, "uar"] == 1.0


def test_apply_head_is_the_two_linear_layers():
    rng = np.random.default_rng(2)
    projector = (rng.normal(size=(3, 4)), rng.normal(size=3))
    classifier = (rng.normal(size=(2, 3)), rng.normal(size=2))
    h = rng.normal(size=(5, 4))
    expected = (h @ projector[0].T + projector[1]) @ classifier[0].T + classifier[1]
    np.testing.assert_allclose(apply_head(h, projector, classifier), expected)


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    from workflow_scripts.capture.run import load_run_model
    from workflow_scripts.capture.store import CaptureStore

    acts = captured_lora_run(tmp_path_factory.mktemp("lens"))
    model = load_run_model(toy_run(), acts.parent / "tiny", acts.parent / "lora" / "weights", CLASSES)
    return CaptureStore(acts), head_weights(model)


def test_the_normed_lens_reproduces_the_model_at_the_last_layer_and_the_raw_lens_does_not(captured):
    store, (projector, classifier) = captured
    table = store_lens(store, projector, classifier, "test")
    last = store.n_layers
    normed = table[(table["lens"] == "normed") & (table["layer"] == last)].set_index("statistic")["value"]
    assert normed["kl_final_layer"] == pytest.approx(0, abs=1e-8) and normed["agreement"] == 1.0
    raw = table[(table["lens"] == "raw") & (table["layer"] == last)].set_index("statistic")["value"]
    assert raw["kl_final_layer"] > 1e-4  # the paper's lens skips the final LayerNorm
    assert set(table["layer"]) == set(range(last + 1)) and (table["clips"] == 16).all()
    predictions = pd.read_parquet(store.path.parent / "lora" / "predictions.parquet").query("split == 'test'")
    from workflow_scripts.metrics import classification_report

    model_uar = classification_report(predictions["label"].map(CLASSES.index).to_numpy(),
                                      predictions["prediction"].map(CLASSES.index).to_numpy(), CLASSES)["uar"]
    assert normed["uar"] == pytest.approx(model_uar)


def test_a_split_without_clips_is_named(captured):
    from workflow_scripts.errors import InputError

    store, head = captured
    with pytest.raises(InputError, match=r"analyses.logit_lens.split: .*acts.zarr has no 'nope' clips"):
        store_lens(store, *head, "nope")
