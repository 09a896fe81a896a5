"""Write tests/golden/settings_<config>.json: every settings JSON that a rule passes as a param
(and every analysis' provenance settings), for the three shipped configs.

These files are the contract of tests/test_settings.py: the typed settings must give back
exactly these bytes, so that no finished output reruns after a change of how they are built.
Regenerate only on purpose (a deliberate change of a rule's params reruns its jobs)::

    .venv/bin/python tests/golden/make_settings_golden.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CONFIGS = {"config": ["config/config.yaml"], "paper": ["config/paper.yaml"],
           "paper_faithful": ["config/paper.yaml", "config/paper_faithful.yaml"]}


def load(paths: list[str]) -> dict:
    """The configs merged as Snakemake merges --configfile overlays (nested dicts updated), then validated."""
    import yaml

    from workflow_scripts.config import validate_config

    def merge(base, change):
        for key, value in change.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return base

    config: dict = {}
    for path in paths:
        merge(config, yaml.safe_load((REPO / path).read_text()) or {})
    return validate_config(config)


def as_json(settings) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def settings_params(config: dict) -> dict[str, str]:
    """{job kind/key: the JSON its rule passes}; the names are stable across the refactor."""
    from workflow_scripts.analyses.settings import SECTIONS, analysis_settings, erasure_settings
    from workflow_scripts.capture.settings import capture_settings
    from workflow_scripts.runs import METHODS, run_settings

    params = {}
    for dataset in sorted(config["datasets"]):
        for method in METHODS:
            params[f"train/{dataset}/{method}"] = as_json(run_settings(config, dataset, method))
        for kind in ("acts", "grads"):
            params[f"capture_{kind}/{dataset}"] = as_json(capture_settings(config, dataset, kind))
        params[f"erasure/{dataset}"] = as_json(erasure_settings(config, dataset))
        for name in sorted(SECTIONS):
            params[f"provenance/{name}/{dataset}"] = as_json(analysis_settings(name, config, dataset))
    for section in ("contribution", "logit_lens", "probes", "spectra", "cka", "embeddings"):
        params[f"analysis/{section}"] = as_json(config["analyses"][section])
    return params


def main() -> None:
    for name, paths in CONFIGS.items():
        out = REPO / "tests" / "golden" / f"settings_{name}.json"
        out.write_text(json.dumps(settings_params(load(paths)), indent=1, sort_keys=True) + "\n")
        print(out)


if __name__ == "__main__":
    main()
