"""Every step runs by hand: `python -m workflow_scripts... --help`, and `--config FILE`."""

import subprocess
import sys

import pytest
import yaml

from conftest import write_generic_corpus

ENTRY_POINTS = [
    "workflow_scripts.data.demo_corpus",
    "workflow_scripts.data.manifest",
    "workflow_scripts.data.folds",
    "workflow_scripts.data.audio_cache",
    "workflow_scripts.features",
    "workflow_scripts.models.build",
    "workflow_scripts.models.convert",
    "workflow_scripts.train.run",
    "workflow_scripts.capture.run",
    "workflow_scripts.analyses.contribution",
    "workflow_scripts.analyses.logit_lens",
    "workflow_scripts.analyses.probes",
    "workflow_scripts.analyses.erasure",
    "workflow_scripts.analyses.spectra",
    "workflow_scripts.analyses.weight_spectra",
    "workflow_scripts.analyses.subspaces",
    "workflow_scripts.analyses.cka",
    "workflow_scripts.analyses.embeddings",
    "workflow_scripts.dynamics.capture",
    "workflow_scripts.dynamics.representation",
    "workflow_scripts.dynamics.readouts",
    "workflow_scripts.dynamics.weights",
    "workflow_scripts.dynamics.intruders",
    "workflow_scripts.dynamics.summary",
    "workflow_scripts.report.performance",
    "workflow_scripts.report.aggregate",
    "workflow_scripts.report.figures",
    "workflow_scripts.report.findings",
    "workflow_scripts.report.config_page",
    "workflow_scripts.report.browser",
    "workflow_scripts.provenance",
]


def run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, **kwargs)


def help_text(module: str) -> str:
    """What ``python -m module --help`` prints, checked to be a usage text."""
    result = run(module, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {module}")
    return result.stdout


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help(module):
    help_text(module)


def test_steps_by_hand_from_a_config_file(tmp_path):
    corpus = write_generic_corpus(tmp_path / "corpus")
    config = tmp_path / "my.yaml"
    config.write_text(yaml.safe_dump({"datasets": {"toy": {"layout": "generic", "path": str(corpus),
                                                           "classes": ["neutral", "happy", "angry", "sad"]}}}))
    out = tmp_path / "out"
    steps = [
        ("workflow_scripts.data.manifest", "--dataset", "toy", "--manifest", f"{out}/manifest.parquet",
         "--rejected", f"{out}/rejected.csv"),
        ("workflow_scripts.data.folds", "--dataset", "toy", "--protocol", "loso_speaker",
         "--manifest", f"{out}/manifest.parquet", "--out", f"{out}/folds/loso_speaker.parquet"),
        ("workflow_scripts.data.audio_cache", "--manifest", f"{out}/manifest.parquet", "--out", f"{out}/audio.zarr"),
    ]
    for step in steps:
        result = run(*step, "--config", str(config))
        assert result.returncode == 0, result.stderr
    provenance = run("workflow_scripts.provenance", f"{out}/folds/loso_speaker.parquet")
    record = yaml.safe_load(provenance.stdout)
    assert record["step"] == "folds" and record["protocol"] == "loso_speaker"
    assert record["settings"] == {"classes": ["neutral", "happy", "angry", "sad"], "val_fraction": 0.2, "seed": 0}


def test_unknown_dataset_by_hand_is_a_clear_error(tmp_path):
    result = run("workflow_scripts.data.folds", "--dataset", "nope", "--protocol", "loso_speaker",
                 "--config", "config/config.yaml", "--manifest", "m.parquet", "--out", str(tmp_path / "f.parquet"))
    assert result.returncode == 2
    assert "error: no dataset 'nope' under 'datasets:' (configured: demo)" in result.stderr
