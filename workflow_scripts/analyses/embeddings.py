"""Embeddings of the LoRA A outputs (paper 3.4, F3): t-SNE and PCA maps of U = A·x per clip, at
evenly spaced blocks, across the ranks of one configuration, with cluster-quality numbers the
paper did not compute.

Input: the acts stores of one *group* -- the runs of the grid that differ only in their LoRA rank
(same dataset, protocol, model, method, targets, seed and fold) -- which hold, for the fold's test
clips, the frame-level A outputs of every adapted module. Per rank, per chosen block, for one
module (``module: auto`` takes ``v_proj``, the paper's, when it is adapted, else the
alphabetically first adapted module):

* features per clip. Default: the mean of the clip's real frames, float64 ([clips, r]); no
  standardisation, so distances are those of the rank space that B reads linearly. Under
  ``legacy`` (a store captured with the 30-s window): the paper's exact features, each clip's
  1,500 frames flattened to 1,500·r values, then a per-feature z-score (scikit-learn's
  ``StandardScaler``) -- features that are ~85 % padding and partly encode duration (paper
  5.3, items 23-24).
* maps: t-SNE (scikit-learn ``TSNE``, 2 components, ``perplexity`` and ``max_iter`` from the
  settings, ``random_state`` = ``seed``, other defaults; the defaults 30/1000/42 are the paper's)
  and PCA (2 components; centred, not scaled; with each component's explained-variance ratio).
  t-SNE needs perplexity < clips: a smaller split gets perplexity clips − 2, logged and reported.
  With scikit-learn's default PCA initialisation the seed enters t-SNE only where scikit-learn
  picks the randomized PCA solver for the start (larger inputs, such as the paper's 507 ×
  1,500·r windows); elsewhere (e.g. a few hundred clips of pooled rank-8 features) the map is the
  same whatever the seed. Either way one seed gives one map, run after run.
* cluster quality, by true emotion class: the silhouette score (Euclidean; scikit-learn) on the
  features themselves and on each 2-D map, and the accuracy and UAR of a k-nearest-neighbour
  vote (Euclidean, k = ``knn_neighbors``, ties in distance to the lower clip index, ties in the
  vote to the lower class index). The kNN is speaker-grouped: a clip's neighbours come only from
  other speakers (leave-one-speaker-out) when the clips have at least two speakers; a fold's test
  split of a leave-one-speaker-out protocol has one speaker, and then it is leave-one-out (every
  other clip may be a neighbour), which the ``knn_cv`` column says.

Blocks: ``blocks`` evenly spaced encoder blocks, ``floor(k·(L−1)/(blocks−1))`` for k = 0..blocks−1
(``numpy.linspace(0, L−1, blocks)`` truncated to integers), which gives the paper's 0/7/15/23/31
for Whisper-large-v2's 32 blocks; rounding to nearest would give 0/8/16/23/31. A model with fewer
blocks than ``blocks`` gets all of them.

Table (tidy; leading columns: group, dataset, protocol, model, method, targets, seed, fold):
rank, block, module, space, statistic, value, knn_cv, clips. ``space`` says where a statistic is
computed: ``features`` (silhouette_features, knn_uar, knn_accuracy; knn_cv names the scheme on
these rows, null elsewhere), ``tsne`` (silhouette_map, perplexity: the one used) or ``pca``
(silhouette_map, explained_variance_pc1, explained_variance_pc2). The 2-D coordinates go to
``<table>.coords.parquet`` (group columns, rank, block, module, space, utt_id, speaker, label, x,
y). Figures: the paper's grid (rows ranks, columns blocks, points coloured by emotion) for t-SNE
beside the table (``<table>.png``/``.svg``) and for PCA (``<table>.pca.png``/``.svg``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.cli import parse_assignments, resolve_spec, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.metrics import confusion_matrix, uar

log = logging.getLogger(__name__)

PAPER_MODULE = "v_proj"
METHODS = ("tsne", "pca")
LOSO = "leave-one-speaker-out"
LOO = "leave-one-out (one speaker)"
#: A group: the runs of the grid that differ only in rank.
GROUP_WILDCARDS = ("dataset", "protocol", "model", "method", "targets", "seed", "fold")
GROUP_PATTERN = "{dataset}/{protocol}/{model}/{method}/{targets}/seed{seed}/fold{fold}"
#: The paper's colours, by the first three letters of a class name (anger/angry, happiness/happy ...).
PAPER_COLOURS = {"ang": "red", "hap": "orange", "neu": "blue", "sad": "purple"}
ROW_BUDGET = 1 << 22  # values read from a store at a time (32 MiB as float64)
KNN_QUERY_BLOCK = 256  # clips whose distances to all clips are held at once


def embedding_blocks(n_blocks: int, count: int = 5) -> list[int]:
    """``count`` evenly spaced blocks of ``n_blocks``: ``floor(k·(n_blocks−1)/(count−1))``, k =
    0..count−1 (exact integer arithmetic). 32 blocks -> the paper's [0, 7, 15, 23, 31]; fewer
    blocks than ``count`` -> all of them. Distinct whenever n_blocks >= count (steps are >= 1)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"analyses.embeddings.blocks: {count!r} is not a positive integer")
    if n_blocks < 1:
        raise InputError(f"a model with {n_blocks} blocks has no block to embed")
    if n_blocks <= count:
        return list(range(n_blocks))
    if count == 1:
        return [0]
    return [k * (n_blocks - 1) // (count - 1) for k in range(count)]


def _row_blocks(offsets: np.ndarray, width: int):
    """Consecutive clip ranges ``(start, stop)`` whose rows hold about :data:`ROW_BUDGET` values
    (at least one clip each), so a store is read in a few large slices, never all at once."""
    budget = max(1, ROW_BUDGET // max(width, 1))
    n, start = len(offsets) - 1, 0
    while start < n:
        stop = int(np.searchsorted(offsets, offsets[start] + budget, side="right")) - 1
        stop = min(n, max(stop, start + 1))
        yield start, stop
        start = stop


def _clip_counts(offsets, source: str) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    empty = np.flatnonzero(counts <= 0)
    if empty.size:
        raise InputError(f"{source}: clip(s) {empty[:10].tolist()} have no frames to pool")
    return counts


def pooled_rows(array, offsets, source: str = "the frame-level array") -> np.ndarray:
    """The mean of each clip's rows, ``[clips, width]`` float64: clip i is
    ``array[offsets[i]:offsets[i+1]]``. ``array`` may be a Zarr array; it is read in slices of
    whole clips (streamed), summed in float64 and divided by the clip's frame count."""
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = _clip_counts(offsets, source)
    width = int(array.shape[1])
    pooled = np.empty((len(counts), width), dtype=np.float64)
    for start, stop in _row_blocks(offsets, width):
        rows = np.asarray(array[int(offsets[start]):int(offsets[stop])], dtype=np.float64)
        sums = np.add.reduceat(rows, offsets[start:stop] - offsets[start], axis=0)
        pooled[start:stop] = sums / counts[start:stop, None]
    return pooled


def flattened_rows(array, offsets, source: str = "the frame-level array") -> np.ndarray:
    """The paper's t-SNE input: each clip's ``[frames, r]`` rows flattened to ``frames·r`` values,
    ``[clips, frames·r]`` float64. Every clip must have the same number of frames (1,500 under
    ``legacy``)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = _clip_counts(offsets, source)
    if np.unique(counts).size > 1:
        raise InputError(f"{source}: the clips have {int(counts.min())} to {int(counts.max())} frames; the "
                         "flattened (legacy) features need the same number for every clip "
                         "(1,500, the 30-s window)")
    frames, width = int(counts[0]), int(array.shape[1])
    flat = np.empty((len(counts), frames * width), dtype=np.float64)
    for start, stop in _row_blocks(offsets, width):
        rows = np.asarray(array[int(offsets[start]):int(offsets[stop])], dtype=np.float64)
        flat[start:stop] = rows.reshape(stop - start, frames * width)
    return flat


def standardized(features: np.ndarray) -> np.ndarray:
    """Per-feature z-scores (scikit-learn's ``StandardScaler``; constant features become 0), float64."""
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))


@dataclass(frozen=True)
class Embedding:
    """A 2-D map of the clips: ``coordinates [clips, 2]``; t-SNE's ``perplexity`` as used; PCA's
    ``explained_variance`` ratio of each of the two components."""

    method: str
    coordinates: np.ndarray
    perplexity: float | None = None
    explained_variance: tuple[float, float] | None = None


def tsne_perplexity(perplexity: float, n_clips: int) -> float:
    """``perplexity``, or ``n_clips − 2`` when the clips are too few for it (scikit-learn needs
    perplexity < clips)."""
    if perplexity <= n_clips - 2:
        return float(perplexity)
    used = float(max(n_clips - 2, 1))
    log.info("t-SNE: %d clips are too few for perplexity %g; using %g", n_clips, perplexity, used)
    return used


def embed(features: np.ndarray, method: str = "tsne", seed: int = 42, perplexity: float = 30,
          max_iter: int = 1000, source: str = "the clips") -> Embedding:
    """A 2-D map of ``features [clips, d]`` (float64): ``tsne`` (``TSNE(n_components=2,
    perplexity, max_iter, random_state=seed)``, other scikit-learn defaults; a random start
    instead of the PCA one for a single feature) or ``pca`` (two components; with one feature,
    the second coordinate is 0 and explains nothing). ``source`` names the features in errors:
    clips whose features are all equal, or not finite, have no map."""
    features = np.asarray(features, dtype=np.float64)
    n = features.shape[0]
    if n < 3:
        raise InputError(f"an embedding needs at least 3 clips, got {n}")
    if not np.isfinite(features).all():
        raise InputError(f"{source}: the features are not all finite; no {method} map")
    if np.ptp(features, axis=0).max(initial=0.0) == 0:
        # Every clip at one point: PCA's variance ratios are 0/0, and t-SNE's PCA start then
        # feeds NaN to scikit-learn's Barnes-Hut code, which crashes the process (SIGSEGV).
        raise InputError(f"{source}: every clip has the same features (no variance); no {method} map")
    if method == "tsne":
        from sklearn.manifold import TSNE

        used = tsne_perplexity(perplexity, n)
        # scikit-learn's default initialisation is a 2-component PCA, which one feature (rank 1) cannot give.
        init = "pca" if features.shape[1] >= 2 else "random"
        coordinates = TSNE(n_components=2, perplexity=used, max_iter=max_iter, random_state=seed,
                           init=init).fit_transform(features)
        return Embedding("tsne", np.asarray(coordinates, dtype=np.float64), perplexity=used)
    if method == "pca":
        from sklearn.decomposition import PCA

        components = min(2, features.shape[1], n)
        pca = PCA(n_components=components, svd_solver="full", random_state=seed)
        coordinates = np.zeros((n, 2))
        coordinates[:, :components] = pca.fit_transform(features)
        ratio = np.zeros(2)
        ratio[:components] = pca.explained_variance_ratio_
        return Embedding("pca", coordinates, explained_variance=(float(ratio[0]), float(ratio[1])))
    raise InputError(f"embedding method {method!r}: choose from {list(METHODS)}")


def silhouette(features: np.ndarray, labels: np.ndarray) -> float:
    """The mean silhouette (Euclidean) of ``labels`` in ``features``; NaN (logged) when it is
    undefined (one class, or every clip its own class)."""
    from sklearn.metrics import silhouette_score

    present = np.unique(labels).size
    if not 2 <= present <= len(labels) - 1:
        log.warning("silhouette undefined for %d classes over %d clips; reported as NaN",
                    present, len(labels))
        return float("nan")
    return float(silhouette_score(np.asarray(features, dtype=np.float64), labels, metric="euclidean"))


def knn_predictions(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Each clip's class by a vote of its ``k`` nearest clips (Euclidean) of *other* groups (a
    clip's own group -- its speaker, or itself -- is excluded). Ties in distance go to the lower
    clip index, ties in the vote to the lower class index; fewer than ``k`` candidates: all vote."""
    from scipy.spatial.distance import cdist

    features = np.asarray(features, dtype=np.float64)
    labels, groups = np.asarray(labels), np.asarray(groups)
    n_classes = int(labels.max()) + 1
    predictions = np.empty(len(labels), dtype=np.int64)
    for start in range(0, len(labels), KNN_QUERY_BLOCK):
        stop = min(len(labels), start + KNN_QUERY_BLOCK)
        distances = cdist(features[start:stop], features, "sqeuclidean")
        distances[groups[start:stop, None] == groups[None, :]] = np.inf
        nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
        usable = np.isfinite(np.take_along_axis(distances, nearest, axis=1))
        for row, (neighbours, ok) in enumerate(zip(nearest, usable)):
            votes = np.bincount(labels[neighbours[ok]], minlength=n_classes)
            predictions[start + row] = int(np.argmax(votes))  # ties: the lowest class index
    return predictions


def cluster_quality(features: np.ndarray, labels: np.ndarray, speakers: np.ndarray, k: int = 5,
                    coordinates: np.ndarray | None = None) -> dict:
    """How well the true classes cluster in ``features [clips, d]``: ``silhouette_features``, the
    speaker-grouped kNN's ``knn_uar`` and ``knn_accuracy`` with ``knn_cv`` (:data:`LOSO` when the
    clips have >= 2 speakers, else :data:`LOO`), and ``silhouette_map`` on ``coordinates`` if given."""
    labels, speakers = np.asarray(labels, dtype=np.int64), np.asarray(speakers)
    n = len(labels)
    if n < 2:
        raise InputError(f"cluster quality needs at least 2 clips, got {n}")
    if np.unique(speakers).size >= 2:
        scheme, groups = LOSO, speakers
    else:
        scheme, groups = LOO, np.arange(n)
    candidates = n - max(np.unique(groups, return_counts=True)[1])  # the fewest any clip may use
    if k > candidates:
        log.info("kNN: %d neighbours requested, some clips have only %d candidates (%s)",
                 k, candidates, scheme)
    predictions = knn_predictions(features, labels, groups, k)
    matrix = confusion_matrix(labels, predictions, int(max(labels.max(), predictions.max())) + 1)
    quality = {"silhouette_features": silhouette(features, labels), "knn_uar": uar(matrix),
               "knn_accuracy": float(np.mean(predictions == labels)), "knn_cv": scheme}
    if coordinates is not None:
        quality["silhouette_map"] = silhouette(coordinates, labels)
    return quality


def embedding_settings(settings: dict | None) -> dict:
    """The settings with the schema's defaults filled in (``analyses.embeddings``), checked; a bad
    key raises :class:`InputError` naming it."""
    from workflow_scripts.analyses.settings import EmbeddingSettings

    return EmbeddingSettings.from_spec(settings).as_dict()


def choose_module(stores: dict, requested: str) -> str:
    """``requested``, or for ``auto`` :data:`PAPER_MODULE` if every store adapts it, else the
    alphabetically first module every store adapts."""
    shared = None
    for store in stores.values():
        modules = {module for _, module in store.adapted()}
        if not modules:
            raise InputError(f"{store.path}: no LoRA A outputs (no adapted module); "
                             "embeddings need a LoRA run's store")
        shared = modules if shared is None else shared & modules
    if requested != "auto":
        for store in stores.values():
            adapted = sorted({module for _, module in store.adapted()})
            if requested not in adapted:
                raise InputError(f"analyses.embeddings.module: {store.path} does not adapt {requested!r} "
                                 f"(it adapts {adapted})")
        return requested
    if not shared:
        raise InputError("the stores adapt no module in common: " + "; ".join(
            f"{store.path}: {sorted({m for _, m in store.adapted()})}" for store in stores.values()))
    return PAPER_MODULE if PAPER_MODULE in shared else sorted(shared)[0]


def _group_of(store) -> tuple:
    attrs = store.attrs
    targets = attrs["targets"]
    targets = "+".join(sorted(targets)) if isinstance(targets, list) else targets
    return (attrs["dataset"], attrs["protocol"], attrs["model"], attrs["method"], targets,
            int(attrs["seed"]), int(attrs["fold"]))


def check_group(stores: dict) -> None:
    """The stores are of one group, each at its own rank, over identical clips, alike in depth and
    in ``legacy``; else an :class:`InputError` naming the offending store(s)."""
    if not stores:
        raise InputError("embeddings need at least one acts store")
    for rank, store in stores.items():
        if int(store.attrs["rank"]) != int(rank):
            raise InputError(f"{store.path} holds rank {store.attrs['rank']}, not {rank} "
                             f"(run {store.attrs['run']})")
    ranks = sorted(stores)
    first = stores[ranks[0]]
    for rank in ranks[1:]:
        store = stores[rank]
        if _group_of(store) != _group_of(first):
            raise InputError(f"{store.path} (run {store.attrs['run']}) and {first.path} "
                             f"(run {first.attrs['run']}) are not of one group (same dataset, protocol, "
                             "model, method, targets, seed and fold)")
        if store.frame_items != first.frame_items:
            raise InputError(f"{store.path} and {first.path} hold different clips "
                             f"({len(store.frame_items)} and {len(first.frame_items)} with frame-level rows, "
                             "or in another order); the ranks of a group must be compared on identical clips")
        for name in ("n_layers", "legacy"):
            if store.attrs[name] != first.attrs[name]:
                raise InputError(f"{store.path} and {first.path} differ in {name} "
                                 f"({store.attrs[name]} and {first.attrs[name]})")


def clip_table(store) -> pd.DataFrame:
    """The store's clips with frame-level rows, in row order: utt_id, speaker, label (index), class."""
    utterances = store.utterances().set_index("utt_id")
    missing = sorted(set(store.frame_items) - set(utterances.index))
    if missing:
        raise InputError(f"{store.path}: frame-level clips {missing[:5]} are not among its utterances")
    clips = utterances.loc[store.frame_items, ["speaker", "label"]].reset_index()
    clips["class"] = [store.classes[int(label)] for label in clips["label"]]
    return clips


def clip_features(store, block: int, module: str) -> np.ndarray:
    """The clips' features at ``(block, module)``: pooled means by default; flattened and
    standardized windows when the store was captured under ``legacy``."""
    key = ("lora", block, module, "a_out")
    if (block, module) not in store.adapted():
        raise InputError(f"{store.path} has no A outputs for block {block}, module {module}")
    source = f"{store.path}: {'/'.join(map(str, key[1:]))}"
    if store.attrs["legacy"]:
        return standardized(flattened_rows(store.frame_array(key), store.frame_offsets, source))
    return pooled_rows(store.frame_array(key), store.frame_offsets, source)


def group_embeddings(stores: dict, module: str = "auto", settings: dict | None = None):
    """t-SNE and PCA maps and their cluster quality for every rank of ``stores`` (rank ->
    :class:`~workflow_scripts.capture.store.CaptureStore`) at the evenly spaced blocks, for
    ``module`` (``auto``: see :func:`choose_module`). Returns ``(table, coordinates)`` (the
    module docstring gives their columns; without the group's columns)."""
    settings = embedding_settings(settings)
    check_group(stores)
    ranks = sorted(stores)
    module = choose_module(stores, module)
    first = stores[ranks[0]]
    blocks = embedding_blocks(first.n_layers, settings["blocks"])
    clips = clip_table(first)
    labels, speakers = clips["label"].to_numpy(np.int64), clips["speaker"].to_numpy()
    n = len(clips)
    rows, maps = [], []
    for rank in ranks:
        for block in blocks:
            features = clip_features(stores[rank], block, module)
            quality = cluster_quality(features, labels, speakers, settings["knn_neighbors"])
            where = {"rank": rank, "block": block, "module": module}
            rows += [{**where, "space": "features", "statistic": name, "value": quality[name],
                      "knn_cv": quality["knn_cv"] if name.startswith("knn") else None}
                     for name in ("silhouette_features", "knn_uar", "knn_accuracy")]
            for method in METHODS:
                embedding = embed(features, method, settings["seed"], settings["perplexity"],
                                  settings["max_iter"], f"{stores[rank].path}: block {block}, {module} A outputs")
                values = {"silhouette_map": silhouette(embedding.coordinates, labels)}
                if method == "tsne":
                    values["perplexity"] = embedding.perplexity
                else:
                    pc1, pc2 = embedding.explained_variance
                    values.update(explained_variance_pc1=pc1, explained_variance_pc2=pc2)
                rows += [{**where, "space": method, "statistic": name, "value": float(value), "knn_cv": None}
                         for name, value in values.items()]
                x, y = embedding.coordinates.T
                maps.append(pd.DataFrame({**where, "space": method, "utt_id": clips["utt_id"],
                                          "speaker": clips["speaker"], "label": clips["class"],
                                          "x": x, "y": y}))
    table = pd.DataFrame(rows, columns=["rank", "block", "module", "space", "statistic", "value", "knn_cv"])
    table["clips"] = n
    return table, pd.concat(maps, ignore_index=True)


def class_colours(classes: list[str]) -> dict[str, object]:
    """The paper's colours for anger, happiness, neutral and sadness (by their first three
    letters); other classes take seaborn colours that are none of those."""
    import seaborn as sns

    spare = iter([c for i, c in enumerate(sns.color_palette("tab10", 10)) if i not in (0, 1, 3, 4)] * 4)
    return {name: PAPER_COLOURS.get(name[:3].lower()) or next(spare) for name in classes}


def embedding_figure(table: pd.DataFrame, coordinates: pd.DataFrame, method: str, classes: list[str],
                     title: str):
    """The paper's grid for one method: rows ranks, columns blocks, each clip a point coloured by
    its true class; each panel's title has its silhouettes and kNN UAR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ranks, blocks = sorted(coordinates["rank"].unique()), sorted(coordinates["block"].unique())
    size = (2.7 * len(blocks) + 1.2, 2.6 * len(ranks) + 0.9)
    figure, axes = plt.subplots(len(ranks), len(blocks), figsize=size, squeeze=False)
    colours = class_colours(classes)
    values = table.set_index(["rank", "block", "space", "statistic"])["value"].sort_index()
    axis_name = {"tsne": "t-SNE", "pca": "PC"}[method]
    for i, rank in enumerate(ranks):
        for j, block in enumerate(blocks):
            axis = axes[i, j]
            points = coordinates[(coordinates["rank"] == rank) & (coordinates["block"] == block)
                                 & (coordinates["space"] == method)]
            for name in classes:
                chosen = points[points["label"] == name]
                axis.scatter(chosen["x"], chosen["y"], s=9, alpha=0.8, color=colours[name], linewidths=0)
            features = values[rank, block, "features"]
            axis.set_title(f"r={rank}, block {block}\nsilhouette {features['silhouette_features']:.2f}"
                           f" (map {values[rank, block, method, 'silhouette_map']:.2f})\n"
                           f"kNN UAR {features['knn_uar']:.2f}", fontsize=8)
            axis.tick_params(labelsize=6)
            if method == "pca":
                pc1 = values[rank, block, "pca", "explained_variance_pc1"]
                pc2 = values[rank, block, "pca", "explained_variance_pc2"]
                axis.set_xlabel(f"PC1 ({100 * pc1:.0f} %)", fontsize=7)
                axis.set_ylabel(f"PC2 ({100 * pc2:.0f} %)", fontsize=7)
            else:
                axis.set_xlabel(f"{axis_name} 1", fontsize=7)
                axis.set_ylabel(f"{axis_name} 2", fontsize=7)
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[name], label=name) for name in classes]
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                  title="true class")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def group_columns(group: dict) -> dict:
    return {"group": GROUP_PATTERN.format(**group), **{name: group[name] for name in GROUP_WILDCARDS}}


def with_group_columns(table: pd.DataFrame, group: dict) -> pd.DataFrame:
    """``table`` with the group's id and wildcards as leading columns."""
    fields = group_columns(group)
    leading = pd.DataFrame({k: [v] * len(table) for k, v in fields.items()})
    return pd.concat([leading, table.reset_index(drop=True)], axis=1)


def figure_title(method: str, module: str, table: pd.DataFrame, settings: dict, legacy: bool,
                 group_id: str) -> str:
    name = {"tsne": "t-SNE", "pca": "PCA"}[method]
    features = ("flattened 30-s windows, standardized (legacy)" if legacy else "mean over each clip's frames")
    knn_cv = table["knn_cv"].dropna().iloc[0]
    clips = int(table["clips"].iloc[0])
    return (f"{name} of the LoRA A outputs U = A·x of {module}, {features}, {clips} test clips\n"
            f"panels: silhouette by true class on the features (on the map); "
            f"kNN UAR (k={settings['knn_neighbors']}, {knn_cv})\n{group_id}")


def parse_acts(values: list[str]) -> dict[int, str]:
    """``["8=a.zarr", "32=b.zarr"]`` -> ``{8: "a.zarr", 32: "b.zarr"}``; one store per rank."""
    acts = parse_assignments(values, "--acts", "RANK=PATH")
    malformed = [rank for rank in acts if not rank.isdigit()]
    if malformed:
        raise InputError(f"--acts {malformed[0]}={acts[malformed[0]]}: expected RANK=PATH, "
                         "e.g. 8=results/acts/.../r8/.../acts.zarr")
    return {int(rank): path for rank, path in acts.items()}


def embeddings_parser():
    from workflow_scripts.analyses.output import OUT_HELP
    from workflow_scripts.cli import entry_parser

    parser = entry_parser("workflow_scripts.analyses.embeddings", __doc__)
    for name in GROUP_WILDCARDS:
        parser.add_argument(f"--{name}", required=True, type=int if name in ("seed", "fold") else str)
    parser.add_argument("--acts", required=True, action="append", metavar="RANK=ACTS.zarr",
                        help="a run's acts.zarr and its rank; once per rank of the group")
    parser.add_argument("--out", required=True, help=OUT_HELP + "; the PCA figure as <stem>.pca.png/.svg, "
                        "the coordinates as <stem>.coords.parquet")
    return parser


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import save_figure, write_analysis
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    args = embeddings_parser().parse_args(argv)
    group = {name: getattr(args, name) for name in GROUP_WILDCARDS}
    group_id = GROUP_PATTERN.format(**group)
    acts = parse_acts(args.acts)
    settings = embedding_settings(resolve_spec(args, lambda config: config["analyses"].get("embeddings", {})))
    stores = {rank: CaptureStore(path, kind="acts", run=Run(rank=rank, **group).id)
              for rank, path in acts.items()}
    table, coordinates = group_embeddings(stores, settings["module"], settings)
    legacy = bool(stores[min(stores)].attrs["legacy"])
    module = table["module"].iloc[0]
    figures = {method: embedding_figure(table, coordinates, method, stores[min(stores)].classes,
                                        figure_title(method, module, table, settings, legacy, group_id))
               for method in METHODS}  # before anything is written: a failing figure leaves no output
    record = provenance("embeddings", settings, group=group_id, module=module,
                        acts={str(rank): path for rank, path in sorted(acts.items())})
    out = Path(args.out)
    write_analysis(with_group_columns(table, group), out, record)
    write_analysis(with_group_columns(coordinates, group), out.with_suffix(".coords.parquet"), record)
    save_figure(figures["tsne"], out.with_suffix(".png"))
    save_figure(figures["pca"], out.with_suffix(".pca.png"))
    log.info("wrote %s", out)


if __name__ == "__main__":
    run_main(main)
