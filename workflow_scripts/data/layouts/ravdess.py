"""RAVDESS, the Ryerson Audio-Visual Database of Emotional Speech and Song.

Layout: ``Actor_12/03-01-06-01-02-01-12.wav`` anywhere under the root (the release zips unpack
into ``Actor_XX`` folders). The seven fields of a name are modality (01 audio-video,
02 video-only, 03 audio-only), vocal channel (01 speech, 02 song), emotion (01 neutral,
02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised), intensity,
statement, repetition and actor (odd numbers male, even female). The corpus has no sessions.

Options: ``vocal_channels`` (default ``[1]``, speech only) and ``modalities`` (default ``[3]``,
audio-only): which files to keep.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from workflow_scripts.data.layouts import FOUR_CLASSES, finish_scan
from workflow_scripts.errors import InputError, raise_if_any

DESCRIPTION = "RAVDESS (Actor_XX/MM-VV-EE-II-SS-RR-AA.wav)"

EMOTIONS = {
    1: "neutral",
    2: "calm",
    3: "happy",
    4: "sad",
    5: "angry",
    6: "fearful",
    7: "disgust",
    8: "surprised",
}

# The four classes shared with the other corpora; map the rest in the config's label_map to use them.
DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "neutral": "neutral",
    "happy": "happy",
    "sad": "sad",
    "angry": "angry",
    "calm": None,
    "fearful": None,
    "disgust": None,
    "surprised": None,
}
DEFAULT_CLASSES: tuple[str, ...] | None = FOUR_CLASSES

_NAME = re.compile(r"(\d{2})-(0[12])-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d{2})")


def _int_list(options: dict, key: str, default: list[int]) -> set[int]:
    value = options.get(key, default)
    try:
        return {int(v) for v in ([value] if isinstance(value, (int, str)) else value)}
    except (TypeError, ValueError):
        raise InputError(
            f"options.{key} must be a list of numbers such as {default}, got {value!r}"
        ) from None


def scan(root: Path, options: dict) -> pd.DataFrame:
    """One row per kept RAVDESS file under ``root``."""
    root = Path(root).expanduser().absolute()
    options = options or {}
    channels = _int_list(options, "vocal_channels", [1])
    modalities = _int_list(options, "modalities", [3])
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav" and not p.name.startswith("._"))
    raise_if_any(
        "{n} audio file(s) are not named like RAVDESS files (03-01-06-01-02-01-12.wav)",
        [p for p in files if not _NAME.fullmatch(p.stem)],
        hint="move other audio out of the corpus folder, or check the dataset's 'layout' in the config",
    )
    # A file name found twice (a release unpacked twice) gives two rows with one utt_id; the
    # manifest builder reports them with the corpus's other problems.
    rows = []
    for path in files:
        modality, channel, emotion, _, _, _, actor = (int(f) for f in _NAME.fullmatch(path.stem).groups())
        if modality not in modalities or channel not in channels:
            continue
        rows.append(
            {
                "utt_id": path.stem,
                "source": str(path),
                "speaker": f"Actor_{actor:02d}",
                "session": pd.NA,
                "gender": "M" if actor % 2 else "F",
                "raw_label": EMOTIONS[emotion],
            }
        )
    if files and not rows:
        raise InputError(
            f"none of the {len(files)} RAVDESS files under {root} has a modality in {sorted(modalities)} "
            f"and a vocal channel in {sorted(channels)}: change options.modalities / options.vocal_channels"
        )
    return finish_scan(rows, root, "ravdess")
