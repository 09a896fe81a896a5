"""The ``analyses.cka`` settings as the analysis resolves them, and the kernel views they ask for
(the typed settings and their defaults: ``analyses/settings.py``, ``config/schema.yaml``)."""

from __future__ import annotations


LEVELS = ("frame", "utterance", "flattened")
SPLITS = ("train", "val", "test")


def cka_settings(raw: dict | None) -> dict:
    """The settings with the schema's defaults filled in (``analyses.cka`` in config/schema.yaml),
    checked, as the analysis records them; a bad key raises :class:`InputError` naming it."""
    from workflow_scripts.analyses.settings import CKASettings

    return CKASettings.from_spec(raw).provenance()


def kernel_views(settings: dict) -> list[tuple[str, float]]:
    """``(kernel, rbf_multiple)`` of every Gram-form kernel the settings ask for (NaN multiple for linear)."""
    views = []
    for kernel in settings["kernels"]:
        if kernel == "linear":
            views.append(("linear", float("nan")))
        else:
            views += [("rbf", m) for m in settings["rbf_multiples"]]
    return views
