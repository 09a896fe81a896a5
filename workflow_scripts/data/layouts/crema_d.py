"""CREMA-D, the Crowd-sourced Emotional Multimodal Actors Dataset.

Layout: ``AudioWAV/1001_DFA_ANG_XX.wav`` (or the wavs directly under the root): actor id
(1001-1091), sentence code, emotion (ANG, DIS, FEA, HAP, NEU, SAD) and level (LO, MD, HI,
XX or X for unspecified). Gender comes from ``VideoDemographics.csv`` (columns ``ActorID``,
``Sex`` = Male/Female) next to ``AudioWAV`` when it is there; otherwise it is unknown.
The corpus has no sessions.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from workflow_scripts.data.layouts import FOUR_CLASSES, finish_scan
from workflow_scripts.errors import InputError, raise_if_any

DESCRIPTION = "CREMA-D (AudioWAV/1001_DFA_ANG_XX.wav, optional VideoDemographics.csv)"

DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "NEU": "neutral",
    "HAP": "happy",
    "ANG": "angry",
    "SAD": "sad",
    "DIS": None,
    "FEA": None,
}
DEFAULT_CLASSES: tuple[str, ...] | None = FOUR_CLASSES

_NAME = re.compile(r"(\d{4})_([A-Z]{3})_(ANG|DIS|FEA|HAP|NEU|SAD)_(LO|MD|HI|XX|X)")
_SEX = {"male": "M", "female": "F"}


def _genders(root: Path) -> dict[str, str]:
    """Actor id -> "F"/"M" from VideoDemographics.csv, or {} when the file is absent."""
    csv = root / "VideoDemographics.csv"
    if not csv.is_file():
        return {}
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = {"ActorID", "Sex"} - set(table.columns)
    if missing:
        raise InputError(f"{csv} lacks the column(s) {sorted(missing)}; it has {list(table.columns)}")
    sex = table["Sex"].str.strip().str.lower()
    raise_if_any(
        "{n} row(s) of VideoDemographics.csv have a Sex other than Male or Female",
        [
            f"{csv}: ActorID {a}: {s!r}"
            for a, s in zip(table["ActorID"], table["Sex"])
            if s.strip().lower() not in _SEX
        ],
    )
    return dict(zip(table["ActorID"].str.strip(), sex.map(_SEX)))


def scan(root: Path, options: dict) -> pd.DataFrame:
    """One row per CREMA-D wav file."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise InputError(f"{root} is not a folder: check the dataset's 'path' in the config")
    folder = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav" and not p.name.startswith("._"))
    raise_if_any(
        "{n} wav file(s) are not named like CREMA-D clips (1001_DFA_ANG_XX.wav)",
        [p for p in files if not _NAME.fullmatch(p.stem)],
        hint="move other audio out of the corpus folder, or check the dataset's 'layout' in the config",
    )
    genders = _genders(root)
    rows = []
    for path in files:
        actor, _, emotion, _ = _NAME.fullmatch(path.stem).groups()
        rows.append(
            {
                "utt_id": path.stem,
                "source": str(path),
                "speaker": actor,
                "session": pd.NA,
                "gender": genders.get(actor, pd.NA),
                "raw_label": emotion,
            }
        )
    return finish_scan(rows, root, "crema_d")
