"""Embeddings of the LoRA A outputs: the paper's blocks, pooling and flattening by hand, cluster
quality on planted and on random classes, the speaker-grouped kNN and its one-speaker fallback,
and the group level and entry point on small synthetic acts stores."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.analyses import embeddings
from workflow_scripts.analyses.embeddings import (
    LOO,
    LOSO,
    choose_module,
    clip_features,
    cluster_quality,
    embed,
    embedding_blocks,
    embedding_settings,
    flattened_rows,
    group_embeddings,
    knn_predictions,
    main,
    parse_acts,
    pooled_rows,
)
from workflow_scripts.capture.store import (
    CONTRIBUTION_STATISTICS,
    CaptureStore,
    CaptureStoreWriter,
    StoreShape,
)
from workflow_scripts.errors import InputError
from workflow_scripts.runs import Run

CLASSES = ["neutral", "happy", "angry", "sad"]
FAST = {"perplexity": 8, "max_iter": 500, "seed": 0, "knn_neighbors": 3}
N_LAYERS = 6  # the evenly spaced blocks of 6 are 0, 1, 2, 3, 5
PLANTED_BLOCK = 5
GROUP = {"dataset": "toy", "protocol": "loso_speaker", "model": "tiny", "method": "lora",
         "targets": "q_proj+v_proj", "seed": 0, "fold": 1}
TABLE_COLUMNS = ["rank", "block", "module", "space", "statistic", "value", "knn_cv", "clips"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """t-SNE's OpenMP threads spin-wait when the machine's cores are shared; one thread each keeps
    these small fits fast and their timing steady."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


# ---- the paper's blocks


def test_the_paper_s_blocks_for_32_and_evenly_spaced_ones_for_other_depths():
    assert embedding_blocks(32) == [0, 7, 15, 23, 31]  # paper 3.4, Whisper-large-v2
    assert embedding_blocks(6) == [0, 1, 2, 3, 5]  # Whisper-base: floor of 0, 1.25, 2.5, 3.75, 5
    assert embedding_blocks(12) == [0, 2, 5, 8, 11]
    assert embedding_blocks(24) == [0, 5, 11, 17, 23]
    assert embedding_blocks(5) == [0, 1, 2, 3, 4] and embedding_blocks(4) == [0, 1, 2, 3]  # fewer: all
    assert embedding_blocks(32, 2) == [0, 31] and embedding_blocks(32, 1) == [0]
    for n_blocks in range(1, 70):
        for count in range(1, 9):
            blocks = embedding_blocks(n_blocks, count)
            assert len(blocks) == min(n_blocks, count) and blocks == sorted(set(blocks))
            assert blocks[0] == 0 and (count == 1 or blocks[-1] == n_blocks - 1)


@pytest.mark.parametrize("count", [0, -1, 2.5, True])
def test_a_bad_block_count_names_its_key(count):
    with pytest.raises(InputError, match="analyses.embeddings.blocks"):
        embedding_blocks(32, count)


# ---- features


def test_pooled_rows_are_each_clip_s_mean_by_hand():
    array = np.array([[1, 2], [3, 4], [5, 7], [10, 20], [0, 1], [2, 1], [4, 4]], dtype=np.float16)
    offsets = np.array([0, 2, 3, 7])
    expected = np.array([[2, 3], [5, 7], [4, 6.5]])
    pooled = pooled_rows(array, offsets)
    assert pooled.dtype == np.float64
    np.testing.assert_array_equal(pooled, expected)


def test_pooled_rows_stream_in_slices_of_whole_clips(monkeypatch):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    array = rng.normal(size=(offsets[-1], 3)).astype(np.float32)
    reads = []

    class Recording:  # an array that records the slices read from it
        shape = array.shape

        def __getitem__(self, index):
            reads.append((index.start, index.stop))
            return array[index]

    monkeypatch.setattr(embeddings, "ROW_BUDGET", 30)  # 10 rows of width 3 per read
    pooled = pooled_rows(Recording(), offsets)
    expected = [array[a:b].astype(np.float64).mean(0) for a, b in zip(offsets[:-1], offsets[1:])]
    np.testing.assert_allclose(pooled, expected, rtol=1e-12)
    assert len(reads) > 5 and reads[0][0] == 0 and reads[-1][1] == offsets[-1]
    assert all(start in offsets and stop in offsets for start, stop in reads)  # whole clips only
    assert all(b == c for (_, b), (c, _) in zip(reads[:-1], reads[1:]))  # each row read once


