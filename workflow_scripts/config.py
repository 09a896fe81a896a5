"""Load and validate a loralens config against ``config/schema.yaml``, filling in defaults.

The Snakefile and every entry point use this one function, so a config means the same thing
whether the workflow runs it or a person runs a step by hand. Validation errors name the key
path (``datasets.iemocap.folds.val_fraction``) and say what is wrong with its value.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from workflow_scripts.errors import InputError, describe_offenders

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"


def with_defaults(validator_class):
    """A validator that also writes each property's ``default`` into the instance."""
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})




def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def fill_dataset_classes(config: dict) -> list[str]:
    """Give each dataset without ``classes`` its layout's standard set; return the problems.

    A layout whose classes depend on the corpus (``DEFAULT_CLASSES = None``) needs them listed.
    Datasets that the schema already refuses (no or an unknown layout) are skipped here.
    """
    from workflow_scripts.data.layouts import LAYOUT_MODULES, get_layout

    problems = []
    for name, spec in (config.get("datasets") or {}).items():
        if not isinstance(spec, dict) or "classes" in spec or spec.get("layout") not in LAYOUT_MODULES:
            continue
        default = get_layout(spec["layout"]).DEFAULT_CLASSES
        if default is None:
            problems.append(
                f"datasets.{name}.classes: required for layout {spec['layout']!r}, which has no standard "
                "class set; list the classes to keep, in label-index order"
            )
        else:
            spec["classes"] = list(default)
    return problems


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate ``config`` in place (defaults filled in) and return it; raise :class:`InputError`."""
    import jsonschema  # imported here so that the pure modules import without it

    validator = with_defaults(jsonschema.Draft202012Validator)(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    # After the schema check, so that every consumer sees a full dataset spec.
    problems = [f"{_key_path(e)}: {e.message}" for e in errors] + fill_dataset_classes(config)
    if problems:
        raise InputError(
            describe_offenders(
                f"{source} is invalid ({len(problems)} problems)",
                problems,
                hint="See config/config.yaml for a commented example of every key.",
            )
        )
    return config


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError(f"config file {path} is not valid YAML: {error}") from error
    return validate_config(config, source=str(path))


def named_spec(config: dict, section: str, name: str) -> dict:
    """The settings of ``name`` under ``section`` (datasets, models); an unknown name is an input error."""
    entries = config.get(section) or {}
    if name not in entries:
        raise InputError(f"no {section[:-1]} {name!r} under '{section}:' (configured: {', '.join(entries)})")
    return entries[name]


def dataset_spec(config: dict, name: str) -> dict:
    """The settings of dataset ``name``; an unknown name is an input error."""
    return named_spec(config, "datasets", name)


def config_hash(section: Any) -> str:
    """A short stable hash of a config section (for provenance and cache keys)."""
    blob = json.dumps(section, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
