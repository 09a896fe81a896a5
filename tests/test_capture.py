"""Capture correctness on a tiny trained LoRA run: every stored quantity against an independent
computation (Hugging Face's own hidden states, the run's predictions, the saved adapter weights,
autograd, a per-frame loop), batching invariance, the shared gradient subset, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from toy_runs import CLASSES, build_toy_dataset, toy_config, toy_run, train_run

from workflow_scripts.capture.hooks import Trace
from workflow_scripts.capture.passes import (
    CapturePlan,
    capture_forward,
    lora_modules,
    lora_parts,
    only_lora_requires_grad,
)
from workflow_scripts.capture.run import capture_store, load_run_model
from workflow_scripts.capture.settings import balanced_subset, capture_settings, resolve_indices
from workflow_scripts.capture.store import CONTRIBUTION_STATISTICS, CaptureStore
from workflow_scripts.errors import InputError
from workflow_scripts.features import FeatureStore, collate
from workflow_scripts.models.encoder import classification_model, classify


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_toy_dataset(tmp_path_factory.mktemp("capture"))


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """A trained LoRA run and a frozen run of fold 1."""
    folders = {}
    for method, targets, rank in [("lora", "q_proj+v_proj", 4), ("frozen", "none", 0)]:
        folders[method] = tmp_path_factory.mktemp(method)
        train_run(dataset, folders[method], method=method, targets=targets, rank=rank)
    return folders


def capture(dataset, folder, kind, out, method="lora", targets="q_proj+v_proj", rank=4, legacy=False, **capture):
    settings = capture_settings(toy_config(legacy=legacy, capture=capture), "toy", kind)
    run = toy_run(method, targets, rank)
    capture_store(kind, run, settings, dataset / "tiny", folder / "weights", dataset / "logmel80.zarr",
                  dataset / "manifest.parquet", dataset / "folds.parquet", out)
    return CaptureStore(out, kind)


@pytest.fixture(scope="module")
def stores(dataset, runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores")
    return {kind: capture(dataset, runs["lora"], kind, out / f"{kind}.zarr") for kind in ("acts", "grads")}


def lora_model(dataset, runs):
    return load_run_model(toy_run(), dataset / "tiny", runs["lora"] / "weights", CLASSES)


def clip_batch(dataset, utt_ids, legacy=False):
    store = FeatureStore(str(dataset / "logmel80.zarr"))
    return collate([store[store.index[u]] for u in utt_ids], 3000, legacy)


def test_acts_covers_every_clip_of_the_fold_tagged_by_split(stores, dataset):
    folds = pd.read_parquet(dataset / "folds.parquet").query("fold == 1")
    table = stores["acts"].utterances().set_index("utt_id")
    assert sorted(table.index) == sorted(folds["utt_id"])
    assert (table.loc[folds["utt_id"], "split"].to_numpy() == folds["split"].to_numpy()).all()
    assert sorted(stores["acts"].frame_items) == sorted(folds.loc[folds["split"] == "test", "utt_id"])


def test_stored_logits_equal_the_run_s_predictions(stores, runs):
    predictions = pd.read_parquet(runs["lora"] / "predictions.parquet").set_index("utt_id")
    store = stores["acts"]
    position = {u: i for i, u in enumerate(store.utt_ids)}
    stored = store.logits()[[position[u] for u in predictions.index]]
    np.testing.assert_allclose(stored, np.stack(predictions["logits"]), atol=1e-4)


def test_the_head_on_the_last_pooled_layernorm_reproduces_the_logits(stores, dataset, runs):
    hf = classification_model(lora_model(dataset, runs))
    normed = torch.from_numpy(stores["acts"].pooled("normed")[:, -1])
    with torch.no_grad():
        logits = hf.classifier(hf.projector(normed)).numpy()
    np.testing.assert_allclose(logits, stores["acts"].logits(), atol=1e-4)


def test_pooled_arrays_equal_hugging_face_hidden_states_under_legacy(dataset, runs, tmp_path):
    """Under legacy (30-s window, no mask) Hugging Face's own encoder forward applies: its
    hidden_states[l] is the residual stream at layer l, and its last entry is after the final LayerNorm."""
    store = capture(dataset, runs["lora"], "acts", tmp_path / "legacy.zarr", legacy=True)
    hf = classification_model(lora_model(dataset, runs))
    utt_ids = store.utt_ids[:3]
    features, _ = clip_batch(dataset, utt_ids, legacy=True)
    with torch.no_grad():
        hidden = hf.encoder(features, output_hidden_states=True).hidden_states
    n_layers = len(hidden) - 1
    resid, normed = store.pooled("resid")[:3], store.pooled("normed")[:3]
    for layer in range(n_layers):
        np.testing.assert_allclose(resid[:, layer], hidden[layer].mean(1).numpy(), atol=1e-5)
    np.testing.assert_allclose(normed[:, n_layers], hidden[n_layers].mean(1).numpy(), atol=1e-5)
    assert (store.utterances()["n_frames"] == 1500).all()
    assert store.frames(("resid", 0), 0).shape == (1500, 32)


def test_pooled_residuals_equal_masked_means_of_an_independent_forward(stores, dataset, runs):
    """Default mode: clips of an even number of frames, each alone (so nothing is padded or
    masked), through the encoder's own submodules and layers."""
    hf = classification_model(lora_model(dataset, runs))
    store = stores["acts"]
    features_store = FeatureStore(str(dataset / "logmel80.zarr"))
    even = [i for i, u in enumerate(store.utt_ids) if features_store.length(features_store.index[u]) % 2 == 0]
    for index in (even[0], even[-1]):
        features, mask = clip_batch(dataset, [store.utt_ids[index]])
        assert mask.all()
        with torch.no_grad():
            hidden = torch.nn.functional.gelu(hf.encoder.conv1(features))
            hidden = torch.nn.functional.gelu(hf.encoder.conv2(hidden)).permute(0, 2, 1)
            hidden = hidden + hf.encoder.embed_positions.weight[: hidden.shape[1]]
            states = [hidden]
            for layer in hf.encoder.layers:
                states.append(layer(states[-1], None))
        for layer, state in enumerate(states):
            np.testing.assert_allclose(store.pooled("resid")[index, layer], state[0].mean(0).numpy(), atol=1e-5)
            np.testing.assert_allclose(store.pooled("normed")[index, layer],
                                       hf.encoder.layer_norm(state[0]).mean(0).detach().numpy(), atol=1e-5)


