"""Read one clip as mono float32, check it, and resample it (soundfile decodes, torchaudio resamples).

A clip's ``source`` is either a path to an audio file or ``<file>::<row>`` for audio embedded as
bytes in an Arrow IPC stream (a Hugging Face ``save_to_disk`` folder) or a Parquet file.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import soundfile

EMBEDDED_SEPARATOR = "::"


class BadClip(Exception):
    """A clip that cannot be used; the message says why (missing, unreadable, empty, NaN, silent)."""


@functools.lru_cache(maxsize=4)
def _embedded_audio_column(file: str):
    """The ``audio`` column of an Arrow/Parquet file, loaded once per file (memory-mapped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if file.endswith(".parquet"):
        table = pq.read_table(file, columns=["audio"], memory_map=True)
    else:
        with pa.memory_map(file) as source:
            table = pa.ipc.open_stream(source).read_all()
    return table.column("audio")


def _read_embedded(source: str) -> tuple[np.ndarray, int]:
    file, row = source.rsplit(EMBEDDED_SEPARATOR, 1)
    if not Path(file).is_file():
        raise BadClip(f"file not found: {file}")
    record = _embedded_audio_column(file)[int(row)].as_py()
    if record.get("bytes"):
        return soundfile.read(io.BytesIO(record["bytes"]), dtype="float32", always_2d=True)
    if record.get("path") and Path(record["path"]).is_file():
        return soundfile.read(record["path"], dtype="float32", always_2d=True)
    raise BadClip(f"row {row} of {file} holds neither audio bytes nor a readable audio path")


def read_clip(source: str) -> tuple[np.ndarray, int]:
    """Decode ``source`` to a mono float32 array and its sample rate; raise :class:`BadClip`.

    Multi-channel audio is averaged to mono. The checks match what later stages need: at least
    one sample, every sample finite (one NaN poisons a whole batch's loss), and not digitally
    silent (an all-zero file is a failed recording or export, and carries no emotion to learn).
    """
    try:
        if EMBEDDED_SEPARATOR in source:
            data, rate = _read_embedded(source)
        else:
            if not Path(source).is_file():
                raise BadClip(f"file not found: {source}")
            data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except BadClip:
        raise
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, ... on corrupt files
        raise BadClip(f"unreadable or corrupt audio ({type(error).__name__}: {error})") from error
    samples = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if samples.size == 0:
        raise BadClip("zero-length audio (no samples)")
    finite = np.isfinite(samples)
    if not finite.all():
        what = "all samples are NaN/Inf" if not finite.any() else f"{(~finite).sum()} samples are NaN/Inf"
        raise BadClip(f"non-finite audio: {what}")
    # Checked on every channel before the mix: opposite-phase channels average to zeros
    # but are a recording.
    if not data.any():
        raise BadClip("digitally silent: every sample is 0")
    return np.ascontiguousarray(samples), int(rate)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono float32 clip with torchaudio's band-limited sinc interpolation."""
    if rate == target_rate:
        return samples.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional

    resampled = torchaudio.functional.resample(torch.from_numpy(samples), rate, target_rate)
    return resampled.numpy().astype(np.float32, copy=False)
