"""What each capture depends on, and the choices it resolves for a model (pure; no torch).

Each store kind gets only its own slice of ``capture:``, so that changing, say, the number of
gradient clips per class reruns the ``grads`` captures (and what reads them) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from workflow_scripts.config import dataset_spec
from workflow_scripts.errors import InputError
from workflow_scripts.stage_settings import StageSettings

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


STORE_SETTINGS: dict[str, type[StageSettings]] = {"acts": ActsStoreSettings, "grads": GradsStoreSettings}


@dataclass(frozen=True)
class CaptureSettings(StageSettings):
    """What one capture store (acts or grads) of a run on a dataset reads from the config."""

    SECTION = "capture"
    capture: ActsStoreSettings | GradsStoreSettings
    legacy: bool
    max_seconds: float
    classes: tuple[str, ...]
    device: str

    @classmethod
    def from_config(cls, config: dict, dataset: str, kind: str) -> "CaptureSettings":
        if kind not in STORE_SETTINGS:
            raise InputError(f"unknown store kind {kind!r}: choose acts or grads")
        store = STORE_SETTINGS[kind]
        keys = [field.name for field in fields(store)]
        return cls.from_mapping({
            "capture": store.from_mapping({key: config["capture"][key] for key in keys}),
            "legacy": config["legacy"],
            "max_seconds": config["audio"]["max_seconds"],
            "classes": dataset_spec(config, dataset)["classes"],
            "device": config["training"]["device"],
        })


def capture_settings(config: dict, dataset: str, kind: str) -> dict:
    """The settings a ``kind`` capture (acts or grads) of a run on ``dataset`` reads."""
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
