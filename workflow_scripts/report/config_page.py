"""The configuration a report came from, as one HTML page: the effective config (YAML) and the
provenance of the code that made it (git commit, package versions)."""

from __future__ import annotations

import html
import json
import logging

import yaml

from workflow_scripts.atomic import atomic_path
from workflow_scripts.cli import entry_parser, run_main
from workflow_scripts.config import config_hash
from workflow_scripts.errors import InputError

log = logging.getLogger(__name__)


def config_page(config: dict, record: dict) -> str:
    """The page: the config's hash, the code's provenance and the config as YAML."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in [("config hash", config_hash(config)), ("git commit", record["git_commit"]),
                                *sorted(record["packages"].items())])
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>loralens configuration</title>"
            "<style>body{font:13px sans-serif}th,td{text-align:left;padding:2px 8px}"
            "pre{background:#f6f6f6;padding:8px}</style></head><body>"
            f"<table>{rows}</table><pre>{html.escape(text)}</pre></body></html>")


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.report.config_page", __doc__, settings=False)
    parser.add_argument("--config-json", required=True, help="the workflow's config, as JSON")
    parser.add_argument("--out", required=True, help="the page (.html)")
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config_json)
    except json.JSONDecodeError as error:
        raise InputError(f"--config-json is not valid JSON: {error}") from error
    from workflow_scripts.provenance import provenance

    with atomic_path(args.out) as tmp:
        tmp.write_text(config_page(config, provenance("report_config", config)))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
