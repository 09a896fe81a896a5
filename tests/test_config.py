from pathlib import Path

import pytest
import yaml

from workflow_scripts.config import config_hash, dataset_spec, load_config, validate_config
from workflow_scripts.errors import InputError

REPO = Path(__file__).resolve().parent.parent


# config.yaml shortens training so that the demo runs in minutes on a CPU, on one fold with two
# ranks and two seeds (for the cross-rank and cross-seed analyses); nothing else differs.
DEMO_OVERRIDES = {"folds": [1], "ranks": [4, 8], "seeds": [0, 1], "epochs": 4, "lr": 5.0e-4,
                  "checkpoints": {"epochs": [0, 1, 2, 4], "steps": []}}
#: The default run analyses three of the four checkpoints it keeps (the schema: every kept one).
DEMO_DYNAMICS = {"checkpoints": ["epoch0", "epoch2", "epoch4"]}


def test_default_config_is_valid_and_equals_the_schema_defaults():
    from_file = load_config(REPO / "config" / "config.yaml")
    from_defaults = validate_config({})
    from_defaults["training"].update(DEMO_OVERRIDES)
    from_defaults["dynamics"].update(DEMO_DYNAMICS)
    assert from_file == from_defaults  # config.yaml spells out the defaults
    assert from_file["datasets"]["demo"]["folds"]["protocols"] == ["loso_speaker"]
    assert from_file["audio"]["sample_rate"] == 16000


def test_defaults_fill_nested_dataset_settings():
    config = validate_config({"datasets": {"x": {"layout": "iemocap", "path": "/d", "classes": ["a", "b"]}}})
    assert config["datasets"]["x"]["on_bad_audio"] == "error"
    assert config["datasets"]["x"]["folds"]["val_fraction"] == 0.2


def test_every_schema_property_has_a_description():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())

    def walk(node, path):
        for name, sub in (node.get("properties") or {}).items():
            assert "description" in sub, f"{path}{name} has no description"
            walk(sub, f"{path}{name}.")

    walk(schema, "")
    walk(schema["$defs"]["dataset"], "datasets.<name>.")


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"audio": {"sample_rate": "fast"}}, r"audio\.sample_rate: 'fast' is not of type 'integer'"),
        ({"datasets": {"x": {"layout": "iemocap", "path": "/d", "classes": ["a", "b"], "folds": {"protocols": ["random"]}}}},
         r"datasets\.x\.folds\.protocols\.0: 'random' is not one of"),
        ({"datasets": {"bad name": {"layout": "generic", "path": "p", "classes": ["a", "b"]}}}, r"bad name"),
        ({"audoi": {}}, r"Additional properties are not allowed \('audoi' was unexpected\)"),
        ({"datasets": {"x": {"layout": "generic", "path": "p"}}},
         r"datasets\.x\.classes: required for layout 'generic', which has no standard class set"),
        ({"datasets": {"x": {"layout": "emobox", "path": "p"}}},
         r"datasets\.x\.classes: required for layout 'emobox'"),
        ({"training": {"select_metric": "f1"}}, r"training\.select_metric: 'f1' is not one of \['uar', 'war'\]"),
    ],
)
def test_invalid_configs_name_the_key(config, expected):
    with pytest.raises(InputError, match=expected):
        validate_config(config)


def test_select_metric_defaults_to_uar_and_accepts_war():
    assert validate_config({})["training"]["select_metric"] == "uar"
    assert validate_config({"training": {"select_metric": "war"}})["training"]["select_metric"] == "war"


def test_config_file_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(InputError, match="no dataset 'iemocap'"):
        dataset_spec(validate_config({}), "iemocap")


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_classes_default_to_the_layout_standard_set_after_the_schema_check():
    config = validate_config({"datasets": {
        "iemocap": {"layout": "iemocap", "path": "/d"},
        "mine": {"layout": "ravdess", "path": "/r", "classes": ["neutral", "calm"]},
    }})
    assert config["datasets"]["iemocap"]["classes"] == ["angry", "happy", "neutral", "sad"]
    assert config["datasets"]["mine"]["classes"] == ["neutral", "calm"]  # a listed set is kept
    # A second validation (the entry points validate what the Snakefile validated) changes nothing.
    assert validate_config(config) == config


def test_missing_classes_are_reported_with_the_schema_errors():
    with pytest.raises(InputError) as error:
        validate_config({"audio": {"sample_rate": "fast"},
                         "datasets": {"a": {"layout": "generic", "path": "p"}, "b": {"layout": "nope", "path": "p"}}})
    message = str(error.value)
    assert message.startswith("config is invalid (3 problems)")
    assert "audio.sample_rate: 'fast' is not of type 'integer'" in message
    assert "datasets.b.layout: 'nope' is not one of" in message
    assert "datasets.a.classes: required for layout 'generic'" in message
