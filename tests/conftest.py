"""Shared test helpers: tiny WAV files and a generic-manifest corpus builder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile


def write_tone(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 220.0, channels: int = 1) -> Path:
    """Write a sine tone WAV (16-bit PCM) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    soundfile.write(path, data, rate, subtype="PCM_16")
    return path


def write_generic_corpus(root: Path, speakers=("s1", "s2", "s3", "s4"), labels=("neutral", "happy", "angry", "sad"),
                         per_label: int = 2, rate: int = 16000) -> Path:
    """A generic-layout corpus: wav files plus manifest.csv; returns the folder."""
    rows = []
    for s_index, speaker in enumerate(speakers):
        for l_index, label in enumerate(labels):
            for k in range(per_label):
                utt = f"{speaker}_{label}_{k}"
                write_tone(root / "wav" / f"{utt}.wav", seconds=0.2 + 0.05 * k, rate=rate,
                           freq=150 + 40 * l_index + 5 * s_index)
                rows.append({"utt_id": utt, "path": f"wav/{utt}.wav", "label": label, "speaker": speaker,
                             "gender": "F" if s_index % 2 else "M"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def dataset_spec(path: Path, **overrides) -> dict:
    """A validated dataset spec for a generic corpus at ``path``."""
    from workflow_scripts.config import validate_config

    spec = {"layout": "generic", "path": str(path), "classes": ["neutral", "happy", "angry", "sad"], **overrides}
    return validate_config({"datasets": {"toy": spec}})["datasets"]["toy"]


def layout_spec(path: Path, layout: str, **overrides) -> dict:
    """A validated dataset spec that lists no classes, so the layout's default applies."""
    from workflow_scripts.config import validate_config

    return validate_config({"datasets": {"x": {"layout": layout, "path": str(path), **overrides}}})["datasets"]["x"]


@pytest.fixture
def generic_corpus(tmp_path: Path) -> Path:
    return write_generic_corpus(tmp_path / "corpus")
