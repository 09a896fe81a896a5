"""What the analyses that run the model read from the config (pure: the workflow imports it)."""

from __future__ import annotations

from workflow_scripts.config import dataset_spec


def erasure_settings(config: dict, dataset: str) -> dict:
    """What an erasure job of a run on ``dataset`` reads from the validated config."""
    return {"batch_size": config["analyses"]["erasure"]["batch_size"],
            "device": config["training"]["device"],  # as the capture: the run's device setting
            "legacy": config["legacy"], "max_seconds": config["audio"]["max_seconds"],
            "classes": dataset_spec(config, dataset)["classes"]}
