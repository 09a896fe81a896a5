"""The typed settings of the training-dynamics jobs (pure and light: the workflow imports it
while planning). Defaults live only in config/schema.yaml (``dynamics:``)."""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.stage_settings import StageSettings


@dataclass(frozen=True)
class IntruderSettings(StageSettings):
    """``dynamics.intruders``: how many top singular vectors of the adapted matrix are examined
    (k), and the cosine thresholds below which one is an intruder (epsilons)."""

    SECTION = "dynamics.intruders"
    k: int
    epsilons: tuple[float, ...]

    @classmethod
    def from_config(cls, config: dict) -> "IntruderSettings":
        return cls.from_mapping(config["dynamics"]["intruders"])