def test_b_output_equals_b_a_x_from_the_saved_adapter_and_the_module_s_own_input(stores, dataset, runs):
    from safetensors.torch import load_file

    store = stores["acts"]
    saved = load_file(runs["lora"] / "weights" / "adapter_model.safetensors")
    a = saved["base_model.model.encoder.layers.1.self_attn.v_proj.lora_A.weight"]
    b = saved["base_model.model.encoder.layers.1.self_attn.v_proj.lora_B.weight"]
    model = lora_model(dataset, runs)
    hf = classification_model(model)
    utt = store.frame_items[0]
    features, mask = clip_batch(dataset, [utt])
    with torch.no_grad(), Trace(hf.encoder.layers[1].self_attn.v_proj, retain_input=True) as trace:
        classify(model, features, mask)
    x = trace.input[0]  # the attention LayerNorm's output, the module's own input
    torch.testing.assert_close(x, hf.encoder.layers[1].self_attn_layer_norm(
        torch.from_numpy(store.frames(("resid", 1), 0))), atol=1e-5, rtol=1e-5)
    expected = (x @ a.T @ b.T).numpy()
    np.testing.assert_allclose(store.frames(("lora", 1, "v_proj", "b_out"), 0), expected, atol=1e-5)
    np.testing.assert_allclose(store.frames(("lora", 1, "v_proj", "a_out"), 0), (x @ a.T).numpy(), atol=1e-5)
    assert store.attrs["scaling"] == pytest.approx(2.0)  # alpha 2 x rank 4 over rank 4


