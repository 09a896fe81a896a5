"""CKA: known answers for the kernels and estimators, the feature-space and streamed forms
against the Gram form, the permutation nulls, the original's function on a hand case, the
all-zero sides, and both store-level analyses on small synthetic stores (with their refusals)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.analyses.cka.__main__ import main
from workflow_scripts.analyses.cka.estimators import (
    cka,
    cka_from_grams,
    cka_matrix,
    degenerate,
    hsic_biased,
    hsic_debiased,
    linear_gram,
    permutations,
    rbf_bandwidth,
    rbf_gram,
    u_center,
)
from workflow_scripts.analyses.cka.legacy import legacy_cka
from workflow_scripts.analyses.cka.moments import (
    CrossMoments,
    FrameMoments,
    StreamingLinearCKA,
    frame_cka_matrix,
)
from workflow_scripts.analyses.cka.pairings import PAPER_SERIES, frame_pair, gradient_pairings, layer_cka
from workflow_scripts.analyses.cka.settings import cka_settings
from workflow_scripts.analyses.cka.stores import Side
from workflow_scripts.capture.store import CaptureStore, CaptureStoreWriter, StoreShape
from workflow_scripts.errors import InputError

ESTIMATORS = ("biased", "debiased")
KERNELS = ("linear", "rbf")


def related(n=40, p=12, q=9, seed=0, offset=3.0):
    """Two non-centred views of the same latent data plus noise."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 5))
    x = latent @ rng.normal(size=(5, p)) + 0.5 * rng.normal(size=(n, p)) + offset
    y = np.tanh(latent @ rng.normal(size=(5, q))) + 0.5 * rng.normal(size=(n, q)) - offset
    return x, y


# --- known answers --------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cka_is_one_on_identical_inputs(kernel, estimator):
    x, _ = related()
    assert cka(x, x, kernel, estimator) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(kernel, estimator):
    x, y = related()
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(x.shape[1], x.shape[1])))
    reference = cka(x, y, kernel, estimator)
    assert 0.2 < reference < 0.99  # a non-trivial value
    assert cka(x @ q, y, kernel, estimator) == pytest.approx(reference, abs=1e-10)
    assert cka(7.5 * x, y, kernel, estimator) == pytest.approx(reference, abs=1e-10)  # the median scales too
    assert cka(x, 0.01 * y + 100, kernel, estimator) == pytest.approx(reference, abs=1e-8)
    assert cka(x, x @ q, kernel, estimator) == pytest.approx(1.0, abs=1e-10)
    assert cka(x, 3 * x, kernel, estimator) == pytest.approx(1.0, abs=1e-10)


def test_biased_cka_of_independent_data_at_small_n_is_about_p_over_n_plus_p_and_debiased_about_0():
    n, p = 32, 512
    biased, debiased = [], []
    for seed in range(16):
        rng = np.random.default_rng(seed)
        x, y = rng.normal(size=(n, p)), rng.normal(size=(n, p))
        biased.append(cka(x, y, "linear", "biased"))
        debiased.append(cka(x, y, "linear", "debiased"))
    assert np.mean(biased) == pytest.approx(p / (n + p), abs=0.01)  # 0.94
    assert min(biased) > 0.9
    # Each debiased value scatters around 0 with a standard deviation of about 1/sqrt(n·(n−3))·√2 ≈ 0.05.
    assert abs(np.mean(debiased)) < 0.04 and max(abs(v) for v in debiased) < 0.15


def test_biased_hsic_is_the_trace_formula():
    x, y = related(n=15)
    k, l = linear_gram(x), rbf_gram(y, 1.0)
    h = np.eye(15) - np.ones((15, 15)) / 15
    assert hsic_biased(k, l) == pytest.approx(np.trace(k @ h @ l @ h) / 14**2, rel=1e-12)


