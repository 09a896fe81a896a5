"""What each capture depends on, and the choices it resolves for a model (pure; no torch).

Each store kind gets only its own slice of ``capture:``, so that changing, say, the number of
gradient clips per class reruns the ``grads`` captures (and what reads them) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from workflow_scripts.config import dataset_spec
from workflow_scripts.errors import InputError
from workflow_scripts.stage_settings import StageSettings

#: The splits a grads store draws from when the models trained on train + val (``training.select_on:
#: test``, legacy): the original's pool, every non-test clip.
LEGACY_GRADS_POOL = ("train", "val")

#: ``auto`` keeps frame-level residual streams and B outputs for models this wide or narrower
#: (Whisper-base: 512); wider models' frames are large (large-v2: 2.5 kB per frame and layer).
AUTO_FRAME_WIDTH = 512


@dataclass(frozen=True)
class ActsStoreSettings(StageSettings):
    """The part of ``capture:`` an acts.zarr reads."""

    SECTION = "capture"
    batch_size: int
    frame_dtype: str
    resid_layers: str | tuple[int, ...]
    lora_b_blocks: str | tuple[int, ...]


@dataclass(frozen=True)
class GradsStoreSettings(StageSettings):
    """The part of ``capture:`` a grads.zarr reads."""

    SECTION = "capture"
    batch_size: int
    grads_per_class: int | str
    grads_seed: int


@dataclass(frozen=True)
class CheckpointStoreSettings(StageSettings):
    """The part of ``capture:`` a checkpoint store reads (``workflow_scripts.dynamics.capture``):
    the acts store's settings without the frame-level keys (resid_layers, lora_b_blocks,
    frame_dtype), as it keeps no frames, so that changing them does not rerun it."""

    SECTION = "capture"
    batch_size: int


STORE_SETTINGS: dict[str, type[StageSettings]] = {
    "acts": ActsStoreSettings, "grads": GradsStoreSettings, "checkpoint": CheckpointStoreSettings,
}


@dataclass(frozen=True)
class CaptureSettings(StageSettings):
    """What one capture store (acts, grads, or a training checkpoint's) of a run on a dataset
    reads from the config."""

    SECTION = "capture"
    capture: ActsStoreSettings | GradsStoreSettings | CheckpointStoreSettings
    legacy: bool
    max_seconds: float
    classes: tuple[str, ...]
    device: str
    # grads only: the splits of the gradient pool when it is not the fold's training split
    # (:data:`LEGACY_GRADS_POOL` under ``training.select_on: test``). None, the default, is left
    # out of the params, so the default's captures keep their settings (and are not rerun).
    grads_pool: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, config: dict, dataset: str, kind: str) -> "CaptureSettings":
        if kind not in STORE_SETTINGS:
            raise InputError(f"unknown store kind {kind!r}: choose from {sorted(STORE_SETTINGS)}")
        store = STORE_SETTINGS[kind]
        keys = [field.name for field in fields(store)]
        return cls.from_mapping({
            "capture": store.from_mapping({key: config["capture"][key] for key in keys}),
            "legacy": config["legacy"],
            "max_seconds": config["audio"]["max_seconds"],
            "classes": dataset_spec(config, dataset)["classes"],
            "device": config["training"]["device"],
            "grads_pool": grads_pool(config) if kind == "grads" else None,
        })


def grads_pool(config: dict) -> tuple[str, ...] | None:
    """The splits the trained models saw, when not just the training split: under
    ``training.select_on: test`` they trained on train + val (train.run.training_data)."""
    return LEGACY_GRADS_POOL if config["training"]["select_on"] == "test" else None


def capture_settings(config: dict, dataset: str, kind: str) -> dict:
    """The settings a ``kind`` capture (acts, grads or checkpoint) of a run on ``dataset`` reads."""
    return CaptureSettings.from_config(config, dataset, kind).as_dict()


def resolve_indices(setting, count: int, d_model: int, key: str) -> tuple[int, ...]:
    """``auto`` (all ``count`` when ``d_model <= AUTO_FRAME_WIDTH``, else none) or a list of
    indices, each checked against ``range(count)``; ``key`` names the config key in errors."""
    if setting == "auto":
        return tuple(range(count)) if d_model <= AUTO_FRAME_WIDTH else ()
    bad = [index for index in setting if not 0 <= int(index) < count]
    if bad:
        raise InputError(f"{key}: {bad} out of range; this model has indices 0..{count - 1}")
    return tuple(sorted({int(index) for index in setting}))


def balanced_subset(labels: np.ndarray, per_class: int | str, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset, as the paper's ``select_balanced_samples``: shuffle
    with ``seed``, then keep, in that order, the first ``per_class`` clips of each class
    (``"all"``: every clip, shuffled). A class with fewer clips gives all it has."""
    order = np.random.default_rng(seed).permutation(len(labels))
    if per_class == "all":
        return order
    taken: dict[int, int] = {}
    chosen = []
    for index in order:
        label = int(labels[index])
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            chosen.append(index)
    return np.asarray(chosen, dtype=np.int64)


def gradient_pool(clips: pd.DataFrame, pool: tuple[str, ...] | None, manifest_ids) -> pd.DataFrame:
    """The clips a grads store's balanced subset is drawn from, in the order :func:`balanced_subset`
    shuffles them. ``clips`` is a fold table (``utt_id``, ``split``, ...) in its own order.

    * ``pool`` None (the default, models trained on the training split): the fold's ``train``
      clips in the fold table's order.
    * ``pool`` a tuple of splits (:data:`LEGACY_GRADS_POOL`, models trained on train + val): those
      splits' clips in the dataset's order, ``manifest_ids`` (the manifest's ``utt_id`` column),
      as the original's ``select_balanced_samples`` shuffled its training set: the corpus in its
      own order with the test clips filtered out.
    """
    if pool is None:
        return clips[clips["split"] == "train"].reset_index(drop=True)
    position = {utt: i for i, utt in enumerate(manifest_ids)}
    chosen = clips[clips["split"].isin(pool)]
    missing = [utt for utt in chosen["utt_id"] if utt not in position]
    if missing:
        raise InputError(f"the manifest lacks {len(missing)} clips of the fold table (e.g. {missing[:3]}): "
                         "rebuild it")
    order = np.argsort([position[utt] for utt in chosen["utt_id"]], kind="stable")
    return chosen.iloc[order].reset_index(drop=True)
