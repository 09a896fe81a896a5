"""EmoBox metadata: one JSON object per line, plus EmoBox's own test folds.

Matched against the EmoBox repository (github.com/emo-box/EmoBox, ``data/iemocap/``)::

    iemocap.jsonl
    fold_1/iemocap_test_fold_1.jsonl   fold_1/iemocap_train_fold_1.jsonl   ... fold_5/...

with lines such as ``{"key": "iemocap-Ses01F_impro04_F000", "dataset": "iemocap",
"wav": "downloads/iemocap/Session1/sentences/wav/Ses01F_impro04/Ses01F_impro04_F000.wav",
"type": "raw", "sample_rate": 16000, "num_frame": 70312.0, "task": "category",
"length": 4.3945, "emo": "neu", "channel": 1}``. The fold files repeat the same records. Used
here: ``key`` (utt_id), ``wav``, ``emo`` (raw label) and, when present, ``spk``/``speaker``,
``gender`` and ``session``. The published files carry no speaker, and their ``wav`` paths are
relative to the folder EmoBox was run from (the one holding ``downloads/``), not to the
metadata: set ``options.audio_root`` to that folder.

* Metadata file: ``options.metadata`` (relative to the root), else the single ``*.jsonl``
  directly under the root (the root may also be that file).
* ``source_fold``: the k of the ``fold_<k>/<name>_test_fold_<k>.jsonl`` listing the key. The
  train files are the complement of the test files and are not read.
* Speaker: parsed from an IEMOCAP utterance name in the key (``iemocap-`` prefix allowed) or in
  the wav name, as in the ``iemocap`` layout; else ``spk``/``speaker``. The IEMOCAP name wins
  because EmoBox's own IEMOCAP script derives ``spk`` from the dialog prefix (``Ses01F``),
  which is not the speaker.
* Records cut from a longer recording (``start_time``/``end_time``) are refused: ``source``
  can only name a whole file.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path, PurePosixPath

import pandas as pd

from workflow_scripts.data.layouts import GENDER_SPELLINGS, IEMOCAP_LABEL_SPELLINGS, finish_scan
from workflow_scripts.data.layouts.iemocap import parse_utterance_name
from workflow_scripts.errors import InputError, describe_offenders, raise_if_any

DESCRIPTION = "EmoBox metadata (<name>.jsonl + fold_<k>/<name>_test_fold_<k>.jsonl)"

# EmoBox keeps the corpus's own label codes (IEMOCAP: neu, hap, ang, sad, exc).
DEFAULT_LABEL_MAP: dict[str, str | None] = dict(IEMOCAP_LABEL_SPELLINGS)
# EmoBox holds many corpora, each with its own classes: the config must list them.
DEFAULT_CLASSES: tuple[str, ...] | None = None
log = logging.getLogger(__name__)


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """Return ('file:line', record) for every non-blank line of ``path``."""
    records, broken = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            broken.append(f"{path}:{number}: {error}")
            continue
        if not isinstance(record, dict):
            broken.append(f"{path}:{number}: not a JSON object")
            continue
        records.append((f"{path}:{number}", record))
    raise_if_any("{n} line(s) are not valid JSON objects", broken)
    return records


def _metadata_file(root: Path, options: dict) -> Path:
    if options.get("metadata"):
        path = root / Path(options["metadata"]).expanduser()  # an absolute path replaces root
        if not path.is_file():
            raise InputError(f"options.metadata names {path}, which is not a file")
        return path
    found = sorted(p for p in root.glob("*.jsonl") if not p.name.startswith("._"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(
            f"no *.jsonl metadata file directly under {root}: check the dataset's 'path' in the "
            "config, or name the file under options.metadata"
        )
    raise InputError(
        describe_offenders(
            f"{len(found)} *.jsonl files under {root} could be the metadata",
            found,
            hint="name the one to use in the config under options.metadata",
        )
    )


def _test_folds(root: Path, stem: str) -> dict[str, int]:
    """Return key -> k for every key listed in a ``fold_<k>/<stem>_test_fold_<k>.jsonl``."""
    fold_of: dict[str, int] = {}
    twice, keyless = [], []
    pattern = re.compile(rf"{re.escape(stem)}_test_fold_(\d+)\.jsonl")
    for path in sorted(root.glob(f"fold_*/{stem}_test_fold_*.jsonl")):
        if not (match := pattern.fullmatch(path.name)):
            continue
        for where, record in _read_jsonl(path):
            key, fold = record.get("key"), int(match[1])
            if key is None:
                keyless.append(where)
            elif str(key) in fold_of and fold_of[str(key)] != fold:
                twice.append(f"{key} (test folds {fold_of[str(key)]} and {fold})")
            else:
                fold_of[str(key)] = fold
    raise_if_any("{n} fold line(s) have no 'key'", keyless)
    raise_if_any("{n} utterance(s) are in the test set of more than one fold", twice)
    return fold_of


def _row(record: dict, base: Path) -> dict:
    key, wav = str(record["key"]), str(record["wav"])
    candidates = (key, key.rsplit("-", 1)[-1], PurePosixPath(wav.replace("\\", "/")).stem)
    parsed = next((p for name in candidates if (p := parse_utterance_name(name))), None) or {}
    speaker = record.get("spk", record.get("speaker"))
    gender = record.get("gender")
    return {
        "utt_id": key,
        # an absolute wav path replaces base; normpath folds "../" without resolving symlinks
        "source": os.path.normpath(base / Path(wav).expanduser()),
        "speaker": parsed.get("speaker", None if speaker is None else str(speaker)),
        "session": record.get("session", parsed.get("session")),
        "gender": GENDER_SPELLINGS.get(str(gender).strip().lower(), "?") if gender else parsed.get("gender"),
        "raw_label": str(record["emo"]),
        "group": parsed.get("group"),
        "listed_speaker": speaker,
    }


def scan(root: Path, options: dict) -> pd.DataFrame:
    """One row per line of the metadata file, with the EmoBox test fold of each utterance."""
    root = Path(root).expanduser().absolute()
    options = dict(options or {})
    if root.is_file():
        options.setdefault("metadata", root.name)
        root = root.parent
    if not root.is_dir():
        raise InputError(f"{root} is not a folder: check the dataset's 'path' in the config")
    metadata = _metadata_file(root, options)
    base = root / Path(options.get("audio_root") or ".").expanduser()
    records = _read_jsonl(metadata)

    lacking = [f"{w}: no {k!r}" for w, r in records for k in ("key", "wav", "emo") if r.get(k) in (None, "")]
    raise_if_any("{n} metadata line(s) lack a required field (key, wav, emo)", lacking)
    raise_if_any(
        "{n} metadata line(s) cut a segment out of a longer recording (start_time/end_time), "
        "which loralens does not support",
        [w for w, r in records if "start_time" in r or "end_time" in r],
    )
    if not records:
        return finish_scan([], metadata, "emobox")
    frame = pd.DataFrame([_row(r, base) for _, r in records])
    where = pd.Series([w for w, _ in records])
    raise_if_any(
        "{n} metadata line(s) have no speaker",
        where[frame["speaker"].isna()],
        hint=f"add a 'spk' field to each line of {metadata}, "
        "or write a CSV manifest and use layout 'generic'",
    )
    raise_if_any(
        "{n} metadata line(s) have a gender other than F/M/female/male", where[frame["gender"] == "?"]
    )
    # A key on two lines is reported by the manifest builder, with the corpus's other problems.
    overridden = frame["listed_speaker"].notna() & (frame["listed_speaker"].astype(str) != frame["speaker"])
    if overridden.any():
        log.warning(
            "%s: %d line(s) list a spk that differs from the speaker in their IEMOCAP utterance name; "
            "using the name (EmoBox's spk for IEMOCAP is the dialog prefix)",
            metadata,
            int(overridden.sum()),
        )

    folds = _test_folds(root, metadata.stem)
    raise_if_any(
        "{n} key(s) in the fold test files are not in the metadata file",
        sorted(folds.keys() - set(frame["utt_id"])),
        hint=f"the fold files under {root} and {metadata} must come from the same EmoBox release",
    )
    if folds:
        frame["source_fold"] = frame["utt_id"].map(folds)
    if frame["group"].isna().all():
        frame = frame.drop(columns="group")
    return finish_scan(frame, root, "emobox")