def test_debiased_hsic_by_u_centering_is_song_et_al_s_unbiased_estimator():
    x, y = related(n=11)
    k, l = linear_gram(x), rbf_gram(y, 0.7)
    n = 11
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    ones = np.ones(n)
    song = (np.trace(kt @ lt) + (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * ones @ kt @ lt @ ones) / (n * (n - 3))
    assert hsic_debiased(k, l) == pytest.approx(song, rel=1e-10)


def test_debiased_hsic_needs_four_samples():
    with pytest.raises(ValueError, match="at least 4 samples"):
        u_center(np.ones((3, 3)))
    x = np.arange(9.0).reshape(3, 3)
    assert not np.isnan(cka(x, x ** 2, "linear", "biased"))  # the biased estimator is fine at n = 3


def test_the_rbf_bandwidth_is_the_median_over_all_pairs_including_the_zero_diagonal():
    # Points 0, 1, 3 on a line: squared distances 0,1,9 / 1,0,4 / 9,4,0 -> sorted 0,0,0,1,1,4,4,9,9.
    x = np.array([[0.0], [1.0], [3.0]])
    distances = np.array([[0, 1, 9], [1, 0, 4], [9, 4, 0]], dtype=float)
    assert rbf_bandwidth(distances, 1.0) == 1.0  # with the diagonal; without it the median would be 4
    assert rbf_bandwidth(distances, 2.0) == 4.0
    np.testing.assert_allclose(rbf_gram(x, 1.0), np.exp(-distances / 2))
    # Most pairs identical: the median is 0, so the non-zero distances' median is used.
    duplicates = np.array([[0.0], [0.0], [0.0], [2.0]])
    d = (duplicates - duplicates.T) ** 2
    assert rbf_bandwidth(d, 1.0) == 4.0
    assert rbf_bandwidth(np.zeros((3, 3)), 1.0) is None


def test_all_zero_and_constant_sides_give_nan_not_a_division_by_zero():
    x, _ = related(n=10)
    zero, constant = np.zeros((10, 4)), np.tile([[0.1, 0.2, 0.3]], (10, 1))
    assert degenerate(zero) == "all zero" and degenerate(constant) == "constant" and degenerate(x) == ""
    with np.errstate(all="raise"):
        for kernel in KERNELS:
            for estimator in ESTIMATORS:
                assert np.isnan(cka(x, zero, kernel, estimator))
                assert np.isnan(cka(constant, x, kernel, estimator))
        np.testing.assert_array_equal(rbf_gram(constant), np.ones((10, 10)))  # no bandwidth divided by
        assert np.isnan(cka_from_grams(linear_gram(x), np.ones((10, 10))))
        assert np.isnan(cka_from_grams(linear_gram(x), linear_gram(zero), "debiased"))


# --- the feature-space form ------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("shape", [(40, 12, 9), (9, 20, 30)])  # n >> p, and n < p
def test_the_feature_space_form_equals_the_gram_form_on_non_centred_inputs(estimator, shape):
    n, p, q = shape
    x, y = related(n, p, q, offset=4.0)
    gram_form = cka_from_grams(linear_gram(x), linear_gram(y), estimator)
    for shift_x, shift_y in ((x.mean(0), y.mean(0)), (np.zeros(p), np.zeros(q)), (np.ones(p), -np.ones(q))):
        streamed = StreamingLinearCKA(shift_x, shift_y)
        streamed.update(x, y)
        assert streamed.result(estimator) == pytest.approx(gram_form, abs=1e-10)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_streaming_equals_one_shot_for_any_batch_split(estimator):
    x, y = related(n=57, p=6, q=4)
    one_shot = StreamingLinearCKA(x.mean(0), y.mean(0))
    one_shot.update(x, y)
    rng = np.random.default_rng(3)
    for _ in range(4):
        cuts = np.sort(rng.choice(np.arange(0, 58), size=rng.integers(1, 12)))  # empty batches included
        streamed = StreamingLinearCKA(x.mean(0), y.mean(0))
        for a, b in zip([0, *cuts], [*cuts, 57]):
            streamed.update(x[a:b], y[a:b])
        assert streamed.x.n == 57
        assert streamed.result(estimator) == pytest.approx(one_shot.result(estimator), abs=1e-12)
    single = StreamingLinearCKA(x.mean(0), y.mean(0))
    for i in range(57):
        single.update(x[i : i + 1], y[i : i + 1])
    assert single.result(estimator) == pytest.approx(one_shot.result(estimator), abs=1e-12)


def test_frame_moments_give_every_pair_of_sets():
    x, y = related(n=30, p=5, q=3)
    z = np.random.default_rng(2).normal(size=(30, 4))
    moments = FrameMoments([5, 3, 4], [x.mean(0), y.mean(0), z.mean(0)])
    moments.update(x[:17], y[:17], z[:17])
    moments.update(x[17:], y[17:], z[17:])
    sets = [x, y, z]
    for estimator in ESTIMATORS:
        expected = np.array([[cka(a, b, "linear", estimator) for b in sets] for a in sets])
        np.testing.assert_allclose(moments.cka_matrix(estimator), expected, atol=1e-12)


def test_frame_moments_flag_an_all_zero_set():
    moments = FrameMoments([3, 2])
    moments.update(np.random.default_rng(0).normal(size=(8, 3)), np.zeros((8, 2)))
    assert moments.note(0) == "" and moments.note(1) == "all zero"
    assert np.isnan(moments.cka(0, 1))


# --- permutation nulls and the matrix ---------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cka_matrix_equals_the_pairs_and_its_null_the_shuffled_pairs(kernel, estimator):
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(20, 6)) + i for i in range(3)]
    ys = [xs[0] @ rng.normal(size=(6, 4)), rng.normal(size=(20, 7)), np.zeros((20, 3))]
    result = cka_matrix(xs, ys, kernel, estimator, 0.8, permutation_count=5, seed=11)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            expected = cka(x, y, kernel, estimator, 0.8)
            null = [cka(x, y[p], kernel, estimator, 0.8) for p in permutations(20, 5, 11)]
            if j == 2:
                assert np.isnan(result.values[i, j]) and np.isnan(result.null_p95[i, j])
                continue
            assert result.values[i, j] == pytest.approx(expected, abs=1e-10)
            assert result.null_mean[i, j] == pytest.approx(np.mean(null), abs=1e-10)
            assert result.null_p95[i, j] == pytest.approx(np.percentile(null, 95), abs=1e-10)
    assert result.notes_y == ["", "", "all zero"] and result.permutations == 5 and result.n == 20


