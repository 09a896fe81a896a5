"""What every ``python -m workflow_scripts...`` entry point shares: logging and settings input.

Snakemake passes a rule's slice of the validated config as JSON (``--spec '{...}'``), so a
change to one config key reruns only the rules whose slice changed. By hand, a user points at
a config file instead (``--config config/config.yaml``); the file is validated and filled with
the schema's defaults exactly as the workflow does, and the entry point takes its slice.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from workflow_scripts.errors import InputError


def entry_parser(
    module: str, doc: str | None, *, dataset: bool = False, settings: bool = True
) -> argparse.ArgumentParser:
    """The parser every entry point starts from: its docstring as help, ``--spec``/``--config``
    (unless the step takes no settings) and, for per-dataset steps, ``--dataset``."""
    # No abbreviations: a rule passing --checkpoint to a step that only has --checkpoint-id must
    # fail loudly, not set the checkpoint id to a model folder.
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    if dataset:
        parser.add_argument("--dataset", required=True, help="the dataset's name under 'datasets:'")
    if settings:
        add_spec_arguments(parser)
    return parser


def resolve_dataset_spec(args: argparse.Namespace) -> Any:
    """``resolve_spec`` for a per-dataset step: the settings of ``--dataset``."""
    from workflow_scripts.config import dataset_spec

    return resolve_spec(args, lambda config: dataset_spec(config, args.dataset))


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mutually exclusive ``--spec`` / ``--config`` pair."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--spec", help="this step's settings as JSON (what the workflow passes)")
    group.add_argument("--config", help="a loralens config YAML; its settings for this step are used")


def resolve_spec(args: argparse.Namespace, select: Callable[[dict], Any]) -> Any:
    """Return the step's settings: ``--spec`` parsed, or ``select(validated --config)``."""
    if args.spec is not None:
        try:
            return json.loads(args.spec)
        except json.JSONDecodeError as error:
            raise InputError(f"--spec is not valid JSON: {error}") from error
    from workflow_scripts.config import load_config

    return select(load_config(args.config))


def run_main(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run an entry point: log to stderr, print input errors plainly, exit 2 on them."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        main(argv)
    except InputError as error:
        # A user's mistake is not a crash: show the message, not a traceback.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def parse_assignments(values: list[str] | None, flag: str, form: str = "NAME=VALUE",
                      names: Iterable[str] | None = None) -> dict[str, str]:
    """The ``NAME=VALUE`` arguments of a repeatable option ``flag`` as ``{NAME: VALUE}``. An
    :class:`InputError` names the option and the malformed one, one whose NAME is not among
    ``names`` (when given) or one given twice. ``form`` is how the help writes it (RUN_ID=PATH)."""
    allowed = None if names is None else list(names)
    name_part = form.split("=", 1)[0]
    pairs: dict[str, str] = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        name = name.strip()
        if not sep or not name or not rest:
            raise InputError(f"{flag} {value!r}: expected {form}"
                             + (f", {name_part} one of {allowed}" if allowed is not None else ""))
        if allowed is not None and name not in allowed:
            raise InputError(f"{flag} {value}: the {name_part.lower()} must be one of {allowed}")
        if name in pairs:
            raise InputError(f"{flag}: {name_part.lower()} {name} is given twice ({pairs[name]} and {rest})")
        pairs[name] = rest
    return pairs
