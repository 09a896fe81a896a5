"""The decoded audio of one dataset, resampled once, in one chunked Zarr store.

Store layout (a ragged store, see ``workflow_scripts.ragged``; this module and that one are the
only code that knows it):

``samples``   float32 [total_samples]   every clip at ``sample_rate``, concatenated in manifest order
``offsets``   int64   [n_clips + 1]     clip ``i`` is ``samples[offsets[i]:offsets[i+1]]``
attributes    ``sample_rate``, ``utt_ids`` (manifest order), ``max_seconds`` and ``long_clips``
              (ids of clips longer than ``max_seconds``, which later stages crop)

Ragged CSR storage keeps every clip's true length: nothing is padded here.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from workflow_scripts.cli import entry_parser, resolve_spec, run_main
from workflow_scripts.data.audio import read_clip, resample
from workflow_scripts.errors import InputError, describe_offenders
from workflow_scripts.provenance import provenance
from workflow_scripts.ragged import RaggedReader, RaggedWriter

log = logging.getLogger(__name__)

CHUNK_SAMPLES = 1 << 20  # 4 MiB float32 chunks: few files, cheap partial reads


def write_audio_store(
    path: str, manifest: pd.DataFrame, sample_rate: int, max_seconds: float, record: dict | None = None
) -> dict:
    """Decode, resample and store every clip of ``manifest``; return a short summary."""
    with RaggedWriter(path, "samples", (), chunk_rows=CHUNK_SAMPLES) as writer:
        for utt_id, source in zip(manifest["utt_id"], manifest["source"]):
            writer.append(utt_id, resample(*read_clip(source), sample_rate))
        seconds = np.diff(writer.offsets) / sample_rate
        long_clips = manifest.loc[seconds > max_seconds, "utt_id"].tolist()
        if long_clips:
            log.warning(
                describe_offenders(
                    f"{len(long_clips)} clips are longer than audio.max_seconds = {max_seconds} s "
                    "and will be cropped by the encoder",
                    long_clips,
                )
            )
        writer.attrs.update({"sample_rate": sample_rate, "max_seconds": max_seconds,
                             "long_clips": long_clips, "provenance": record or {}})
    return {"clips": len(manifest), "hours": float(seconds.sum() / 3600), "long_clips": len(long_clips)}


class AudioStore(RaggedReader):
    """Read clips back from a store written by :func:`write_audio_store`."""

    def __init__(self, path: str):
        super().__init__(path, "samples")
        self.sample_rate = int(self.attrs["sample_rate"])
        self.long_clips = list(self.attrs["long_clips"])

    def check_matches(self, manifest: pd.DataFrame) -> None:
        """Refuse a store that was written for another manifest (stale cache)."""
        if self.utt_ids != manifest["utt_id"].tolist():
            raise InputError(f"{self.path} does not match the manifest: rebuild it (delete it and rerun)")


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.data.audio_cache", __doc__)
    parser.add_argument("--manifest", required=True, help="input manifest.parquet")
    parser.add_argument("--out", required=True, help="output audio.zarr folder")
    args = parser.parse_args(argv)
    spec = resolve_spec(args, lambda config: config["audio"])
    record = provenance("audio_cache", spec, manifest=args.manifest)
    summary = write_audio_store(
        args.out, pd.read_parquet(args.manifest), spec["sample_rate"], spec["max_seconds"], record
    )
    log.info("wrote %s: %s", args.out, summary)


if __name__ == "__main__":
    run_main(main)