def test_the_permutation_null_of_independent_data_is_near_zero_when_debiased():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 30)), rng.normal(size=(60, 30))
    result = cka_matrix([x], [y], "linear", "debiased", permutation_count=50, seed=0)
    assert abs(result.null_mean[0, 0]) < 0.01 and result.null_p95[0, 0] < 0.06
    biased = cka_matrix([x], [y], "linear", "biased", permutation_count=50, seed=0)
    assert biased.null_mean[0, 0] > 0.2  # the biased estimator's floor at n = 60, p = 30


def test_permutations_are_seeded():
    assert all(np.array_equal(a, b) for a, b in zip(permutations(30, 4, 7), permutations(30, 4, 7)))
    assert not np.array_equal(permutations(30, 1, 7)[0], permutations(30, 1, 8)[0])


def side(name: str, rows: np.ndarray) -> Side:
    rows = rows.astype(np.float32)
    return Side(name, "U", rows, rows.astype(np.float64).mean(0), np.zeros((1, rows.shape[1])), "")


def test_the_streamed_frame_level_null_equals_the_gram_form_of_the_shuffled_rows(monkeypatch):
    import workflow_scripts.analyses.cka.moments as module

    monkeypatch.setattr(module, "BLOCK_BYTES", 8 * 64)  # blocks of 1024 rows at least: force several
    x, y = related(n=2500, p=4, q=3, seed=4)
    x, y = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    shuffles = permutations(2500, 3, 1)
    rows = frame_pair(side("a", x), side("b", y), shuffles, list(ESTIMATORS))
    for row in rows:
        estimator = row["estimator"]
        null = [cka(x, y[p], "linear", estimator) for p in shuffles]
        assert row["value"] == pytest.approx(cka(x, y, "linear", estimator), abs=1e-10)
        assert row["null_mean"] == pytest.approx(np.mean(null), abs=1e-10)
        assert row["null_p95"] == pytest.approx(np.percentile(null, 95), abs=1e-10)


