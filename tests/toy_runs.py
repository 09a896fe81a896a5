"""A tiny trained setting shared by the training and capture tests: synthetic, learnable log-mel
features (6 speakers x 4 classes x 4 clips; class c raises mel bands 20c..20c+19), their
manifest and leave-one-speaker-out folds, and a tiny random Whisper checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.config import validate_config
from workflow_scripts.data.folds import build_folds, fold_settings
from workflow_scripts.features import FeatureStoreWriter
from workflow_scripts.models.build import build_checkpoint
from workflow_scripts.runs import Run, run_settings
from workflow_scripts.train.run import run_training

CLASSES = ["neutral", "happy", "angry", "sad"]
TINY_MODEL = {"source": "tiny_random", "num_mel_bins": 80, "layers": 2, "d_model": 32, "heads": 2,
              "ffn_dim": 64, "seed": 0}


def build_toy_dataset(root: Path) -> Path:
    """Write logmel80.zarr, manifest.parquet, folds.parquet and the tiny checkpoint into ``root``."""
    rng = np.random.default_rng(0)
    rows = []
    with FeatureStoreWriter(str(root / "logmel80.zarr"), 80) as writer:
        for speaker in range(6):
            for c, label in enumerate(CLASSES):
                for k in range(4):
                    frames = rng.normal(-0.5, 0.3, (int(rng.integers(40, 120)), 80)).astype(np.float32)
                    frames[:, 20 * c : 20 * c + 20] += 0.8
                    utt = f"s{speaker}_{label}_{k}"
                    writer.append(utt, frames)
                    rows.append({"utt_id": utt, "label": label, "speaker": f"s{speaker}", "gender": "F"})
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(root / "manifest.parquet")
    spec = {"classes": CLASSES, "folds": {"protocols": ["loso_speaker"]}}
    folds = build_folds("toy", manifest, "loso_speaker", fold_settings(spec, "loso_speaker", "toy"))
    folds.to_parquet(root / "folds.parquet")
    build_checkpoint("tiny", TINY_MODEL, root / "tiny")
    return root


def toy_config(audio=None, legacy=False, capture=None, **training) -> dict:
    """A validated config around the toy dataset (CPU, 3 epochs, lr 3e-3)."""
    return validate_config({
        "legacy": legacy,
        "datasets": {"toy": {"layout": "generic", "path": "x", "classes": CLASSES}},
        "audio": audio or {},
        "capture": capture or {},
        "training": {"epochs": 3, "lr": 3e-3, "batch_size": 8, "device": "cpu", **training},
    })


def settings(method="lora", audio=None, **training):
    """A run's settings, as the workflow passes them: only those its method uses."""
    return run_settings(toy_config(audio, **training), "toy", method)


def toy_run(method="lora", targets="q_proj+v_proj", rank=4, seed=0, fold=1) -> Run:
    return Run("toy", "loso_speaker", "tiny", method, targets, rank, seed, fold)


def train_run(dataset, out, method="lora", targets="q_proj+v_proj", rank=4, seed=0, fold=1, audio=None,
              **training):
    run = toy_run(method, targets, rank, seed, fold)
    return run_training(run, settings(method, audio, **training), dataset / "tiny", dataset / "logmel80.zarr",
                        dataset / "manifest.parquet", dataset / "folds.parquet", out)


def captured_lora_run(root: Path) -> Path:
    """The toy dataset in ``root``, its LoRA run trained into root/lora, and that run's
    acts store, root/acts.zarr (returned)."""
    from workflow_scripts.capture.run import capture_store
    from workflow_scripts.capture.settings import capture_settings

    build_toy_dataset(root)
    train_run(root, root / "lora")
    capture_store("acts", toy_run(), capture_settings(toy_config(), "toy", "acts"), root / "tiny",
                  root / "lora" / "weights", root / "logmel80.zarr", root / "manifest.parquet",
                  root / "folds.parquet", root / "acts.zarr")
    return root / "acts.zarr"