def test_stored_gradients_match_autograd_on_one_batch(stores, dataset, runs):
    store = stores["grads"]
    model = lora_model(dataset, runs)
    only_lora_requires_grad(model)
    hf = classification_model(model)
    utt_ids = store.utt_ids[:4]
    labels = torch.tensor(store.utterances()["label"].to_numpy()[:4])
    features, mask = clip_batch(dataset, utt_ids)
    v_proj = hf.encoder.layers[0].self_attn.v_proj
    a, b = lora_parts(v_proj)
    with Trace(a, detach=False) as trace_a, Trace(b, detach=False) as trace_b:
        loss = torch.nn.functional.cross_entropy(classify(model, features, mask), labels, reduction="sum")
        grad_u, grad_v = torch.autograd.grad(loss, [trace_a.output, trace_b.output])
    for i in range(4):
        n = store.utterances()["n_frames"][i]
        np.testing.assert_allclose(store.frames(("lora", 0, "v_proj", "a_grad"), i), grad_u[i, :n].numpy(),
                                   atol=1e-6, rtol=1e-4)
        np.testing.assert_allclose(store.frames(("lora", 0, "v_proj", "b_grad"), i), grad_v[i, :n].numpy(),
                                   atol=1e-6, rtol=1e-4)
        np.testing.assert_allclose(store.frames(("lora", 0, "v_proj", "b_out"), i), trace_b.output[i, :n].detach(),
                                   atol=1e-5)
    per_clip = torch.nn.functional.cross_entropy(classify(model, features, mask), labels, reduction="none")
    np.testing.assert_allclose(store.utterances()["loss"][:4], per_clip.detach().numpy(), atol=1e-5)
    assert np.abs(store.frames(("lora", 0, "v_proj", "b_grad"))).max() > 0


def test_contribution_sums_equal_a_per_frame_loop(stores, dataset, runs):
    store = stores["acts"]
    model = lora_model(dataset, runs)
    hf = classification_model(model)
    index = store.utt_ids.index(store.frame_items[2])  # a test clip: its residual frames are stored
    features, mask = clip_batch(dataset, [store.utt_ids[index]])
    # Recompute block 1's x, a, m for this clip alone, then loop over its frames in float64.
    with torch.no_grad(), Trace(hf.encoder.layers[1], retain_input=True) as block, \
            Trace(hf.encoder.layers[1].self_attn) as attn, Trace(hf.encoder.layers[1].fc2) as mlp:
        classify(model, features, mask)
    xs, attns, mlps = (t[0].double().numpy() for t in (block.input, attn.output, mlp.output))
    np.testing.assert_allclose(store.frames(("resid", 1), 2), xs, atol=1e-5)
    expected = np.zeros(6)
    for xt, at, mt in zip(xs, attns, mlps):
        norm_x = max(np.linalg.norm(xt), 1e-6)
        cos = lambda u, v: u @ v / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-8)  # noqa: E731
        expected += [np.linalg.norm(at) / norm_x, np.linalg.norm(mt) / norm_x, np.linalg.norm(at + mt) / norm_x,
                     cos(at, xt), cos(mt, xt), cos(at + mt, xt)]
    sums, n_frames, names = store.contribution()
    assert names == list(CONTRIBUTION_STATISTICS) and n_frames[index] == len(xs)
    np.testing.assert_allclose(sums[index, 1], expected, rtol=1e-4)