def test_the_null_of_a_rank_deficient_side_is_computed_in_its_rank_and_equals_the_full_form():
    # A B output V = U·Bᵀ: 40 columns of rank 3. The null rotates V into its 3-column basis.
    rng = np.random.default_rng(7)
    u = rng.normal(size=(1500, 3))
    v = (u @ rng.normal(size=(3, 40)) + 5.0).astype(np.float32).astype(np.float64)
    x = (u[:, :2] + rng.normal(size=(1500, 2))).astype(np.float32).astype(np.float64)
    sides = side("a", x), side("b", v)
    shuffles = permutations(1500, 4, 2)
    rows = frame_pair(*sides, shuffles, list(ESTIMATORS))
    assert sides[0].basis is None and sides[1].basis.shape == (40, 3)
    for row in rows:
        null = [cka(x, v[p], "linear", row["estimator"]) for p in shuffles]
        assert row["value"] == pytest.approx(cka(x, v, "linear", row["estimator"]), abs=1e-10)
        assert row["null_mean"] == pytest.approx(np.mean(null), abs=1e-9)
        assert row["null_p95"] == pytest.approx(np.percentile(null, 95), abs=1e-9)


def test_cross_moments_of_a_permutation_only_change_the_pairing_terms():
    x, y = related(n=25, p=4, q=3)
    mx, my = FrameMoments([4], [x.mean(0)]), FrameMoments([3], [y.mean(0)])
    xa, yb = mx.update(x), my.update(y)
    order = permutations(25, 1, 0)[0]
    cross = CrossMoments(4, 3)
    cross.update(xa[:, :4], xa[:, 4], yb[order, :3], yb[order, 3])
    for estimator in ESTIMATORS:
        assert cross.cka(mx, my, estimator) == pytest.approx(cka(x, y[order], "linear", estimator), abs=1e-12)


# --- the original's function ----------------------------------------------------------------------


def test_legacy_cka_reproduces_the_original_by_hand():
    x = np.array([[[1.0, 2.0], [0.0, 1.0]], [[2.0, 0.5], [1.0, 1.0]], [[0.0, 1.0], [3.0, 2.0]],
                  [[1.5, 1.5], [0.5, 0.0]]], dtype=np.float32)  # [4 samples, 2 frames, 2 dims]
    y = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [2.0, 2.0, 0.0], [1.0, 3.0, 1.0]], dtype=np.float32)
    flat = x.reshape(4, -1)
    h = np.eye(4, dtype=np.float32) - np.float32(0.25)

    def by_hand(k, l):
        kc, lc = h @ k @ h, h @ l @ h
        return np.sum(kc * lc) / (np.sqrt(np.sum(kc * kc)) * np.sqrt(np.sum(lc * lc)))

    linear = by_hand(flat @ flat.T, y @ y.T)
    squared = lambda a: ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)  # noqa: E731
    rbf = by_hand(np.exp(-squared(flat) / flat.shape[1]), np.exp(-squared(y) / y.shape[1]))  # gamma = 1/D
    assert legacy_cka(x, y, "linear") == pytest.approx(float(linear), rel=1e-5)
    assert legacy_cka(x, y, "rbf") == pytest.approx(float(rbf), rel=1e-5)
    assert legacy_cka(flat, flat, "linear") == pytest.approx(1.0, rel=1e-6)
    assert legacy_cka(x, np.zeros((4, 3), dtype=np.float32), "linear") == 0.0  # its fallback, not NaN
    # gamma = 1/D on small gradients: the kernel rounds to all ones in float32 -> the original's 0.0
    # ... while the median-heuristic bandwidth in float64 sees the same structure at any scale.
    x, y = related(n=6, p=50000, q=50000)
    tiny_x, tiny_y = (x * 1e-6).astype(np.float32), (y * 1e-6).astype(np.float32)
    assert legacy_cka(tiny_x, tiny_y, "rbf") == 0.0
    assert cka(tiny_x, tiny_y, "rbf") == pytest.approx(cka(x, y, "rbf"), rel=1e-4)
    assert cka(tiny_x, tiny_y, "rbf") > 0.5


