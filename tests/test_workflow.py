"""End-to-end Snakemake runs of the data stage on a tiny demo corpus (espeak-ng, 4 speakers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]

pytestmark = pytest.mark.workflow

TINY = {
    "demo_corpus": {"speakers": 4, "utterances_per_speaker_per_emotion": 2},
    "models": {"tiny": {"source": "tiny_random", "layers": 2, "d_model": 32, "heads": 2, "ffn_dim": 64}},
    "training": {"protocols": ["holdout"], "folds": "all", "methods": ["lora", "frozen"], "ranks": [4],
                 "epochs": 1, "lr": 1e-3, "device": "cpu"},
    "datasets": {
        "demo": {"layout": "generic", "path": "results/demo_corpus", "classes": ["neutral", "happy", "angry", "sad"],
                 "folds": {"protocols": ["loso_speaker", "holdout"], "val_fraction": 0.3}},
    },
}


def snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
         "--replace-workflow-config", "--cores", "2", *args],
        capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def jobs_run(result: subprocess.CompletedProcess) -> set[str]:
    """Names of the rules that a run executed (from Snakemake's log)."""
    text = result.stdout + result.stderr
    return {line.split()[1].rstrip(":") for line in text.splitlines()
            if line.startswith(("rule ", "localrule ", "checkpoint ", "localcheckpoint "))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("workflow")


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_dry_run_of_the_default_config_lists_the_dag(tmp_path):
    result = subprocess.run([*SNAKEMAKE, "-n", "--directory", str(tmp_path), "--configfile",
                             str(REPO / "config" / "config.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert {"demo_corpus", "manifest", "folds", "audio_cache", "features", "model", "train", "performance",
            "all"} <= jobs_run(result)
    assert "results/models/whisper-base" in result.stdout


def test_full_data_stage_then_incremental_rerun(workdir):
    first = snakemake(workdir, config=TINY)
    assert jobs_run(first) >= {"demo_corpus", "manifest", "folds", "audio_cache", "features", "model", "train",
                               "performance"}
    data = workdir / "results" / "data" / "demo"
    manifest = pd.read_parquet(data / "manifest.parquet")
    assert len(manifest) == 32 and manifest["speaker"].nunique() == 4
    for protocol, n_folds in (("loso_speaker", 4), ("holdout", 1)):  # one table per protocol
        folds = pd.read_parquet(data / "folds" / f"{protocol}.parquet")
        assert list(folds.columns) == ["protocol", "fold", "utt_id", "split"]
        assert set(folds["protocol"]) == {protocol} and folds["fold"].nunique() == n_folds
    assert (data / "audio.zarr" / "zarr.json").is_file()
    assert pd.read_csv(data / "rejected.csv").empty
    from workflow_scripts.features import FeatureStore

    features = FeatureStore(str(workdir / "results" / "features" / "demo" / "logmel80.zarr"))
    assert features.utt_ids == manifest["utt_id"].tolist() and features.n_mels == 80
    assert (workdir / "results" / "models" / "tiny" / "model.safetensors").is_file()
    for log in ("demo_corpus.log", "manifest/demo.log", "folds/demo/loso_speaker.log", "folds/demo/holdout.log",
                "audio_cache/demo.log", "features/demo_logmel80.log", "model/tiny.log"):
        assert (workdir / "results" / "logs" / log).is_file()

    tables = workdir / "results" / "tables"
    performance = pd.read_csv(tables / "performance.csv")
    assert sorted(performance["method"]) == ["frozen", "lora"]
    assert performance["runs"].tolist() == [1, 1]
    assert "| demo | holdout | tiny | lora | q_proj, v_proj | 4 |" in (tables / "performance.md").read_text()
    run = workdir / "results" / "runs" / "demo" / "holdout" / "tiny" / "lora" / "q_proj+v_proj" / "r4" / "seed0" / "fold1"
    assert sorted(p.name for p in run.iterdir()) == ["history.csv", "metrics.json", "predictions.parquet", "weights"]

    again = snakemake(workdir)
    assert "Nothing to be done" in again.stdout + again.stderr

    # Scale the seeds: only the new seed's runs and the table are made; seed 0 is not touched.
    before = (run / "metrics.json").stat().st_mtime_ns
    more_seeds = {**TINY, "training": {**TINY["training"], "seeds": [0, 1]}}
    rerun = snakemake(workdir, config=more_seeds)
    assert jobs_run(rerun) == {"train", "performance", "all"}
    assert rerun.stdout.count("rule train:") + rerun.stderr.count("rule train:") == 2
    assert (run / "metrics.json").stat().st_mtime_ns == before
    assert pd.read_csv(tables / "performance.csv")["runs"].tolist() == [2, 2]


def test_user_config_replaces_the_default_datasets(tmp_path):
    """--replace-workflow-config: a user's config names exactly the corpora it runs."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.csv").write_text("path,label,speaker\n")
    config = {"datasets": {"mine": {"layout": "generic", "path": str(corpus), "classes": ["a", "b"]}}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    result = snakemake(tmp_path, "-n", config=config)
    text = result.stdout + result.stderr
    assert "results/data/mine/manifest.parquet" in text
    assert "results/data/demo" not in text and "demo_corpus" not in text


def test_invalid_config_stops_before_any_job(tmp_path):
    result = snakemake(tmp_path, config={"audio": {"sample_rate": "fast"}}, check=False)
    assert result.returncode != 0
    assert "audio.sample_rate: 'fast' is not of type 'integer'" in result.stderr
    assert not (tmp_path / "results").exists()


def test_bad_clip_message_reaches_the_console_and_no_manifest_is_left(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "wav").mkdir(parents=True)
    (corpus / "wav" / "broken.wav").write_bytes(b"this is not audio")
    (corpus / "manifest.csv").write_text("path,label,speaker\nwav/broken.wav,a,s1\nwav/gone.wav,b,s2\n")
    config = {"datasets": {"mine": {"layout": "generic", "path": str(corpus), "classes": ["a", "b"]}}}
    result = snakemake(tmp_path, config=config, check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "2 clips of dataset 'mine' cannot be used" in text
    assert "broken (" in text and "unreadable or corrupt audio" in text
    assert "gone (" in text and "file not found" in text
    assert not (tmp_path / "results" / "data" / "mine" / "manifest.parquet").exists()
