"""The typed settings of every analysis (pure and light: the workflow imports it while planning).

One frozen dataclass per config section under ``analyses:`` (an analysis of the registry names
its section; analyses that share a section share its settings). Defaults live only in
``config/schema.yaml``: :meth:`StageSettings.from_spec` fills them in for a spec given by hand.
The rules pass :meth:`StageSettings.params`; the modules record :meth:`provenance` in their
tables, and the report compares it with :func:`analysis_settings` to refuse older tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.analyses.registry import SECTIONS
from workflow_scripts.config import dataset_spec
from workflow_scripts.stage_settings import StageSettings


class AnalysisSettings(StageSettings):
    """Settings read from the analysis's own section ``analyses.<section>``."""

    @classmethod
    def from_config(cls, config: dict, dataset: str | None = None):
        return cls.from_mapping(config["analyses"][cls.SECTION.split(".", 1)[1]])

    def provenance(self) -> dict:
        """What the analysis records in its tables' provenance (its settings as it resolves them)."""
        return self.as_dict()


@dataclass(frozen=True)
class ContributionSettings(AnalysisSettings):
    SECTION = "analyses.contribution"
    split: str


@dataclass(frozen=True)
class LogitLensSettings(AnalysisSettings):
    SECTION = "analyses.logit_lens"
    split: str


@dataclass(frozen=True)
class ProbeSettings(AnalysisSettings):
    SECTION = "analyses.probes"
    c_grid: tuple[float, ...]
    max_iter: int
    seed: int


@dataclass(frozen=True)
class SpectraSettings(AnalysisSettings):
    SECTION = "analyses.spectra"
    center: bool
    legacy_svd_panel_bug: bool


@dataclass(frozen=True)
class CKASettings(AnalysisSettings):
    SECTION = "analyses.cka"
    kernels: tuple[str, ...]
    rbf_multiples: tuple[float, ...]
    estimators: tuple[str, ...]
    permutations: int
    seed: int
    split: str

    def provenance(self) -> dict:
        # The bandwidth multiples as floats, so that [1, 2] and [1.0, 2.0] are one setting.
        return {**self.as_dict(), "rbf_multiples": [float(multiple) for multiple in self.rbf_multiples]}


@dataclass(frozen=True)
class EmbeddingSettings(AnalysisSettings):
    SECTION = "analyses.embeddings"
    blocks: int
    module: str
    perplexity: float
    max_iter: int
    seed: int
    knn_neighbors: int


@dataclass(frozen=True)
class ErasureSettings(AnalysisSettings):
    """Erasure runs the model again, so it reads what a capture reads besides its batch size
    (``analyses.erasure.references`` picks the runs; it is not a setting of one)."""

    SECTION = "analyses.erasure"
    batch_size: int
    device: str
    legacy: bool
    max_seconds: float
    classes: tuple[str, ...]

    @classmethod
    def from_config(cls, config: dict, dataset: str | None = None):
        return cls.from_mapping({
            "batch_size": config["analyses"]["erasure"]["batch_size"],
            "device": config["training"]["device"],  # as the capture: the run's device setting
            "legacy": config["legacy"], "max_seconds": config["audio"]["max_seconds"],
            "classes": dataset_spec(config, dataset)["classes"],
        })

    @classmethod
    def from_spec(cls, spec: dict | None):
        # Its spec spans several sections (the workflow always passes all of it).
        return cls.from_mapping(spec or {})


#: The settings class of each ``analyses.<section>``.
SETTINGS_OF_SECTION: dict[str, type[AnalysisSettings]] = {
    cls.SECTION.split(".", 1)[1]: cls
    for cls in (ContributionSettings, LogitLensSettings, ProbeSettings, SpectraSettings, CKASettings,
                EmbeddingSettings, ErasureSettings)
}


def settings_of(name: str, config: dict, dataset: str) -> StageSettings | None:
    """The typed settings analysis ``name`` reads for a run on ``dataset`` (None: it has none)."""
    if name not in SECTIONS:
        raise KeyError(f"unknown analysis {name!r}; known: {sorted(SECTIONS)}")
    section = SECTIONS[name]
    if section is None:
        return None
    if section in SETTINGS_OF_SECTION:
        return SETTINGS_OF_SECTION[section].from_config(config, dataset)
    # The training dynamics' jobs read dynamics: (and analyses.probes); their settings module
    # imports this one, hence the late import.
    from workflow_scripts.dynamics.settings import dynamics_settings

    return dynamics_settings(section, config)


def erasure_settings(config: dict, dataset: str) -> dict:
    """What an erasure job of a run on ``dataset`` reads from the validated config."""
    return ErasureSettings.from_config(config, dataset).as_dict()


def analysis_settings(name: str, config: dict, dataset: str) -> dict:
    """The settings analysis ``name`` records in its tables' provenance for a run on ``dataset``
    under ``config``: what its rule passes, as its module resolves it. The report compares them
    with each table's, to refuse tables from an older config."""
    settings = settings_of(name, config, dataset)
    if settings is None:
        return {}
    return settings.provenance() if isinstance(settings, AnalysisSettings) else settings.as_dict()
