"""Build a dataset's manifest: scan the corpus, map labels, decode and check every clip.

Output columns (one row per kept utterance, sorted by ``utt_id``):

``utt_id, source, speaker, session, gender, label, duration_s, sample_rate`` and, where the
layout knows them, ``group`` (the original paper's dialog grouping) and ``source_fold``.

Every problem is collected and reported at once, naming the offending files, before anything
downstream starts. With ``on_bad_audio: skip`` unusable clips are dropped and listed in the
rejected table instead of failing the run.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from workflow_scripts.atomic import write_table
from workflow_scripts.cli import entry_parser, resolve_dataset_spec, run_main
from workflow_scripts.data.audio import BadClip, read_clip
from workflow_scripts.data.layouts import get_layout
from workflow_scripts.errors import InputError, raise_if_any
from workflow_scripts.provenance import provenance

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "utt_id", "source", "speaker", "session", "gender", "label", "duration_s", "sample_rate",
]
REJECTED_COLUMNS = ["utt_id", "source", "reason"]


def label_mapping(spec: dict, layout_default: dict) -> dict:
    """The raw-label -> class map: the layout's standard map, then the config's ``label_map``."""
    mapping = {**layout_default, **(spec.get("label_map") or {})}
    for name in spec.get("classes") or []:
        mapping.setdefault(name, name)  # a raw label that already is a class name maps to itself
    return mapping


def apply_labels(scan: pd.DataFrame, mapping: dict, classes: list[str], key: str) -> pd.DataFrame:
    """Map raw labels to classes; drop the ones mapped to ``None``; refuse unknown ones."""
    unknown = scan.loc[~scan["raw_label"].isin(list(mapping)), ["utt_id", "raw_label"]]
    raise_if_any(
        f"{{n}} utterances have a label that {key}.label_map does not mention",
        (f"{row.utt_id}: {row.raw_label!r}" for row in unknown.itertuples()),
        hint=f"Map each raw label to a class in {key}.classes, or to null to drop it.",
    )
    labelled = scan.assign(label=scan["raw_label"].map(mapping).astype("string"))
    dropped = labelled["label"].isna()
    if dropped.any():
        counts = labelled.loc[dropped, "raw_label"].value_counts().to_dict()
        log.info("dropped %d utterances whose label maps to null: %s", dropped.sum(), counts)
    labelled = labelled.loc[~dropped]
    stray = sorted(set(labelled["label"]) - set(classes))
    raise_if_any(
        f"{key}.label_map maps to {{n}} class names that are not in {key}.classes {classes}",
        stray,
    )
    return labelled


def probe_clips(sources: list[str], threads: int = 4) -> list[tuple[float, int] | BadClip]:
    """Decode each clip once: (duration in s, sample rate) or the :class:`BadClip` it raised."""

    def probe(source: str):
        try:
            samples, rate = read_clip(source)
        except BadClip as problem:
            return problem
        return samples.size / rate, rate

    with ThreadPoolExecutor(max_workers=threads) as pool:  # libsndfile releases the GIL
        return list(pool.map(probe, sources))


def build_manifest(name: str, spec: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(manifest, rejected)`` for the dataset ``name`` configured by ``spec``."""
    key = f"datasets.{name}"
    layout = get_layout(spec["layout"])
    root = Path(spec["path"])
    if not root.exists():
        raise InputError(f"{key}.path: {root} does not exist")
    try:
        scan = layout.scan(root, spec.get("options") or {})
    except InputError as error:
        # Layouts name their own keys ('options.sessions'); say which dataset they belong to.
        raise InputError(f"{key} (layout {spec['layout']!r}, path {root}): {error}") from error

    duplicated = scan.loc[scan["utt_id"].duplicated(keep=False)].sort_values("utt_id")
    raise_if_any(
        f"{{n}} rows of {root} share an utterance id with another row (ids must be unique)",
        (f"{row.utt_id}: {row.source}" for row in duplicated.itertuples()),
    )
    classes = list(spec["classes"])
    labelled = apply_labels(scan, label_mapping(spec, layout.DEFAULT_LABEL_MAP), classes, key)
    if labelled.empty:
        raise InputError(f"{key}: no utterance is left after label mapping; check {key}.label_map")

    probes = probe_clips(labelled["source"].tolist())
    bad = [isinstance(p, BadClip) for p in probes]
    rejected = pd.DataFrame(
        [
            {"utt_id": row.utt_id, "source": row.source, "reason": str(p)}
            for row, p, is_bad in zip(labelled.itertuples(), probes, bad)
            if is_bad
        ],
        columns=REJECTED_COLUMNS,
    )
    if len(rejected) and spec.get("on_bad_audio", "error") == "error":
        raise_if_any(
            f"{{n}} clips of dataset {name!r} cannot be used",
            (f"{r.utt_id} ({r.source}): {r.reason}" for r in rejected.itertuples()),
            hint=f"Fix or remove them, or set {key}.on_bad_audio: skip to drop them "
            "(they are then listed in rejected.csv).",
        )
    if len(rejected):
        log.warning("skipping %d unusable clips (see rejected.csv)", len(rejected))

    good = labelled.loc[[not b for b in bad]].copy()
    good["duration_s"] = [p[0] for p, b in zip(probes, bad) if not b]
    good["sample_rate"] = pd.array([p[1] for p, b in zip(probes, bad) if not b], dtype="Int64")
    if good.empty:
        raise InputError(f"dataset {name!r}: every clip was rejected; see the rejected list")
    extra = [c for c in ("group", "source_fold") if c in good]
    manifest = good[MANIFEST_COLUMNS + extra].sort_values("utt_id").reset_index(drop=True)
    log.info(
        "%s: %d utterances, %d speakers, %.2f h; classes %s",
        name, len(manifest), manifest["speaker"].nunique(), manifest["duration_s"].sum() / 3600,
        manifest["label"].value_counts().reindex(classes).to_dict(),
    )
    return manifest, rejected


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.data.manifest", __doc__, dataset=True)
    parser.add_argument("--manifest", required=True, help="output manifest.parquet")
    parser.add_argument("--rejected", required=True, help="output rejected.csv")
    args = parser.parse_args(argv)
    spec = resolve_dataset_spec(args)
    manifest, rejected = build_manifest(args.dataset, spec)
    # rejected first: the manifest is the file downstream rules wait for.
    write_table(args.rejected, rejected)
    write_table(args.manifest, manifest, provenance("manifest", spec, dataset=args.dataset))


if __name__ == "__main__":
    run_main(main)
