"""Typed settings of a stage: a frozen dataclass built from the validated config.

Each stage (a training run, a capture store, each analysis) reads only its own slice of the
config, so that changing one setting reruns only the jobs that read it. That slice is a frozen
dataclass deriving from :class:`StageSettings`:

* it is built from the validated config (``from_config``), or from a partial spec given by hand
  (:meth:`StageSettings.from_spec`), whose missing keys take the defaults of
  ``config/schema.yaml`` — the one place defaults live;
* :meth:`StageSettings.params` is the JSON its rule passes to the step (a param: a change to it
  reruns the job), and :meth:`StageSettings.as_dict` what the step records in its provenance.

A field set to None is one the stage does not use (an untrained reference has no learning rate):
it is left out of the params, so that changing it reruns nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, ClassVar

from workflow_scripts.errors import InputError, describe_offenders


def as_json(settings: Any) -> str:
    """Settings as one compact JSON argument with sorted keys (the form every rule passes)."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


@functools.cache
def section_schema(section: str) -> dict:
    """The schema of config key ``section`` (dotted: ``analyses.cka``) in config/schema.yaml."""
    from workflow_scripts.config import load_schema

    schema = load_schema()
    for part in section.split("."):
        schema = schema["properties"][part]
    return schema


def section_with_defaults(section: str, spec: dict | None) -> dict:
    """``spec`` validated against the schema of ``section``, with the schema's defaults filled in;
    an :class:`InputError` names each bad key (``analyses.cka.kernels: ...``)."""
    import copy

    import jsonschema

    from workflow_scripts.config import with_defaults

    spec = copy.deepcopy(spec if spec is not None else {})
    validator = with_defaults(jsonschema.Draft202012Validator)(section_schema(section))
    errors = sorted(validator.iter_errors(spec), key=lambda error: list(error.absolute_path))
    if errors:
        problems = [".".join([section, *map(str, error.absolute_path)]) + f": {_message(error)}" for error in errors]
        raise InputError(describe_offenders(f"{section} is invalid ({len(problems)} problems)", problems,
                                            hint=f"See config/schema.yaml ({section}) for every key."))
    return spec


def _message(error) -> str:
    """jsonschema's message, but an unknown key said as such, with the known ones listed."""
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        return f"unknown settings {sorted(set(error.instance) - set(known))}; known: {known}"
    return error.message


def _plain(value: Any) -> Any:
    """Tuples (the dataclasses' immutable lists) back to lists, recursively, as JSON has them."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _frozen(value: Any) -> Any:
    """Lists as tuples, recursively, so that a settings object cannot be changed in place."""
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    return value


class StageSettings:
    """The behaviour every stage's frozen settings dataclass shares (see the module docstring)."""

    #: The config section (dotted) whose schema gives the defaults of :meth:`from_spec`.
    SECTION: ClassVar[str]

    @classmethod
    def from_spec(cls, spec: dict | None):
        """The settings from ``spec`` (the config section, or part of it: the schema fills in the
        rest); a bad key is an :class:`InputError` that names it."""
        return cls.from_mapping(section_with_defaults(cls.SECTION, spec))

    @classmethod
    def from_mapping(cls, values: dict):
        """The settings from a complete, validated mapping of field name to value."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            # The schema has a key this stage does not know: a developer's mistake, said loudly.
            raise TypeError(f"{cls.__name__} has no field for {unknown} (from {cls.SECTION})")
        return cls(**{name: _frozen(value) for name, value in values.items()})

    def as_dict(self) -> dict:
        """The settings as plain JSON values, without the fields this stage does not use (None)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {name: _plain(value.as_dict() if isinstance(value, StageSettings) else value)
                for name, value in values.items() if value is not None}

    def params(self) -> str:
        """The JSON the stage's rule passes (``--spec``): a change to it reruns the job."""
        return as_json(self.as_dict())