def test_settings_defaults_and_refusals():
    assert cka_settings({}) == {"kernels": ["linear", "rbf"], "rbf_multiples": [0.5, 1.0, 2.0],
                                "estimators": ["biased", "debiased"], "permutations": 20, "seed": 0, "split": "test"}
    for bad, key in (({"kernels": ["cosine"]}, "kernels"), ({"estimators": []}, "estimators"),
                     ({"rbf_multiples": [0]}, "rbf_multiples"), ({"permutations": -1}, "permutations"),
                     ({"split": "dev"}, "split"), ({"bandwidth": 1}, "unknown")):
        with pytest.raises(InputError, match=key):
            cka_settings(bad)


# --- the stores ------------------------------------------------------------------------------------

CLASSES = ["a", "b", "c", "d"]
D_MODEL, RANK, N_LAYERS = 6, 3, 2
MODULES = {(0, "v_proj"): (RANK, D_MODEL), (1, "v_proj"): (RANK, D_MODEL)}


def write_store(path, kind, method="lora", seed=0, lengths=(5, 7, 6, 9, 4, 8), legacy=False, split="train",
                data_seed=0, utt_prefix="u"):
    """A small store written by the real writer: LoRA arrays of the method's kind (lora_init: B
    outputs and A gradients all zero), pooled residuals that share a latent per clip."""
    rng = np.random.default_rng(data_seed)
    shape = StoreShape(kind, N_LAYERS, D_MODEL, tuple(CLASSES), MODULES, (), (0, 1), "float32")
    run = f"toy/loso_speaker/tiny/{method}/v_proj/r{RANK}/seed{seed}/fold1"
    attrs = {"run": run, "dataset": "toy", "protocol": "loso_speaker", "model": "tiny", "method": method,
             "targets": ["v_proj"], "rank": RANK, "alpha": 6, "seed": seed, "fold": 1, "legacy": legacy,
             "config_hash": "x", "provenance": {}}
    n = len(lengths)
    ids = [f"{utt_prefix}{i}" for i in range(n)]
    latent = np.random.default_rng(99).normal(size=(n, D_MODEL))  # shared by every store: related layers
    with CaptureStoreWriter(path, shape, attrs) as writer:
        utterance = {"utterance": np.array(ids, dtype=object), "speaker": np.array(["s"] * n, dtype=object),
                     "split": np.array([split] * n, dtype=object), "label": np.arange(n) % 4, "prediction": np.arange(n) % 4,
                     "logits": rng.normal(size=(n, 4)).astype(np.float32), "n_frames": np.array(lengths)}
        if kind == "grads":
            utterance["loss"] = rng.random(n).astype(np.float32)
        else:
            resid = np.stack([latent * (layer + 1) + rng.normal(size=(n, D_MODEL)) * layer
                              for layer in range(N_LAYERS + 1)], 1).astype(np.float32)
            utterance.update({"resid": resid, "normed": resid, "attn": resid[:, 1:], "mlp": resid[:, 1:],
                              "contribution": np.zeros((n, N_LAYERS, 6))})
        from workflow_scripts.capture.store import STRING

        utterance = {k: (v.astype(STRING) if v.dtype == object else v) for k, v in utterance.items()}
        writer.append_utterances(utterance)
        for utt, length in zip(ids, lengths):
            rows = {}
            for key, (_, (width,), _, _) in shape.frame_arrays().items():
                values = rng.normal(size=(length, width)).astype(np.float32)
                if method == "lora_init" and key[-1] in ("b_out", "a_grad"):
                    values[:] = 0
                rows[key] = values
            writer.append_frames(utt, rows)
    return path


@pytest.fixture(scope="module")
def grads(tmp_path_factory):
    root = tmp_path_factory.mktemp("cka_grads")
    return {name: write_store(root / f"{name}.zarr", "grads", method, data_seed=i)
            for i, (name, method) in enumerate((("trained", "lora"), ("lora_random", "lora_random"),
                                                 ("lora_init", "lora_init")))}


SMALL = {"permutations": 4, "rbf_multiples": [1.0, 2.0]}


