"""The ``analyses.cka`` settings: their defaults, their check, and the kernel views they ask for."""

from __future__ import annotations

from workflow_scripts.analyses.cka.estimators import ESTIMATORS, KERNELS
from workflow_scripts.errors import InputError

LEVELS = ("frame", "utterance", "flattened")
SPLITS = ("train", "val", "test")
DEFAULTS = {"kernels": ["linear", "rbf"], "rbf_multiples": [0.5, 1.0, 2.0], "estimators": ["biased", "debiased"],
            "permutations": 20, "seed": 0, "split": "test"}


def cka_settings(raw: dict | None) -> dict:
    """The settings with defaults filled in, checked; a bad key raises :class:`InputError` naming it."""
    settings = {**DEFAULTS, **(raw or {})}
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise InputError(f"analyses.cka: unknown settings {unknown}; known: {sorted(DEFAULTS)}")
    kernels, estimators = settings["kernels"], settings["estimators"]
    if not isinstance(kernels, list) or not kernels or any(k not in KERNELS for k in kernels):
        raise InputError(f"analyses.cka.kernels: {kernels!r} is not a non-empty list of {list(KERNELS)}")
    if not isinstance(estimators, list) or not estimators or any(e not in ESTIMATORS for e in estimators):
        raise InputError(f"analyses.cka.estimators: {estimators!r} is not a non-empty list of {list(ESTIMATORS)}")
    multiples = settings["rbf_multiples"]
    if (not isinstance(multiples, list) or ("rbf" in kernels and not multiples)
            or any(isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0 for m in multiples)):
        raise InputError(f"analyses.cka.rbf_multiples: {multiples!r} is not a non-empty list of positive numbers")
    for key in ("permutations", "seed"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"analyses.cka.{key}: {value!r} is not a non-negative integer")
    if settings["split"] not in SPLITS:
        raise InputError(f"analyses.cka.split: {settings['split']!r} is not one of {list(SPLITS)}")
    return {**settings, "kernels": list(dict.fromkeys(kernels)), "estimators": list(dict.fromkeys(estimators)),
            "rbf_multiples": [float(m) for m in dict.fromkeys(multiples)]}


def kernel_views(settings: dict) -> list[tuple[str, float]]:
    """``(kernel, rbf_multiple)`` of every Gram-form kernel the settings ask for (NaN multiple for linear)."""
    views = []
    for kernel in settings["kernels"]:
        if kernel == "linear":
            views.append(("linear", float("nan")))
        else:
            views += [("rbf", m) for m in settings["rbf_multiples"]]
    return views
