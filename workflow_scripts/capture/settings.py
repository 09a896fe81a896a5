"""What each capture depends on, and the choices it resolves for a model (pure; no torch).

Each store kind gets only its own slice of ``capture:``, so that changing, say, the number of
gradient clips per class reruns the ``grads`` captures (and what reads them) and nothing else.
"""

from __future__ import annotations

import numpy as np

from workflow_scripts.config import dataset_spec
from workflow_scripts.errors import InputError

STORE_KEYS = {
    "acts": ("batch_size", "frame_dtype", "resid_layers", "lora_b_blocks"),
    "grads": ("batch_size", "grads_per_class", "grads_seed"),
}
#: ``auto`` keeps frame-level residual streams and B outputs for models this wide or narrower
#: (Whisper-base: 512); wider models' frames are large (large-v2: 2.5 kB per frame and layer).
AUTO_FRAME_WIDTH = 512


def capture_settings(config: dict, dataset: str, kind: str) -> dict:
    """The settings a ``kind`` capture (acts or grads) of a run on ``dataset`` reads."""
    if kind not in STORE_KEYS:
        raise InputError(f"unknown store kind {kind!r}: choose acts or grads")
    return {
        "capture": {key: config["capture"][key] for key in STORE_KEYS[kind]},
        "legacy": config["legacy"],
        "max_seconds": config["audio"]["max_seconds"],
        "classes": dataset_spec(config, dataset)["classes"],
        "device": config["training"]["device"],
    }


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