def open_stores(paths):
    return {name: CaptureStore(path, kind="grads") for name, path in paths.items()}


def test_gradient_pairings_cover_every_pairing_level_and_estimator(grads):
    table = gradient_pairings(open_stores(grads), SMALL)
    # 2 (block, module) x 14 pairings x (frame 2 + utterance (linear + rbf x 2) x 2) values
    assert len(table) == 2 * 14 * (2 + 3 * 2)
    assert set(table["level"]) == {"frame", "utterance"}  # not a legacy store: no flattened form
    assert set(table["comparison"]) == {"within", "across"}
    assert table.loc[table["level"] == "frame", "n"].unique().tolist() == [39]  # 5 + 7 + 6 + 9 + 4 + 8 frames
    assert table.loc[table["level"] == "utterance", "n"].unique().tolist() == [6]
    tagged = table[table["paper_series"] != ""].groupby("paper_series")["paper_kernel"].first().to_dict()
    assert tagged == {name: kernel for name, (_, _, kernel) in PAPER_SERIES.items()}
    assert (table["permutations"] == 4).all()
    defined = table[table["note"] == ""]
    assert defined[["value", "null_mean", "null_p95"]].notna().all().all()


def test_gradient_pairings_values_are_the_cka_of_the_stored_arrays(grads):
    stores = open_stores(grads)
    table = gradient_pairings(stores, SMALL)
    trained, random = stores["trained"], stores["lora_random"]
    u = trained.frames(("lora", 1, "v_proj", "a_out"))
    u_random = random.frames(("lora", 1, "v_proj", "a_out"))
    gv = trained.frames(("lora", 1, "v_proj", "b_grad"))
    gu = trained.frames(("lora", 1, "v_proj", "a_grad"))
    row = lambda **k: table[np.logical_and.reduce([table[c] == v for c, v in k.items()])]  # noqa: E731
    frame = row(block=1, level="frame", pairing="trained U ~ lora_random U", estimator="debiased")
    assert frame["value"].item() == pytest.approx(cka(u, u_random, "linear", "debiased"), abs=1e-10)
    assert frame["paper_series"].item() == "learned_layer_similarities"
    offsets = trained.frame_offsets
    def means(rows):
        return np.stack([rows[s:e].astype(np.float64).mean(0) for s, e in zip(offsets[:-1], offsets[1:])])

    utterance = row(block=1, level="utterance", pairing="trained gU ~ trained gV", kernel="rbf", rbf_multiple=2.0,
                    estimator="biased")
    assert utterance["value"].item() == pytest.approx(cka(means(gu), means(gv), "rbf", "biased", 2.0), abs=1e-10)
    assert utterance["paper_series"].item() == "learned_layer_grad_similarities"
    null = [cka(means(gu), means(gv)[p], "rbf", "biased", 2.0) for p in permutations(6, 4, 0)]
    assert utterance["null_mean"].item() == pytest.approx(np.mean(null), abs=1e-10)


def test_lora_init_b_outputs_and_a_gradients_are_reported_all_zero(grads):
    table = gradient_pairings(open_stores(grads), SMALL)
    init = table[(table["model_b"] == "lora_init") & table["quantity_b"].isin(["V", "gU"])]
    init_within = table[(table["model_a"] == "lora_init")]
    for part in (init, init_within):
        assert len(part) and part["value"].isna().all() and part["null_p95"].isna().all()
        assert part["note"].str.startswith("all zero: lora_init").all()
    gv = table[(table["comparison"] == "across") & (table["model_b"] == "lora_init")
               & (table["quantity_b"] == "gV")]
    assert gv["value"].notna().all() and (gv["note"] == "").all()


def test_a_reference_is_optional(grads):
    table = gradient_pairings(open_stores({"trained": grads["trained"], "lora_init": grads["lora_init"]}),
                              {**SMALL, "kernels": ["linear"], "estimators": ["debiased"]})
    assert set(table["model_b"]) == {"trained", "lora_init"}
    assert set(table["level"]) == {"frame", "utterance"} and set(table["kernel"]) == {"linear"}


