"""The typed settings of the training-dynamics jobs (pure and light: the workflow imports it
while planning).

Each job reads only its slice of ``dynamics:`` (and, for the readouts, ``analyses.probes``), so
that changing one key reruns only the jobs that read it. Defaults live only in
``config/schema.yaml``; :meth:`from_spec` fills them in for a spec given by hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from workflow_scripts.analyses.settings import ProbeSettings
from workflow_scripts.errors import InputError
from workflow_scripts.stage_settings import StageSettings, section_with_defaults


def _dynamics_keys(cls, spec: dict | None, names: tuple[str, ...]) -> dict:
    """``names`` of the ``dynamics`` section from ``spec`` (validated, defaults filled in); a key
    of ``spec`` outside ``names`` is refused: the job does not read it, so passing it is a
    mistake in the rule (it would rerun the job for nothing)."""
    spec = dict(spec or {})
    extra = sorted(set(spec) - set(names))
    if extra:
        raise InputError(f"--spec: {cls.__name__} reads dynamics.{{{', '.join(names)}}} only, "
                         f"not {['dynamics.' + key for key in extra]}")
    values = section_with_defaults("dynamics", spec)
    return {name: values[name] for name in names}


class DynamicsKeys(StageSettings):
    """Settings that are some top-level keys of ``dynamics:`` (the dataclass's fields)."""

    SECTION = "dynamics"

    @classmethod
    def from_config(cls, config: dict):
        return cls.from_mapping({field.name: config["dynamics"][field.name] for field in dataclasses.fields(cls)})

    @classmethod
    def from_spec(cls, spec: dict | None):
        return cls.from_mapping(_dynamics_keys(cls, spec, tuple(f.name for f in dataclasses.fields(cls))))


@dataclass(frozen=True)
class RepresentationSettings(DynamicsKeys):
    """``dynamics.{split, permutations, seed}``: the clips of the CKA to the base and final
    checkpoints and its permutation null."""

    split: str
    permutations: int
    seed: int


@dataclass(frozen=True)
class ReadoutSettings(StageSettings):
    """The readouts of a checkpoint: ``probes`` (``analyses.probes``: the same probes as the
    trained run's) and ``split`` (``dynamics.split``: the clips of the logit lens)."""

    SECTION = "dynamics"
    probes: ProbeSettings
    split: str

    @classmethod
    def from_config(cls, config: dict):
        return cls(probes=ProbeSettings.from_config(config), split=config["dynamics"]["split"])

    @classmethod
    def from_spec(cls, spec: dict | None):
        # Its spec spans two sections: {"probes": analyses.probes, "split": dynamics.split}.
        spec = dict(spec or {})
        extra = sorted(set(spec) - {"probes", "split"})
        if extra:
            raise InputError(f"--spec: {cls.__name__} reads probes (analyses.probes) and split "
                             f"(dynamics.split) only, not {extra}")
        split = _dynamics_keys(cls, {"split": spec["split"]} if "split" in spec else {}, ("split",))["split"]
        return cls(probes=ProbeSettings.from_spec(spec.get("probes")), split=split)


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


@dataclass(frozen=True)
class SummarySettings(DynamicsKeys):
    """``dynamics.{lens_agreement, probe_fraction}``: the thresholds of the emergence checkpoints."""

    lens_agreement: float
    probe_fraction: float


@dataclass(frozen=True)
class NoSettings(StageSettings):
    """A dynamics job that reads no setting (the weight change): its params are ``{}``."""

    SECTION = "dynamics"

    @classmethod
    def from_config(cls, config: dict):
        return cls()


#: The settings each training-dynamics job reads (by rule name).
SETTINGS_OF_JOB: dict[str, type[StageSettings]] = {
    "dynamics_representation": RepresentationSettings,
    "dynamics_readouts": ReadoutSettings,
    "dynamics_weights": NoSettings,
    "dynamics_intruders": IntruderSettings,
    "dynamics_summary": SummarySettings,
}


def dynamics_settings(name: str, config: dict) -> StageSettings:
    """The typed settings training-dynamics job ``name`` reads from the validated config."""
    if name not in SETTINGS_OF_JOB:
        raise KeyError(f"unknown dynamics job {name!r}; known: {sorted(SETTINGS_OF_JOB)}")
    return SETTINGS_OF_JOB[name].from_config(config)
