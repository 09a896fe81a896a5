"""Whisper log-mel features, computed once per (dataset, number of mel bins) and cached in Zarr.

Store layout (a ragged store, see ``workflow_scripts.ragged``; this module and that one are the
only code that knows it):

``mel``       float32 [total_frames, n_mels]  every clip's log-mel frames, in manifest order
``offsets``   int64   [n_clips + 1]           clip ``i`` is ``mel[offsets[i]:offsets[i+1]]``
attributes    ``n_mels``, ``hop_length``, ``sample_rate``, ``utt_ids``, ``provenance``

A clip of ``n`` samples keeps the ``ceil((n + 200) / 160)`` frames (10 ms hop, 25 ms window
centred on the frame) whose window overlaps the clip. They are computed by Hugging Face's
``WhisperFeatureExtractor`` on the clip plus a little silence, not on a 30-s window: Whisper's
normalisation (clamp at max - 8, then (x + 4) / 4) takes its maximum per clip, and the silent
rest of a 30-s window never holds that maximum, so the frames are identical to the first frames
of the 30-s version (``tests/test_features.py`` pins this). Every later frame of the 30-s
version is silence and holds the clip's floor, :func:`padding_floor`: ``max(clip_max - 2, -1.5)``
with ``clip_max`` the clip's normalised maximum (``max - 2`` from the clamp at max - 8, ``-1.5``
from the mel power's clamp at 1e-10, which wins for quiet clips). :func:`collate` pads with
exactly that value, so a batch padded to 30 s reproduces the original features bit for bit.
(Only a clip longer than 30 s differs slightly: the original cut the waveform before normalising.)
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from workflow_scripts.cli import entry_parser, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.provenance import provenance
from workflow_scripts.ragged import RaggedReader, RaggedWriter

log = logging.getLogger(__name__)

HOP_LENGTH = 160  # samples per frame at 16 kHz (Whisper's fixed STFT hop)
HALF_WINDOW = 200  # half of the 400-sample STFT window
FRAMES_PER_SECOND = 100
WINDOW_FRAMES = 3000  # Whisper's 30-s input window
# Hugging Face's WhisperFeatureExtractor computes x = log10(max(mel_power, 1e-10)), then
# x = max(x, x.max() - 8) per clip, then (x + 4) / 4. The padding of a 30-s window is silence
# (mel power 0), so padding_floor derives its value from these constants: a single offset below
# the clip's maximum would miss the second regime, the 1e-10 clamp that quiet clips hit.
LOG10_MEL_POWER_FLOOR = -10.0  # log10(1e-10): the log-mel of a silent frame before normalising
DYNAMIC_RANGE = 8.0  # log10 units kept below the clip's maximum
NORM_SHIFT, NORM_SCALE = 4.0, 4.0  # normalised = (log10 + NORM_SHIFT) / NORM_SCALE
CHUNK_FRAMES = 8192


def feature_extractor(n_mels: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels)


def clip_frame_count(n_samples: int) -> int:
    """Frames whose STFT window overlaps a clip of ``n_samples``: ``ceil((n + 200) / 160)``."""
    return -(-(n_samples + HALF_WINDOW) // HOP_LENGTH)


def clip_features(extractor, samples: np.ndarray) -> np.ndarray:
    """Log-mel frames ``[clip_frame_count(n), n_mels]`` of one 16-kHz clip."""
    n_frames = clip_frame_count(samples.size)
    features = extractor(
        samples, sampling_rate=extractor.sampling_rate, padding="max_length",
        # Zero-pad beyond the last kept window, so that no kept frame sees the STFT's reflection
        # padding at the end: they see silence, as in a 30-s window.
        max_length=(n_frames + 2) * HOP_LENGTH, truncation=False, return_tensors="np",
        device="cpu",  # the torch STFT: ~70x faster than numpy here, same values
    ).input_features[0]
    return np.ascontiguousarray(features[:, :n_frames].T, dtype=np.float32)


class FeatureStoreWriter(RaggedWriter):
    """Append clips' frames to a new log-mel store, in order; the store appears only on success."""

    def __init__(self, path: str, n_mels: int, record: dict | None = None):
        super().__init__(path, "mel", (n_mels,), chunk_rows=CHUNK_FRAMES)
        self.attrs.update({"n_mels": n_mels, "hop_length": HOP_LENGTH, "sample_rate": 16000,
                           "provenance": record or {}})


