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
version has the value ``max - 2``, the clip's floor; :func:`collate` pads with exactly that
value, so a batch padded to 30 s reproduces the original features bit for bit. (Only a clip
longer than 30 s differs slightly: the original cut the waveform before normalising.)
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
FLOOR_BELOW_MAX = 2.0  # a silent frame after normalisation: (max - 8 + 4) / 4 = (max + 4) / 4 - 2
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


def collate(clips: list[np.ndarray], max_frames: int, legacy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack clips into ``features [B, n_mels, T]`` and ``frame_mask [B, T]`` (True = real frame).

    By default ``T`` is the longest clip of the batch, capped at ``max_frames``; under ``legacy``
    every batch is padded or truncated to Whisper's 30-s window (3000 frames), as the original
    code did. Each clip is padded with its own floor value, which is what a 30-s window holds.
    """
    longest = max(len(c) for c in clips)
    length = WINDOW_FRAMES if legacy else min(longest, max_frames)
    length += length % 2  # the encoder's stride-2 convolution: keep frame pairs whole
    n_mels = clips[0].shape[1]
    features = np.empty((len(clips), length, n_mels), dtype=np.float32)
    mask = np.zeros((len(clips), length), dtype=bool)
    for row, clip in enumerate(clips):
        kept = min(len(clip), length)
        features[row, :kept] = clip[:kept]
        features[row, kept:] = clip.max() - FLOOR_BELOW_MAX
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
