"""The decoded audio of one dataset, resampled once, in one chunked Zarr store.

Store layout (a ragged store, see ``workflow_scripts.ragged``; this module and that one are the
only code that knows it):

``samples``   float32 [total_samples]   every clip at ``sample_rate``, concatenated in manifest order
``offsets``   int64   [n_clips + 1]     clip ``i`` is ``samples[offsets[i]:offsets[i+1]]``
attributes    ``sample_rate``, ``utt_ids`` (manifest order), ``provenance``

Ragged CSR storage keeps every clip's true length: nothing is padded or cropped here. The cache
depends on ``audio.sample_rate`` only; the crop cap ``audio.max_seconds`` applies in training,
whose log lists the clips it crops.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from workflow_scripts.cli import entry_parser, resolve_spec, run_main
from workflow_scripts.data.audio import read_clip, resample
from workflow_scripts.errors import InputError
from workflow_scripts.provenance import provenance
from workflow_scripts.ragged import RaggedReader, RaggedWriter

log = logging.getLogger(__name__)

CHUNK_SAMPLES = 1 << 20  # 4 MiB float32 chunks: few files, cheap partial reads


def audio_cache_settings(config: dict) -> dict:
    """What the audio cache depends on: the sample rate (not ``max_seconds``, which only
    training uses, so changing it rebuilds no cache)."""
    return {"sample_rate": config["audio"]["sample_rate"]}


def write_audio_store(path: str, manifest: pd.DataFrame, sample_rate: int, record: dict | None = None) -> dict:
    """Decode, resample and store every clip of ``manifest``; return a short summary."""
    with RaggedWriter(path, "samples", (), chunk_rows=CHUNK_SAMPLES) as writer:
        for utt_id, source in zip(manifest["utt_id"], manifest["source"]):
            writer.append(utt_id, resample(*read_clip(source), sample_rate))
        seconds = np.diff(writer.offsets) / sample_rate
        writer.attrs.update({"sample_rate": sample_rate, "provenance": record or {}})
    return {"clips": len(manifest), "hours": float(seconds.sum() / 3600), "longest_seconds": float(seconds.max(initial=0))}


class AudioStore(RaggedReader):
    """Read clips back from a store written by :func:`write_audio_store`."""

    def __init__(self, path: str):
        super().__init__(path, "samples")
        self.sample_rate = int(self.attrs["sample_rate"])

    def check_matches(self, manifest: pd.DataFrame) -> None:
        """Refuse a store that was written for another manifest (stale cache)."""
        if self.utt_ids != manifest["utt_id"].tolist():
            raise InputError(f"{self.path} does not match the manifest: rebuild it (delete it and rerun)")


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.data.audio_cache", __doc__)
    parser.add_argument("--manifest", required=True, help="input manifest.parquet")
    parser.add_argument("--out", required=True, help="output audio.zarr folder")
    args = parser.parse_args(argv)
    spec = resolve_spec(args, audio_cache_settings)
    record = provenance("audio_cache", spec, manifest=args.manifest)
    summary = write_audio_store(args.out, pd.read_parquet(args.manifest), spec["sample_rate"], record)
    log.info("wrote %s: %s", args.out, summary)


if __name__ == "__main__":
    run_main(main)
