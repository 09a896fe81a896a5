"""Typed settings: byte-identical params to the workflow's before the refactor (golden files),
defaults only from config/schema.yaml, and errors that name the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from workflow_scripts.analyses.registry import ANALYSES, SECTIONS
from workflow_scripts.analyses.settings import (
    SETTINGS_OF_SECTION,
    CKASettings,
    EmbeddingSettings,
    SpectraSettings,
    analysis_settings,
)
from workflow_scripts.capture.settings import CaptureSettings
from workflow_scripts.config import load_schema
from workflow_scripts.errors import InputError
from workflow_scripts.runs import GRID_KEYS, METHODS, TrainingRunSettings
from workflow_scripts.stage_settings import as_json, section_schema

GOLDEN = Path(__file__).parent / "golden"


def typed_params(config: dict) -> dict[str, str]:
    """What the typed settings give for every key of the golden files."""
    params = {}
    for dataset in sorted(config["datasets"]):
        for method in METHODS:
            params[f"train/{dataset}/{method}"] = TrainingRunSettings.from_config(config, dataset, method).params()
        for kind in ("acts", "grads"):
            params[f"capture_{kind}/{dataset}"] = CaptureSettings.from_config(config, dataset, kind).params()
        params[f"erasure/{dataset}"] = SETTINGS_OF_SECTION["erasure"].from_config(config, dataset).params()
        for name in sorted(SECTIONS):
            params[f"provenance/{name}/{dataset}"] = as_json(analysis_settings(name, config, dataset))
    for section in ("contribution", "logit_lens", "probes", "spectra", "cka", "embeddings"):
        params[f"analysis/{section}"] = SETTINGS_OF_SECTION[section].from_config(config).params()
    return params


@pytest.mark.parametrize("name", ["config", "paper", "paper_faithful"])
def test_typed_settings_give_the_workflows_params_byte_for_byte(name):
    from golden.make_settings_golden import CONFIGS, load

    golden = json.loads((GOLDEN / f"settings_{name}.json").read_text())
    assert typed_params(load(CONFIGS[name])) == golden


def test_every_schema_key_of_a_stage_is_a_field_of_its_settings():
    training = set(section_schema("training")["properties"]) - set(GRID_KEYS)
    fields = {field.name for field in dataclasses.fields(TrainingRunSettings)} - {"legacy", "max_seconds", "classes"}
    assert fields == training
    for section, cls in SETTINGS_OF_SECTION.items():
        schema_keys = set(load_schema()["properties"]["analyses"]["properties"][section]["properties"])
        names = {field.name for field in dataclasses.fields(cls)}
        if section == "erasure":  # references picks runs; the rest comes from other sections
            assert schema_keys - {"references"} <= names
        else:
            assert names == schema_keys, section


def test_defaults_come_from_the_schema():
    schema = section_schema("analyses.cka")["properties"]
    settings = CKASettings.from_spec({})
    assert settings.permutations == schema["permutations"]["default"]
    assert list(settings.kernels) == schema["kernels"]["default"]
    assert SpectraSettings.from_spec({"center": False}).as_dict() == {"center": False, "legacy_svd_panel_bug": False}
    assert EmbeddingSettings.from_spec(None).seed == section_schema("analyses.embeddings")["properties"]["seed"]["default"]


def test_settings_are_frozen_and_hashable():
    settings = CKASettings.from_spec({"rbf_multiples": [1, 2]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 3
    assert hash(settings) == hash(CKASettings.from_spec({"rbf_multiples": [1, 2]}))
    # The params keep the config's numbers; the provenance resolves them as the analysis does.
    assert json.loads(settings.params())["rbf_multiples"] == [1, 2]
    assert settings.provenance()["rbf_multiples"] == [1.0, 2.0]


def test_a_bad_setting_names_its_key():
    with pytest.raises(InputError, match=r"analyses\.cka\.kernels"):
        CKASettings.from_spec({"kernels": ["cosine"]})
    with pytest.raises(InputError, match=r"analyses\.embeddings: unknown settings \['perplexty'\]; known: \['blocks'"):
        EmbeddingSettings.from_spec({"perplexty": 5})


def test_an_untrained_reference_leaves_the_optimisation_out_of_its_params():
    from workflow_scripts.config import load_config

    config = load_config(Path(__file__).parents[1] / "config" / "config.yaml")
    reference = json.loads(TrainingRunSettings.from_config(config, "demo", "lora_random").params())
    frozen = json.loads(TrainingRunSettings.from_config(config, "demo", "frozen").params())
    assert "lr" not in reference and "lora" in reference
    assert "lr" in frozen and "lora" not in frozen
    assert set(ANALYSES) == set(SECTIONS)