def write_feature_store(path: str, audio_store, n_mels: int, record: dict | None = None) -> dict:
    """Compute and store the features of every clip in ``audio_store`` (an AudioStore)."""
    if audio_store.sample_rate != 16000:
        raise InputError(f"{audio_store.path}: Whisper features need 16 kHz audio, not {audio_store.sample_rate} Hz")
    extractor = feature_extractor(n_mels)
    with FeatureStoreWriter(path, n_mels, record) as writer:
        for index, utt_id in enumerate(audio_store.utt_ids):
            writer.append(utt_id, clip_features(extractor, audio_store[index]))
    return {"clips": len(writer.utt_ids), "frames": int(writer.offsets[-1])}


class FeatureStore(RaggedReader):
    """Read clips' log-mel frames back from a store written by :func:`write_feature_store`."""

    def __init__(self, path: str):
        super().__init__(path, "mel")
        self.n_mels = int(self.attrs["n_mels"])


def max_frames_of(seconds: float) -> int:
    """Mel frames in ``seconds`` (the crop cap ``audio.max_seconds``)."""
    return int(seconds * FRAMES_PER_SECOND)


def padding_floor(clip_max: float) -> float:
    """The normalised value of a silent frame in a 30-s window whose clip peaks at ``clip_max``.

    A silent frame's log-mel is ``log10(1e-10) = -10``, raised to the clip's ``max - 8`` when that
    is higher; normalised, ``max(clip_max - 2, -1.5)``. The -1.5 wins once the clip's log-mel
    maximum is below -2 (``clip_max`` < 0.5): quiet clips, e.g. a -50 dBFS tone.
    """
    below_max = clip_max - DYNAMIC_RANGE / NORM_SCALE
    silence = (LOG10_MEL_POWER_FLOOR + NORM_SHIFT) / NORM_SCALE
    return max(below_max, silence)


def batch_frames(longest: int, max_frames: int, legacy: bool = False) -> int:
    """Mel frames of a batch whose longest clip has ``longest``: the longest clip capped at
    ``max_frames``, or Whisper's 30-s window under ``legacy``; even, since the encoder's
    stride-2 convolution keeps frame pairs whole."""
    length = WINDOW_FRAMES if legacy else min(longest, max_frames)
    return length + length % 2


def collate(clips: list[np.ndarray], max_frames: int, legacy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack clips into ``features [B, n_mels, T]`` and ``frame_mask [B, T]`` (True = real frame).

    By default ``T`` is the longest clip of the batch, capped at ``max_frames``; under ``legacy``
    every batch is padded or truncated to Whisper's 30-s window (3000 frames), as the original
    code did. Each clip is padded with its own :func:`padding_floor`, which is what a 30-s window
    holds.
    """
    length = batch_frames(max(len(c) for c in clips), max_frames, legacy)
    n_mels = clips[0].shape[1]
    features = np.empty((len(clips), length, n_mels), dtype=np.float32)
    mask = np.zeros((len(clips), length), dtype=bool)
    for row, clip in enumerate(clips):
        kept = min(len(clip), length)
        features[row, :kept] = clip[:kept]
        features[row, kept:] = padding_floor(float(clip.max()))
        mask[row, :kept] = True
    return torch.from_numpy(features).transpose(1, 2).contiguous(), torch.from_numpy(mask)


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.features", __doc__, settings=False)
    parser.add_argument("--audio", required=True, help="input audio.zarr (16 kHz)")
    parser.add_argument("--manifest", required=True, help="the dataset's manifest.parquet (checks the store)")
    parser.add_argument("--n-mels", type=int, required=True, help="mel bins (80; 128 for large-v3)")
    parser.add_argument("--out", required=True, help="output logmel{n}.zarr folder")
    args = parser.parse_args(argv)
    from workflow_scripts.data.audio_cache import AudioStore

    audio = AudioStore(args.audio)
    audio.check_matches(pd.read_parquet(args.manifest, columns=["utt_id"]))
    record = provenance("features", {"n_mels": args.n_mels}, audio=args.audio)
    summary = write_feature_store(args.out, audio, args.n_mels, record)
    log.info("wrote %s: %s", args.out, summary)


if __name__ == "__main__":
    run_main(main)
