"""Any corpus, described by a CSV or TSV manifest that you write.

``datasets.<name>.path`` is the manifest file, or a folder holding ``manifest.csv`` or
``manifest.tsv``. Example ``manifest.csv``::

    path,label,speaker,session,gender
    clips/spk01_0001.wav,angry,spk01,s1,F

Required columns: ``path`` (relative to the manifest's folder unless absolute), ``label``,
``speaker``. Optional: ``session``, ``gender`` (F/M/female/male), ``utt_id`` (default: the
file name without extension; must be unique, which the manifest step checks), ``group`` and
``source_fold`` (an integer fold to test each utterance in). A ``.tsv`` file is tab-separated,
anything else comma-separated.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from workflow_scripts.data.layouts import GENDER_SPELLINGS, finish_scan
from workflow_scripts.errors import InputError, raise_if_any

DESCRIPTION = "CSV/TSV manifest with columns path, label, speaker [, session, gender, utt_id]"

DEFAULT_LABEL_MAP: dict[str, str | None] = {}
DEFAULT_CLASSES: tuple[str, ...] | None = None  # any corpus: the config lists its classes

REQUIRED = ["path", "label", "speaker"]


def _manifest_file(root: Path) -> Path:
    if root.is_file():
        return root
    found = [root / name for name in ("manifest.csv", "manifest.tsv") if (root / name).is_file()]
    if len(found) == 1:
        return found[0]
    if found:
        raise InputError(
            f"{root} holds both manifest.csv and manifest.tsv: remove one, or set 'path' to the file"
        )
    if not root.exists():
        raise InputError(f"{root} does not exist: check the dataset's 'path' in the config")
    raise InputError(
        f"{root} has no manifest.csv or manifest.tsv: point the dataset's 'path' in the config at "
        "the manifest file, or at the folder holding it"
    )


def scan(root: Path, options: dict) -> pd.DataFrame:
    """One row per manifest row."""
    manifest = _manifest_file(Path(root).expanduser().absolute())
    sep = "\t" if manifest.suffix.lower() == ".tsv" else ","
    # utf-8-sig: spreadsheet programs start their CSV exports with a byte-order mark
    table = pd.read_csv(manifest, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table]
    if missing:
        raise InputError(
            f"{manifest} lacks the required column(s) {missing}; it has {list(table.columns)}. "
            f"The generic layout needs {REQUIRED}"
        )
    table = table.fillna("").apply(lambda column: column.str.strip())  # short rows read as NaN
    line = table.index + 2  # 1-based, after the header line: what an editor shows
    for column in REQUIRED:
        raise_if_any(
            f"{{n}} row(s) of {manifest.name} have an empty '{column}'",
            [f"{manifest}:{n}" for n in line[table[column] == ""]],
        )

    base = manifest.parent
    frame = pd.DataFrame(
        {
            # normpath, not resolve(): keep the user's symlinked folders as written
            "source": [os.path.normpath(base / p) for p in table["path"]],
            "speaker": table["speaker"],
            "raw_label": table["label"],
            "session": table.get("session", pd.Series("", index=table.index)).replace("", pd.NA),
        }
    )
    frame["utt_id"] = table["utt_id"] if "utt_id" in table else [Path(p).stem for p in table["path"]]
    raise_if_any(
        f"{{n}} row(s) of {manifest.name} have an empty 'utt_id'",
        [f"{manifest}:{n}" for n in line[frame["utt_id"] == ""]],
    )
    # Duplicate ids are left to the manifest builder, which reports them with the other problems.
    if "gender" in table:
        frame["gender"] = table["gender"].str.lower().map(GENDER_SPELLINGS)
        bad = table["gender"].ne("") & frame["gender"].isna()
        raise_if_any(
            "{n} row(s) have a gender other than F/M/female/male or empty",
            [f"{manifest}:{n}" for n in line[bad]],
        )
    if "group" in table:
        frame["group"] = table["group"].replace("", pd.NA)
    if "source_fold" in table:
        folds = pd.to_numeric(table["source_fold"].replace("", pd.NA), errors="coerce")
        bad = table["source_fold"].ne("") & (folds.isna() | (folds % 1 != 0))
        raise_if_any(
            "{n} row(s) have a source_fold that is not a whole number", [f"{manifest}:{n}" for n in line[bad]]
        )
        frame["source_fold"] = folds
    return finish_scan(frame, manifest, "generic")