def test_a_clip_without_frames_is_refused_and_named():
    with pytest.raises(InputError, match=r"acts.zarr: 0/v_proj: clip\(s\) \[1\] have no frames"):
        pooled_rows(np.ones((3, 2)), [0, 3, 3], source="acts.zarr: 0/v_proj")


def test_flattened_rows_are_each_clip_s_frames_in_order():
    array = np.arange(12, dtype=np.float32).reshape(6, 2)
    flat = flattened_rows(array, [0, 3, 6])
    np.testing.assert_array_equal(flat, [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
    with pytest.raises(InputError, match="same number for every clip"):
        flattened_rows(array, [0, 2, 6])


# ---- cluster quality


def planted(n_per_class=10, speakers=2, separation=100.0, dims=6, seed=0):
    """Four classes around centres ``separation`` apart (unit noise), clips alternating speakers."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n_per_class)
    centres = separation * np.eye(4, dims)
    features = centres[labels] + rng.normal(size=(len(labels), dims))
    speaker_ids = np.array([f"s{i % speakers}" for i in range(len(labels))])
    return features, labels, speaker_ids


def test_well_separated_classes_score_near_one():
    features, labels, speakers = planted()
    quality = cluster_quality(features, labels, speakers, k=5, coordinates=features[:, :2])
    assert quality["silhouette_features"] > 0.95
    assert quality["knn_accuracy"] == 1.0 and quality["knn_uar"] == 1.0
    assert quality["knn_cv"] == LOSO
    assert "silhouette_map" in quality


def test_random_classes_score_about_chance():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(800, 8))
    labels = rng.integers(0, 4, size=800)
    speakers = rng.choice(["a", "b", "c", "d"], size=800)
    quality = cluster_quality(features, labels, speakers, k=5)
    assert abs(quality["knn_accuracy"] - 0.25) < 0.06 and abs(quality["knn_uar"] - 0.25) < 0.06
    assert abs(quality["silhouette_features"]) < 0.05


def test_one_speaker_falls_back_to_leave_one_out_and_says_so():
    features, labels, _ = planted(speakers=1)
    quality = cluster_quality(features, labels, np.full(len(labels), "s0"), k=5)
    assert quality["knn_cv"] == LOO == "leave-one-out (one speaker)"
    assert quality["knn_accuracy"] == 1.0


def test_knn_neighbours_come_only_from_other_speakers_known_answer():
    # Speaker A: two class-0 clips close together; speaker B: a class-1 clip near them, a class-0 one far.
    features = np.array([[0.0], [0.1], [1.0], [5.0]])
    labels = np.array([0, 0, 1, 0])
    speakers = np.array(["A", "A", "B", "B"])
    loso = knn_predictions(features, labels, speakers, k=1)
    loo = knn_predictions(features, labels, np.arange(4), k=1)
    np.testing.assert_array_equal(loso, [1, 1, 0, 0])  # A's clips see only B's; B's only A's
    np.testing.assert_array_equal(loo, [0, 0, 0, 1])
    # k=2: clip 0's other-speaker neighbours are labels 1 and 0 -> a tie, to the lower class index
    np.testing.assert_array_equal(knn_predictions(features, labels, speakers, k=2)[:2], [0, 0])
    # more neighbours asked than there are candidates: every candidate votes
    np.testing.assert_array_equal(knn_predictions(features, labels, speakers, k=10), [0, 0, 0, 0])


def test_a_single_class_has_no_silhouette():
    features, _, speakers = planted()
    quality = cluster_quality(features, np.zeros(len(features), dtype=int), speakers)
    assert np.isnan(quality["silhouette_features"]) and quality["knn_accuracy"] == 1.0


# ---- the maps


def test_tsne_is_seeded_and_pca_explains_variance_as_the_svd():
    features, _, _ = planted(n_per_class=6, separation=5.0)
    first, again = (embed(features, "tsne", seed=3, perplexity=5, max_iter=250) for _ in range(2))
    assert first.coordinates.shape == (24, 2) and first.perplexity == 5
    np.testing.assert_array_equal(first.coordinates, again.coordinates)
    pca = embed(features, "pca")
    centred = features - features.mean(0)
    singular = np.linalg.svd(centred, compute_uv=False)
    np.testing.assert_allclose(pca.explained_variance, (singular[:2] ** 2) / np.sum(singular ** 2),
                               rtol=1e-10)
    first_component = np.linalg.svd(centred)[0][:, 0] * singular[0]
    np.testing.assert_allclose(np.abs(pca.coordinates[:, 0]), np.abs(first_component), rtol=1e-8, atol=1e-10)


def test_a_small_split_gets_a_smaller_perplexity_and_one_feature_a_flat_pca(caplog):
    features = np.random.default_rng(0).normal(size=(10, 1))
    with caplog.at_level("INFO"):
        tsne = embed(features, "tsne", perplexity=30, max_iter=250)
    assert tsne.perplexity == 8 and "too few for perplexity 30" in caplog.text
    pca = embed(features, "pca")
    assert pca.explained_variance == (1.0, 0.0) and (pca.coordinates[:, 1] == 0).all()
    with pytest.raises(InputError, match="at least 3 clips"):
        embed(features[:2], "pca")


@pytest.mark.parametrize("settings, key", [
    ({"perplexity": 0}, "perplexity"), ({"max_iter": 100}, "max_iter"),
    ({"knn_neighbors": 0}, "knn_neighbors"), ({"module": ""}, "module"), ({"perplex": 3}, "unknown")])
def test_bad_settings_name_their_key(settings, key):
    with pytest.raises(InputError, match=f"analyses.embeddings.*{key}"):
        embedding_settings(settings)


def test_settings_default_to_the_paper_s():
    assert embedding_settings({}) == {"blocks": 5, "perplexity": 30, "max_iter": 1000, "seed": 42,
                                      "knn_neighbors": 5, "module": "auto"}


# ---- synthetic stores


def write_store(path, rank, *, seed=0, modules=("q_proj", "v_proj"), legacy=False, speakers=2, per_class=8,
                drop_clip=False, run_seed=0):
    """An acts store of a LoRA run of rank ``rank``: ``per_class`` test clips of each class (and two
    train clips without frame rows); A outputs are noise, except at :data:`PLANTED_BLOCK` where
    each class sits on its own axis. Legacy: 10 frames per clip (standing in for 1,500)."""
    rng = np.random.default_rng(seed)
    run = Run(rank=rank, **{**GROUP, "seed": run_seed})
    shape = StoreShape(kind="acts", n_layers=N_LAYERS, d_model=4, classes=tuple(CLASSES),
                       modules={(b, m): (rank, 4) for b in range(N_LAYERS) for m in modules},
                       resid_layers=(), lora_b_blocks=(), frame_dtype="float32")
    labels = np.repeat(np.arange(4), per_class)
    test = [f"u{i:02d}" for i in range(len(labels))]
    if drop_clip:
        test, labels = test[1:], labels[1:]
    ids = test + ["t0", "t1"]
    all_labels = np.concatenate([labels, [0, 1]])
    n, layers = len(ids), N_LAYERS
    lengths = np.full(n, 10) if legacy else rng.integers(3, 9, size=n)
    attrs = {"run": run.id, "dataset": run.dataset, "protocol": run.protocol, "model": run.model,
             "method": run.method, "targets": run.target_modules, "rank": rank, "alpha": 2.0 * rank,
             "seed": run.seed, "fold": run.fold, "legacy": legacy, "config_hash": "test", "provenance": {}}
    with CaptureStoreWriter(path, shape, attrs) as writer:
        writer.append_utterances({
            "utterance": np.array(ids), "speaker": np.array([f"s{i % speakers}" for i in range(n)]),
            "split": np.array(["test"] * len(test) + ["train", "train"]), "label": all_labels,
            "prediction": all_labels, "logits": rng.normal(size=(n, 4)).astype(np.float32),
            "n_frames": lengths, "resid": np.zeros((n, layers + 1, 4), np.float32),
            "normed": np.zeros((n, layers + 1, 4), np.float32),
            "attn": np.zeros((n, layers, 4), np.float32), "mlp": np.zeros((n, layers, 4), np.float32),
            "contribution": np.zeros((n, layers, len(CONTRIBUTION_STATISTICS))),
        })
        for i, utt in enumerate(test):
            rows = {}
            for key in shape.frame_arrays():
                _, block, module, _ = key
                frames = rng.normal(size=(lengths[i], rank))
                if block == PLANTED_BLOCK:
                    frames[:, labels[i] % rank] += 20.0
                rows[key] = frames.astype(np.float32)
            writer.append_frames(utt, rows)
    return CaptureStore(path, kind="acts", run=run.id)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings")
    return {rank: write_store(root / f"r{rank}.zarr", rank, seed=rank) for rank in (4, 8)}


@pytest.fixture(scope="module")
def result(group):
    return group_embeddings(group, "auto", FAST)


def test_the_group_table_has_every_rank_block_and_statistic(group, result):
    table, coordinates = result
    assert list(table.columns) == TABLE_COLUMNS
    assert set(table["rank"]) == {4, 8} and sorted(set(table["block"])) == [0, 1, 2, 3, 5]
    assert (table["module"] == "v_proj").all() and (table["clips"] == 32).all()
    statistics = table.groupby("space")["statistic"].apply(set).to_dict()
    assert statistics == {"features": {"silhouette_features", "knn_uar", "knn_accuracy"},
                          "tsne": {"silhouette_map", "perplexity"},
                          "pca": {"silhouette_map", "explained_variance_pc1", "explained_variance_pc2"}}
    assert len(table) == 2 * 5 * 8
    knn = table["statistic"].str.startswith("knn")
    assert (table.loc[knn, "knn_cv"] == LOSO).all() and table.loc[~knn, "knn_cv"].isna().all()
    values = table.set_index(["rank", "block", "space", "statistic"])["value"].sort_index()
    for rank in (4, 8):
        assert values[rank, PLANTED_BLOCK, "features", "knn_accuracy"] == 1.0
        assert values[rank, PLANTED_BLOCK, "features", "silhouette_features"] > 0.8
        assert values[rank, PLANTED_BLOCK, "tsne", "silhouette_map"] > 0.5
        noise = values[rank, 0, "features"]  # block 0: noise only
        assert noise["knn_uar"] < 0.6 and noise["silhouette_features"] < 0.2
    assert (values[:, :, "tsne", "perplexity"] == 8).all()
    # the coordinates: every clip once per rank, block and map, with its class name
    assert list(coordinates.columns) == ["rank", "block", "module", "space", "utt_id", "speaker", "label",
                                         "x", "y"]
    assert len(coordinates) == 2 * 5 * 2 * 32
    first = coordinates.query("rank == 4 and block == 0 and space == 'pca'")
    assert first["utt_id"].tolist() == group[4].frame_items and set(first["label"]) == set(CLASSES)


def test_the_features_are_the_pooled_a_outputs_of_the_test_clips(group):
    store = group[8]
    features = clip_features(store, 3, "v_proj")
    raw = store.frames(("lora", 3, "v_proj", "a_out"))
    offsets = store.frame_offsets
    assert features.shape == (32, 8)
    np.testing.assert_allclose(features[5], raw[offsets[5]:offsets[6]].astype(np.float64).mean(0), rtol=1e-12)


def test_the_same_seed_gives_identical_coordinates(group, result):
    again = group_embeddings({8: group[8]}, "auto", FAST)[1]
    before = result[1][result[1]["rank"] == 8].reset_index(drop=True)
    pd.testing.assert_frame_equal(before, again)


def test_clips_that_differ_between_ranks_are_refused_naming_both(group, tmp_path):
    other = write_store(tmp_path / "r16.zarr", 16, drop_clip=True)
    with pytest.raises(InputError, match=r"r16.zarr and .*r4.zarr hold different clips"):
        group_embeddings({4: group[4], 16: other}, "auto", FAST)


def test_a_store_of_another_rank_or_group_is_refused(group, tmp_path):
    with pytest.raises(InputError, match=r"r4.zarr holds rank 4, not 8"):
        group_embeddings({8: group[4]}, "auto", FAST)
    other_seed = write_store(tmp_path / "seed1.zarr", 16, run_seed=1)
    with pytest.raises(InputError, match=r"seed1.zarr .* are not of one group"):
        group_embeddings({4: group[4], 16: other_seed}, "auto", FAST)


def test_the_module_is_v_proj_when_adapted_else_the_first_adapted_one(group, tmp_path):
    assert choose_module(group, "auto") == "v_proj" and choose_module(group, "q_proj") == "q_proj"
    mlp_only = {4: write_store(tmp_path / "mlp.zarr", 4, modules=("fc2", "fc1"), per_class=2)}
    assert choose_module(mlp_only, "auto") == "fc1"
    with pytest.raises(InputError, match=r"mlp.zarr does not adapt 'v_proj'"):
        choose_module(mlp_only, "v_proj")


def test_a_legacy_store_gives_the_paper_s_standardized_flattened_windows(tmp_path):
    from sklearn.preprocessing import StandardScaler

    store = write_store(tmp_path / "legacy.zarr", 4, legacy=True, speakers=1, per_class=4)
    features = clip_features(store, 1, "v_proj")
    raw = store.frames(("lora", 1, "v_proj", "a_out")).astype(np.float64).reshape(16, 10 * 4)
    np.testing.assert_allclose(features, StandardScaler().fit_transform(raw), rtol=1e-10, atol=1e-12)
    table, _ = group_embeddings({4: store}, "auto", {**FAST, "blocks": 2, "perplexity": 30})
    assert sorted(set(table["block"])) == [0, 5]
    assert (table.loc[table["knn_cv"].notna(), "knn_cv"] == LOO).all()
    assert (table.loc[table["statistic"] == "perplexity", "value"] == 14).all()  # 16 clips: clipped to 14


# ---- the entry point


def group_arguments(group: dict) -> list[str]:
    return [a for name, value in group.items() for a in (f"--{name}", str(value))]


def test_the_entry_point_writes_the_table_coordinates_and_both_figures(group, tmp_path):
    from workflow_scripts.provenance import read_provenance

    out = tmp_path / "embeddings" / "group.parquet"
    main(group_arguments(GROUP) + ["--acts", f"8={group[8].path}", "--acts", f"4={group[4].path}",
                                   "--spec", json.dumps({**FAST, "blocks": 2}), "--out", str(out)])
    table = pd.read_parquet(out)
    leading = ["group", "dataset", "protocol", "model", "method", "targets", "seed", "fold"]
    assert list(table.columns) == leading + TABLE_COLUMNS
    assert (table["group"] == "toy/loso_speaker/tiny/lora/q_proj+v_proj/seed0/fold1").all()
    assert (table["method"] == "lora").all() and set(table["rank"]) == {4, 8}
    coordinates = pd.read_parquet(out.with_suffix(".coords.parquet"))
    assert list(coordinates.columns)[:8] == leading and len(coordinates) == 2 * 2 * 2 * 32
    for name in (".png", ".svg", ".pca.png", ".pca.svg"):
        assert out.with_suffix(name).stat().st_size > 0, name
    record = read_provenance(out)
    assert record["step"] == "embeddings" and record["module"] == "v_proj"
    assert record["acts"] == {"4": str(group[4].path), "8": str(group[8].path)}


def test_the_entry_point_refuses_a_store_of_another_run_and_writes_nothing(group, tmp_path):
    out = tmp_path / "x.parquet"
    with pytest.raises(InputError, match=r"r4.zarr holds run .*/r4/.*, not .*/r8/"):
        main(group_arguments(GROUP) + ["--acts", f"8={group[4].path}", "--spec", "{}", "--out", str(out)])
    with pytest.raises(InputError, match="holds run"):
        main(group_arguments({**GROUP, "seed": 1}) + ["--acts", f"4={group[4].path}", "--spec", "{}",
                                                      "--out", str(out)])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("values, message", [
    (["x.zarr"], "expected RANK=PATH"), (["r8=x.zarr"], "expected RANK=PATH"),
    (["8=a.zarr", "8=b.zarr"], "rank 8 is given twice")])
def test_bad_acts_arguments_are_named(values, message):
    with pytest.raises(InputError, match=message):
        parse_acts(values)


def test_help_describes_the_analysis(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "RANK=ACTS.zarr" in text and "t-SNE" in text and "--fold" in text and "--rank" not in text


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_clips_that_all_have_the_same_features_are_refused_by_name(method):
    """Identical clips have no map: PCA's variance ratios are 0/0, and t-SNE's PCA start fed
    scikit-learn's Barnes-Hut code NaN, which crashed the process (a fixture corpus of identical
    tones did, in the paper-mode test)."""
    with pytest.raises(InputError, match=f"acts.zarr: block 0.*same features.*no {method} map"):
        embed(np.ones((6, 4)), method, source="acts.zarr: block 0")
    with pytest.raises(InputError, match="not all finite"):
        embed(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 0.0]]), method)