def test_stores_with_other_clips_or_frames_are_refused_naming_both(grads, tmp_path):
    other = write_store(tmp_path / "other.zarr", "grads", "lora_random", utt_prefix="v")
    with pytest.raises(InputError, match=r"trained\.zarr.*other\.zarr.*different clips"):
        gradient_pairings(open_stores({"trained": grads["trained"], "lora_random": other}), SMALL)
    frames = write_store(tmp_path / "frames.zarr", "grads", "lora_random", lengths=(5, 7, 6, 9, 4, 9))
    with pytest.raises(InputError, match=r"trained\.zarr.*frames\.zarr.*different frame offsets"):
        gradient_pairings(open_stores({"trained": grads["trained"], "lora_random": frames}), SMALL)
    with pytest.raises(InputError, match="given as lora_init but holds a lora_random run"):
        gradient_pairings(open_stores({"trained": grads["trained"], "lora_init": grads["lora_random"]}), SMALL)


def test_a_legacy_store_also_gets_the_original_s_flattened_form(tmp_path):
    lengths = (20,) * 5
    methods = {"trained": "lora", "lora_random": "lora_random", "lora_init": "lora_init"}
    stores = {name: CaptureStore(write_store(tmp_path / f"{name}.zarr", "grads", method, lengths=lengths, legacy=True,
                                             data_seed=i), kind="grads")
              for i, (name, method) in enumerate(methods.items())}
    table = gradient_pairings(stores, {**SMALL, "estimators": ["biased"]})
    flat = table[table["level"] == "flattened"]
    assert set(flat["estimator"]) == {"legacy"} and set(flat["kernel"]) == {"linear", "rbf"}
    assert flat["rbf_multiple"].isna().all()
    v = stores["trained"].frames(("lora", 0, "v_proj", "b_out")).reshape(5, -1)
    v_random = stores["lora_random"].frames(("lora", 0, "v_proj", "b_out")).reshape(5, -1)
    value = flat[(flat["block"] == 0) & (flat["pairing"] == "trained V ~ lora_random V")
                 & (flat["kernel"] == "rbf")]
    assert value["value"].item() == pytest.approx(legacy_cka(v, v_random, "rbf"), abs=1e-6)
    assert value["paper_series"].item() == "random_layer_similarities" and value["paper_kernel"].item() == "rbf"
    zero = flat[flat["model_b"] == "lora_init"]
    assert zero[zero["quantity_b"] == "V"]["value"].isna().all()


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cka_acts")
    return {"lora": write_store(root / "lora.zarr", "acts", "lora", seed=0, split="test", data_seed=1),
            "frozen": write_store(root / "frozen.zarr", "acts", "frozen", seed=0, split="test", data_seed=2),
            "seed1": write_store(root / "seed1.zarr", "acts", "lora", seed=1, split="test", data_seed=3)}


def test_layer_cka_is_every_layer_against_every_layer(acts):
    a, b = CaptureStore(acts["lora"]), CaptureStore(acts["frozen"])
    table = layer_cka(a, b, "test", {**SMALL, "rbf_multiples": [1.0]})
    layers = N_LAYERS + 1
    assert len(table) == layers * layers * 2 * 2  # (linear, rbf x1) x (biased, debiased)
    resid_a, resid_b = a.pooled("resid").astype(np.float64), b.pooled("resid").astype(np.float64)
    for row in table[table["kernel"] == "linear"].itertuples():
        expected = cka(resid_a[:, row.layer_a], resid_b[:, row.layer_b], "linear", row.estimator)
        assert row.value == pytest.approx(expected, abs=1e-10)
    assert (table["n"] == 6).all() and (table["other_run"] == b.attrs["run"]).all()
    assert table[["value", "null_mean", "null_p95"]].notna().all().all()


def test_layer_cka_refuses_other_clips_and_follows_the_first_store_s_order(acts, tmp_path):
    a = CaptureStore(acts["lora"])
    other = CaptureStore(write_store(tmp_path / "other.zarr", "acts", "frozen", split="test", utt_prefix="w"))
    with pytest.raises(InputError, match=r"lora\.zarr and .*other\.zarr hold different 'test' clips"):
        layer_cka(a, other, "test", SMALL)
    with pytest.raises(InputError, match="has no 'val' clips"):
        layer_cka(a, CaptureStore(acts["frozen"]), "val", SMALL)