def test_a_clip_s_arrays_are_the_same_alone_and_in_a_batch(dataset, runs):
    model = lora_model(dataset, runs)
    utt_ids = ["s0_sad_0", "s1_angry_2", "s2_happy_3", "s3_neutral_1"]
    plan = CapturePlan(False, (0, 1, 2), (0, 1))
    batch, batch_rows = capture_forward(model, *clip_batch(dataset, utt_ids), plan, [True] * 4)
    for i, utt in enumerate(utt_ids):
        alone, alone_rows = capture_forward(model, *clip_batch(dataset, [utt]), plan, [True])
        for name in ("resid", "normed", "attn", "mlp", "contribution", "logits"):
            np.testing.assert_allclose(batch[name][i], alone[name][0], atol=1e-5, rtol=1e-5)
        for key, rows in alone_rows[0].items():
            np.testing.assert_allclose(batch_rows[i][key], rows, atol=1e-5, rtol=1e-5)


def test_every_run_of_a_fold_gets_the_same_gradient_clips(stores, dataset, runs, tmp_path):
    frozen = capture(dataset, runs["frozen"], "grads", tmp_path / "frozen.zarr", method="frozen", targets="none",
                     rank=0)
    assert frozen.utt_ids == stores["grads"].utt_ids
    table = stores["grads"].utterances()
    assert (table["split"] == "train").all() and table["label"].value_counts().to_dict() == {c: 10 for c in range(4)}
    assert frozen.adapted() == [] and frozen.attrs["alpha"] is None
    assert frozen.attrs["grads_pool"] == ["train"]
    other_seed = capture(dataset, runs["frozen"], "grads", tmp_path / "seed.zarr", method="frozen",
                         targets="none", rank=0, grads_seed=7)
    assert other_seed.utt_ids != frozen.utt_ids


def test_balanced_subset_known_answer():
    labels = np.array([0, 0, 0, 1, 1, 2])
    chosen = balanced_subset(labels, 2, seed=0)
    order = np.random.default_rng(0).permutation(6)
    assert chosen.tolist() == [i for i in order if list(labels[order[: list(order).index(i) + 1]]).count(labels[i]) <= 2]
    assert sorted(np.bincount(labels[chosen]).tolist()) == [1, 2, 2]
    assert sorted(balanced_subset(labels, "all", seed=0).tolist()) == list(range(6))


# A manifest (the dataset's order, sorted by utt_id) and one fold of its fold table listed in
# another order (test, val, train), two classes.
POOL_MANIFEST = pd.DataFrame({"utt_id": list("abcdefgh"), "label": [0, 1, 0, 1, 0, 1, 0, 1]})
POOL_FOLD = pd.DataFrame({"utt_id": list("ghebfacd"), "split": ["test", "test", "val", "val",
                                                                 "train", "train", "train", "train"]})


def pool_subset(pool, per_class):
    from workflow_scripts.capture.settings import gradient_pool

    clips = POOL_FOLD.merge(POOL_MANIFEST, on="utt_id", how="left")
    chosen = gradient_pool(clips, pool, POOL_MANIFEST["utt_id"])
    return chosen.iloc[balanced_subset(chosen["label"].to_numpy(), per_class, seed=42)]["utt_id"].tolist()


def test_gradient_pool_known_answer():
    from workflow_scripts.capture.settings import gradient_pool

    # default_rng(42).permutation(4) = [3, 2, 1, 0], of 6 = [3, 2, 5, 4, 1, 0] (the shuffle of
    # Hugging Face's Dataset.shuffle(seed=42), which the original's select_balanced_samples used).
    # Default: the training split in the fold table's order, f a c d -> shuffled d c a f.
    assert pool_subset(None, 2) == ["d", "c", "a", "f"]
    assert pool_subset(None, 1) == ["d", "c"]
    # select_on: test: train + val in the manifest's order, a b c d e f -> shuffled d c f e b a,
    # the first 2 of each class: d c f e (val's e is in; the fold table's order would give a f d c).
    assert pool_subset(("train", "val"), 2) == ["d", "c", "f", "e"]
    assert gradient_pool(POOL_FOLD.merge(POOL_MANIFEST, on="utt_id"), ("train", "val"),
                         POOL_MANIFEST["utt_id"])["utt_id"].tolist() == list("abcdef")


