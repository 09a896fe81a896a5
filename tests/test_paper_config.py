"""config/paper.yaml (and its faithful overlay) dry-run against a fixture IEMOCAP tree."""

import subprocess
import sys
from pathlib import Path

import pytest

from corpus_fixtures import make_iemocap
from workflow_scripts.config import load_config
from workflow_scripts.runs import check_training_config

REPO = Path(__file__).resolve().parent.parent


def dry_run(workdir: Path, *configfiles: str, extra: tuple[str, ...] = ()) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n", "-p", "--directory",
         str(workdir), "--replace-workflow-config", "--configfile", *[str(REPO / f) for f in configfiles], *extra],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture
def iemocap_workdir(tmp_path):
    make_iemocap(tmp_path / "data" / "IEMOCAP_full_release")
    return tmp_path


def job_count(text: str, rule: str) -> int:
    line = next(line for line in text.splitlines() if line.split()[:1] == [rule])
    return int(line.split()[1])


def test_paper_config_is_valid_and_uses_the_papers_settings():
    config = load_config(REPO / "config" / "paper.yaml")
    check_training_config(config)
    training = config["training"]
    assert config["models"]["whisper-large-v2"]["id"] == "openai/whisper-large-v2"
    assert (training["lr"], training["epochs"], training["batch_size"]) == (5e-5, 20, 8)
    assert training["targets"] == [["v_proj"]] and training["ranks"] == [8, 32, 64]
    assert training["lora"] == {"alpha_policy": "ratio", "alpha": 2.0, "dropout": 0.1}  # alpha 64 at r 32


def test_faithful_overlay_keeps_alpha_64_at_every_rank():
    """The original notebook's random-LoRA helper keeps lora_alpha = 64 whatever the rank: the
    faithful rank ablation does the same (scaling 8, 2, 1 at ranks 8, 32, 64)."""
    from golden.make_settings_golden import CONFIGS, load

    from workflow_scripts.train.methods import lora_alpha

    config = load(CONFIGS["paper_faithful"])
    check_training_config(config)
    lora = config["training"]["lora"]
    assert lora == {"alpha_policy": "fixed", "alpha": 64, "dropout": 0.1}
    assert [lora_alpha(rank, lora) for rank in config["training"]["ranks"]] == [64, 64, 64]


def test_corrected_default_dry_runs(iemocap_workdir):
    text = dry_run(iemocap_workdir, "config/paper.yaml")
    # (lora, lora_init, lora_random) x 3 ranks + frozen, x 5 session folds x 1 seed
    assert job_count(text, "train") == (3 * 3 + 1) * 5
    assert "results/runs/iemocap/loso_session/whisper-large-v2/lora/v_proj/r32/seed42/fold1/metrics.json" in text
    assert "results/models/whisper-large-v2" in text
    assert '"select_on":"val"' in text and '"legacy":false' in text
    # Whisper-large-v2 asks a cluster for more than whisper-base (tests/test_cluster.py has the table).
    assert "resources: tmpdir=/tmp, gpu=1, cpus_per_gpu=4, runtime=720, mem_mb=48000" in text
    assert '"lora":{"alpha":2.0,"alpha_policy":"ratio","dropout":0.1}' in text  # corrected: 2 x rank


def test_a_cpu_only_site_asks_for_no_gpu(iemocap_workdir):
    text = dry_run(iemocap_workdir, "config/paper.yaml", extra=("--config", "gpus=0"))
    assert "gpu=0," in text and "gpu=1," not in text


def test_faithful_overlay_dry_runs(iemocap_workdir):
    text = dry_run(iemocap_workdir, "config/paper.yaml", "config/paper_faithful.yaml")
    assert job_count(text, "train") == (3 * 3 + 1) * 10
    assert "results/runs/iemocap/legacy_dialog10/whisper-large-v2/lora/v_proj/r32/seed42/fold10/" in text
    # The overlay reaches the runs: selection on test under legacy, visible in their settings.
    assert '"select_on":"test"' in text and '"legacy":true' in text
    assert '"select_metric":"war"' in text  # the original's metric_for_best_model="accuracy"
    assert '"lora":{"alpha":64,"alpha_policy":"fixed","dropout":0.1}' in text  # alpha 64 at every rank
    # report.paper_reference (paper.yaml): the performance table gets the paper's T1 beside it.
    command = next(line for line in text.splitlines() if "workflow_scripts.report.performance" in line)
    assert "--reference " in command and "paper_reference.csv" in command


def test_config_without_classes_dry_runs_with_the_layout_default(iemocap_workdir):
    """The Snakefile validates the config, which fills in the layout's classes for every rule."""
    text = (REPO / "config" / "paper.yaml").read_text()
    without = iemocap_workdir / "paper_without_classes.yaml"
    without.write_text("".join(line for line in text.splitlines(keepends=True) if "classes:" not in line))
    assert "classes:" in text and "classes:" not in without.read_text()
    output = dry_run(iemocap_workdir, str(without))
    assert '"classes":["angry","happy","neutral","sad"]' in output


def test_a_model_size_scales_resources_without_rebuilding_the_model(iemocap_workdir):
    overlay = iemocap_workdir / "size.yaml"
    overlay.write_text("models:\n  whisper-large-v2: {source: hub, id: openai/whisper-large-v2, size: medium}\n")
    text = dry_run(iemocap_workdir, "config/paper.yaml", str(overlay))
    assert "runtime=480, mem_mb=32000" in text  # medium's resources (tests/test_cluster.py)
    model_command = next(line for line in text.splitlines() if "workflow_scripts.models.build" in line)
    assert '"size"' not in model_command  # not a build setting: changing it rebuilds nothing
