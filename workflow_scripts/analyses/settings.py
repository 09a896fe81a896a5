"""What the analyses that run the model read from the config (pure: the workflow imports it)."""

from __future__ import annotations

from workflow_scripts.analyses.registry import SECTIONS
from workflow_scripts.config import dataset_spec


def erasure_settings(config: dict, dataset: str) -> dict:
    """What an erasure job of a run on ``dataset`` reads from the validated config."""
    return {"batch_size": config["analyses"]["erasure"]["batch_size"],
            "device": config["training"]["device"],  # as the capture: the run's device setting
            "legacy": config["legacy"], "max_seconds": config["audio"]["max_seconds"],
            "classes": dataset_spec(config, dataset)["classes"]}


def analysis_settings(name: str, config: dict, dataset: str) -> dict:
    """The settings analysis ``name`` records in its tables' provenance for a run on ``dataset``
    under ``config``: what its rule passes, as its module resolves it. The report compares them
    with each table's, to refuse tables from an older config."""
    import json

    if name not in SECTIONS:
        raise KeyError(f"unknown analysis {name!r}; known: {sorted(SECTIONS)}")
    if name == "erasure":
        return json.loads(json.dumps(erasure_settings(config, dataset)))
    section = SECTIONS[name]
    if section is None:
        return {}
    passed = json.loads(json.dumps(config["analyses"].get(section, {})))  # as the --spec JSON round trip
    if section == "spectra":
        from workflow_scripts.analyses.spectra import spectra_settings

        return spectra_settings(passed)
    if section == "cka":
        from workflow_scripts.analyses.cka.settings import cka_settings

        return cka_settings(passed)
    if section == "embeddings":
        from workflow_scripts.analyses.embeddings import embedding_settings

        return embedding_settings(passed)
    return passed
