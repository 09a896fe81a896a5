"""Build a dataset's manifest: scan the corpus, map labels, decode and check every clip.

Output columns (one row per kept utterance, sorted by ``utt_id``):

``utt_id, source, speaker, session, gender, label, duration_s, sample_rate`` and, where the
layout knows them, ``group`` (the original paper's dialog grouping) and ``source_fold``.

Every problem is collected and reported in one error, one section per kind (duplicate ids,
unknown labels, classes the label map sends utterances to that are not in ``classes``, classes
no utterance ends up in, unusable clips), naming the offending files and the config keys to
fix, before anything downstream starts. With ``on_bad_audio: skip`` unusable clips are dropped
and listed in the rejected table instead; only the other kinds then stop the run.
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
from workflow_scripts.errors import InputError, ProblemReport, describe_offenders
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


def apply_labels(
    scan: pd.DataFrame, mapping: dict, classes: list[str], key: str, report: ProblemReport, *, standard_map: bool
) -> pd.DataFrame:
    """Map raw labels to classes and drop the ones mapped to ``None``; record label problems in ``report``.

    Returns every row that is not dropped, with ``label`` ``<NA>`` where the raw label is
    unknown, so that those clips are still decoded and their audio problems reported in the
    same run. Recorded: raw labels the map does not mention, classes the map sends raw labels
    to that are not in ``classes``, and classes that no utterance ends up in.
    """
    known = scan["raw_label"].isin(list(mapping))
    unknown = scan.loc[~known, ["utt_id", "raw_label", "source"]]
    report.add(
        f"{{n}} utterances have a label that {key}.label_map does not mention",
        (f"{row.utt_id}: {row.raw_label!r} ({row.source})" for row in unknown.itertuples()),
        hint=f"Map each raw label to a class in {key}.classes, or to null to drop it.",
    )
    labelled = scan.assign(label=scan["raw_label"].map(mapping).astype("string"))
    dropped = known & labelled["label"].isna()
    null_counts = labelled.loc[dropped, "raw_label"].value_counts().sort_index()
    if dropped.any():
        log.info("dropped %d utterances whose label maps to null: %s", dropped.sum(), null_counts.to_dict())
    kept = labelled.loc[~dropped]
    with_class = kept.loc[kept["label"].notna()]

    map_name = f"{key}.label_map" + (" (merged over the layout's standard map)" if standard_map else "")
    outside = with_class.loc[~with_class["label"].isin(classes)]
    report.add(
        f"{map_name} maps to {{n}} class names that are not in {key}.classes {classes}",
        (
            f"{label} (from raw label(s) {sorted(group['raw_label'].unique())}, {len(group)} utterances)"
            for label, group in outside.groupby("label", sort=True)
        ),
        hint=f"Add each to {key}.classes, or map its raw labels to null in {key}.label_map to drop them.",
    )

    counts = with_class["label"].value_counts()
    report.add(
        f"{key}.classes names {{n}} class(es) that no utterance ends up in after {map_name}",
        (
            _empty_class_reason(name, mapping, null_counts, key)
            for name in classes
            if counts.get(name, 0) == 0
        ),
        hint=f"Raw labels in the corpus (utterances) -> class: {_raw_label_summary(labelled, known)}. "
        f"Map a raw label to each class above in {key}.label_map, or remove the class from {key}.classes.",
    )
    return kept


def _raw_label_summary(labelled: pd.DataFrame, known: pd.Series, limit: int = 30) -> str:
    """``'calm' (4) -> null, 'neutral' (8) -> neutral, ...``: what the map does to each raw label."""
    entries = []
    for raw, group in labelled.groupby("raw_label", sort=True):
        target = group["label"].iloc[0]
        where = "unknown" if not known[group.index[0]] else ("null" if pd.isna(target) else target)
        entries.append(f"{raw!r} ({len(group)}) -> {where}")
    more = f", ... ({len(entries)} raw labels in all)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def _empty_class_reason(name: str, mapping: dict, null_counts: pd.Series, key: str) -> str:
    """Why no utterance ends up in class ``name``, and what to set."""
    sources = sorted(raw for raw, target in mapping.items() if target == name)
    if sources:
        return f"{name!r}: no utterance has a raw label that maps to it ({', '.join(map(repr, sources))})"
    same = [raw for raw in null_counts.index if str(raw).casefold() == name.casefold()]
    if same:
        return (
            f"{name!r}: no raw label maps to it, and raw label {same[0]!r} ({null_counts[same[0]]} utterances) "
            f"maps to null; set {key}.label_map: {{{same[0]}: {name}}}"
        )
    return f"{name!r}: no raw label maps to it"


def duplicate_rows(scan: pd.DataFrame) -> list[str]:
    """``utt_id: source`` of every row whose utterance id another row has too."""
    duplicated = scan.loc[scan["utt_id"].duplicated(keep=False)].sort_values(["utt_id", "source"])
    return [f"{row.utt_id}: {row.source}" for row in duplicated.itertuples()]


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
    """Return ``(manifest, rejected)`` for the dataset ``name`` configured by ``spec``.

    Duplicate ids, label problems and unusable clips are collected and raised as one
    :class:`InputError`, so that one run shows every problem of the corpus.
    """
    key = f"datasets.{name}"
    layout = get_layout(spec["layout"])
    root = Path(spec["path"])
    if not root.exists():
        raise InputError(f"{key}.path: {root} does not exist ({root.absolute()}; a relative path is resolved "
                         "against Snakemake's working directory, where every job runs)")
    try:
        scan = layout.scan(root, spec.get("options") or {})
    except InputError as error:
        # Layouts name their own keys ('options.sessions'); say which dataset they belong to.
        raise InputError(f"{key} (layout {spec['layout']!r}, path {root}): {error}") from error

    report = ProblemReport(f"{key} (layout {spec['layout']!r}, path {root})")
    report.add(
        f"{{n}} rows of {root} share an utterance id with another row (ids must be unique)",
        duplicate_rows(scan),
        hint="Remove the duplicate files or rows"
        + (", or give each row of the manifest its own 'utt_id' (the default is the file name "
           "without extension)." if spec["layout"] == "generic" else "."),
    )
    classes = list(spec["classes"])
    labelled = apply_labels(
        scan, label_mapping(spec, layout.DEFAULT_LABEL_MAP), classes, key, report,
        standard_map=bool(layout.DEFAULT_LABEL_MAP),
    )

    # Every clip not dropped by the label map is decoded, even when other problems will stop
    # the run: its audio problems belong in the same report.
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
    unusable = [f"{r.utt_id} ({r.source}): {r.reason}" for r in rejected.itertuples()]
    if spec.get("on_bad_audio", "error") == "error":
        report.add(
            f"{{n}} clips of dataset {name!r} cannot be used",
            unusable,
            hint=f"Fix or remove them, or set {key}.on_bad_audio: skip to drop them "
            "(they are then listed in rejected.csv).",
        )
    else:
        # Not a problem by itself under 'skip', but the user fixing the rest should see it.
        report.note(
            f"{{n}} unusable clips will be dropped ({key}.on_bad_audio: skip) and listed in rejected.csv "
            "once the problems above are fixed",
            unusable,
        )
    report.raise_if_any()
    if len(rejected):
        log.warning("skipping %d unusable clips (see rejected.csv)", len(rejected))

    good = labelled.loc[[not b for b in bad]].copy()
    good["duration_s"] = [p[0] for p, b in zip(probes, bad) if not b]
    good["sample_rate"] = pd.array([p[1] for p, b in zip(probes, bad) if not b], dtype="Int64")
    if good.empty:
        raise InputError(describe_offenders(
            f"{key}: every clip was unusable, so with {key}.on_bad_audio: skip nothing is left "
            f"(corpus {root})", (f"{r.utt_id} ({r.source}): {r.reason}" for r in rejected.itertuples())))
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