def run_args(method="lora", seed=0):
    return ["--dataset", "toy", "--protocol", "loso_speaker", "--model", "tiny", "--method", method, "--targets",
            "v_proj", "--rank", str(RANK), "--seed", str(seed), "--fold", "1"]


def test_the_entry_point_writes_both_tables_and_figures(grads, acts, tmp_path):
    spec = json.dumps({**SMALL, "rbf_multiples": [1.0]})
    out = tmp_path / "pairings.parquet"
    main(["--grads", str(grads["trained"]), "--reference", f"lora_random={grads['lora_random']}",
          "--reference", f"lora_init={grads['lora_init']}", "--spec", spec, "--out", str(out), *run_args()])
    table = pd.read_parquet(out)
    assert table["run"].unique().tolist() == ["toy/loso_speaker/tiny/lora/v_proj/r3/seed0/fold1"]
    assert out.with_suffix(".png").is_file() and out.with_suffix(".svg").is_file()
    out = tmp_path / "layers.parquet"
    main(["--acts", str(acts["lora"]), "--other-acts", str(acts["seed1"]), "--pairing", "seed_vs_seed",
          "--spec", spec, "--out", str(out), *run_args()])
    table = pd.read_parquet(out)
    assert (table["pairing"] == "seed_vs_seed").all() and out.with_suffix(".svg").is_file()
    with pytest.raises(InputError, match="lora_vs_frozen.*holds a lora run, not frozen"):
        main(["--acts", str(acts["lora"]), "--other-acts", str(acts["seed1"]), "--pairing", "lora_vs_frozen",
              "--spec", spec, "--out", str(tmp_path / "no.parquet"), *run_args()])
    with pytest.raises(InputError, match="NAME=PATH"):
        main(["--grads", str(grads["trained"]), "--reference", str(grads["lora_init"]), "--spec", spec,
              "--out", str(tmp_path / "no.parquet"), *run_args()])
    assert not (tmp_path / "no.parquet").exists()


def test_the_streamed_frame_level_matrix_equals_the_pairs():
    rng = np.random.default_rng(8)
    base = rng.normal(size=(3000, 4)) + 2
    arrays = [base @ rng.normal(size=(4, 3)) + rng.normal(size=(3000, 3)) for _ in range(3)]
    arrays.append(np.zeros((3000, 2), dtype=np.float32))
    result = frame_cka_matrix([a.astype(np.float32) for a in arrays])
    for estimator in ESTIMATORS:
        for i in range(3):
            for j in range(3):
                expected = cka(arrays[i].astype(np.float32), arrays[j].astype(np.float32), "linear", estimator)
                assert result[estimator][i, j] == pytest.approx(expected, abs=1e-9)
        assert np.isnan(result[estimator][3]).all()


@pytest.mark.parametrize("n", [4, 5, 7, 10])
def test_the_median_from_the_triangle_is_numpy_s_median_of_the_whole_matrix(n):
    rng = np.random.default_rng(n)
    for points in (rng.normal(size=(n, 3)), np.repeat(rng.normal(size=(2, 3)), [n - 1, 1], axis=0)):
        distances = ((points[:, None] - points[None]) ** 2).sum(-1)
        median = np.median(distances)
        expected = median if median > 0 else np.median(distances[distances > 0])
        assert rbf_bandwidth(distances, 1.0) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_the_vectorised_hsic_matrix_is_the_pairwise_formula(estimator):
    rng = np.random.default_rng(6)
    sets = [rng.normal(size=(40, w)) + rng.normal() for w in (3, 5, 2)]
    moments = FrameMoments([3, 5, 2], [s.mean(0) + 0.3 for s in sets])  # a shift that is not the mean
    moments.update(*sets)
    pairwise = np.array([[moments.hsic(l, m, estimator) for m in range(3)] for l in range(3)])
    np.testing.assert_allclose(moments.hsic_matrix(estimator), pairwise, rtol=1e-10, atol=1e-12)