def test_gradient_pool_is_the_training_pool_of_the_config():
    default = capture_settings(toy_config(), "toy", "grads")
    assert "grads_pool" not in default  # the default's params are unchanged: no capture reruns
    legacy = toy_config(legacy=True, select_on="test")
    assert capture_settings(legacy, "toy", "grads")["grads_pool"] == ["train", "val"]
    assert "grads_pool" not in capture_settings(legacy, "toy", "acts")  # acts covers every clip anyway


def test_legacy_gradient_clips_come_from_train_and_val_in_manifest_order(dataset, runs, tmp_path):
    """Under select_on: test the models trained on train + val: the 40 clips come from there, as
    the original's select_balanced_samples drew them from every non-test clip."""
    settings = capture_settings(toy_config(legacy=True, select_on="test"), "toy", "grads")
    capture_store("grads", toy_run("frozen", "none", 0), settings, dataset / "tiny", runs["frozen"] / "weights",
                  dataset / "logmel80.zarr", dataset / "manifest.parquet", dataset / "folds.parquet",
                  tmp_path / "grads.zarr")
    store = CaptureStore(tmp_path / "grads.zarr", "grads")
    manifest = pd.read_parquet(dataset / "manifest.parquet")
    fold = pd.read_parquet(dataset / "folds.parquet").query("protocol == 'loso_speaker' and fold == 1")
    pool = manifest[manifest["utt_id"].isin(fold.loc[fold["split"].isin(["train", "val"]), "utt_id"])]
    labels = pool["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    expected = pool["utt_id"].to_numpy()[balanced_subset(labels, 10, 42)]
    assert sorted(store.utt_ids) == sorted(expected)
    assert set(store.utterances()["split"]) == {"train", "val"}
    assert store.attrs["grads_pool"] == ["train", "val"]


def test_lora_modules_are_found_by_block_and_name(dataset, runs):
    assert sorted(lora_modules(lora_model(dataset, runs))) == [(0, "q_proj"), (0, "v_proj"), (1, "q_proj"),
                                                                  (1, "v_proj")]


def test_frame_layer_settings_resolve_and_refuse_out_of_range():
    assert resolve_indices("auto", 7, 512, "k") == tuple(range(7))
    assert resolve_indices("auto", 33, 1280, "k") == ()
    assert resolve_indices([3, 1, 3], 7, 1280, "k") == (1, 3)
    with pytest.raises(InputError, match=r"capture.resid_layers: \[9\] out of range; this model has indices 0..6"):
        resolve_indices([9], 7, 512, "capture.resid_layers")


@pytest.mark.parametrize("problem, key, match", [
    ("layer", {"resid_layers": [5]}, r"capture.resid_layers: \[5\] out of range"),
    ("block", {"lora_b_blocks": [2]}, r"capture.lora_b_blocks: \[2\] out of range"),
    ("dtype", {"frame_dtype": "bfloat16"}, r"capture.frame_dtype: 'bfloat16'"),
])
def test_bad_capture_settings_stop_with_the_key_and_no_store(dataset, runs, tmp_path, problem, key, match):
    settings = capture_settings(toy_config(), "toy", "acts")
    settings["capture"].update(key)
    with pytest.raises(InputError, match=match):
        capture_store("acts", toy_run(), settings, dataset / "tiny", runs["lora"] / "weights",
                      dataset / "logmel80.zarr", dataset / "manifest.parquet", dataset / "folds.parquet",
                      tmp_path / "acts.zarr")
    assert list(tmp_path.iterdir()) == []


def test_missing_or_unfitting_weights_name_the_run_and_write_no_store(dataset, runs, tmp_path):
    settings = capture_settings(toy_config(), "toy", "acts")
    args = (dataset / "tiny", None, dataset / "logmel80.zarr", dataset / "manifest.parquet",
            dataset / "folds.parquet", tmp_path / "acts.zarr")

    def attempt(run, weights):
        capture_store("acts", run, settings, args[0], weights, *args[2:])

    with pytest.raises(InputError, match=r"toy/loso_speaker/tiny/lora/q_proj\+v_proj/r4/seed0/fold1: no weights in"):
        attempt(toy_run(), tmp_path / "absent")
    with pytest.raises(InputError, match=r"r8/seed0/fold1: .* holds a rank-4 adapter on \['q_proj', 'v_proj'\], not rank 8"):
        attempt(toy_run(rank=8), runs["lora"] / "weights")
    with pytest.raises(InputError, match=r"frozen/none/r0/seed0/fold1: the weights in .* do not fit"):
        attempt(toy_run("frozen", "none", 0), runs["lora"] / "weights")
    assert not (tmp_path / "acts.zarr").exists()


@pytest.fixture(scope="module")
def whisper_base_run(dataset, tmp_path_factory):
    """The real Whisper-base (offline weights) with the original's random LoRA (A, B ~ N(0, 0.02)),
    scored on the toy features: a cheap run whose B outputs are not zero."""
    from workflow_scripts.models.build import build_checkpoint
    from workflow_scripts.runs import Run, run_settings
    from workflow_scripts.train.run import run_training

    root = tmp_path_factory.mktemp("whisper_base")
    build_checkpoint("whisper-base", {"source": "offline_whisper_base", "num_mel_bins": 80}, root / "checkpoint")
    run = Run("toy", "loso_speaker", "whisper-base", "lora_random", "q_proj+v_proj", 8, 0, 1)
    run_training(run, run_settings(toy_config(), "toy", "lora_random"), root / "checkpoint",
                 dataset / "logmel80.zarr", dataset / "manifest.parquet", dataset / "folds.parquet", root / "run")
    settings = capture_settings(toy_config(), "toy", "acts")
    capture_store("acts", run, settings, root / "checkpoint", root / "run" / "weights", dataset / "logmel80.zarr",
                  dataset / "manifest.parquet", dataset / "folds.parquet", root / "acts.zarr")
    return run, root


def test_real_whisper_base_capture_reproduces_its_logits_and_b_a_x(whisper_base_run, dataset):
    run, root = whisper_base_run
    store = CaptureStore(root / "acts.zarr", kind="acts")
    assert store.attrs["n_layers"] == 6 and store.attrs["d_model"] == 512 and store.attrs["resid_layers"] == list(range(7))
    predictions = pd.read_parquet(root / "run" / "predictions.parquet").set_index("utt_id")
    position = {u: i for i, u in enumerate(store.utt_ids)}
    np.testing.assert_allclose(store.logits()[[position[u] for u in predictions.index]],
                               np.stack(predictions["logits"]), atol=1e-4)
    model = load_run_model(run, root / "checkpoint", root / "run" / "weights", CLASSES)
    hf = classification_model(model)
    with torch.no_grad():
        logits = hf.classifier(hf.projector(torch.from_numpy(store.pooled("normed")[:, -1]))).numpy()
    np.testing.assert_allclose(logits, store.logits(), atol=1e-4)
    utt = store.frame_items[0]
    features, mask = clip_batch(dataset, [utt])
    v_proj = hf.encoder.layers[5].self_attn.v_proj
    a, b = lora_parts(v_proj)
    with torch.no_grad(), Trace(v_proj, retain_input=True) as trace:
        classify(model, features, mask)
    expected = trace.input[0] @ a.weight.T @ b.weight.T
    assert expected.abs().max() > 1e-3  # random B: a real check, not 0 == 0
    np.testing.assert_allclose(store.frames(("lora", 5, "v_proj", "b_out"), 0), expected.numpy(), atol=1e-4)
