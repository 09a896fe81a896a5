"""The IEMOCAP release tree as USC distributes it.

Layout (``datasets.<name>.path`` points at ``IEMOCAP_full_release``)::

    Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M011.wav
    Session1/dialog/EmoEvaluation/Ses01F_impro01.txt

Each EmoEvaluation file holds one tab-separated line per utterance,
``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``; the
annotator lines around it (``C-E1:``, ``A-F1:``, ``%``) are ignored. The speaker of
``Ses01F_impro01_M011`` is ``Ses01M``: session plus the gender letter of the *utterance*
suffix. The dialog prefix ``Ses01F`` names the actor who wore the motion-capture markers, not
the one speaking; it is kept as ``group`` for the legacy fold protocol.

Options: ``sessions``: list of session numbers to include (default: all).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from workflow_scripts.data.layouts import FOUR_CLASSES, finish_scan
from workflow_scripts.errors import InputError, raise_if_any

DESCRIPTION = "IEMOCAP release tree (SessionN/sentences/wav + dialog/EmoEvaluation)"

DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "happy",  # the usual 4-class protocol merges excitement into happiness
    "ang": "angry",
    "sad": "sad",
    "fru": None,
    "sur": None,
    "fea": None,
    "dis": None,
    "oth": None,
    "xxx": None,  # annotators did not agree
}
DEFAULT_CLASSES: tuple[str, ...] | None = FOUR_CLASSES

log = logging.getLogger(__name__)

# Ses01F_impro01_M011, Ses03M_script02_2_F013, Ses03M_impro05a_F000
_UTTERANCE = re.compile(r"(?P<session>Ses\d{2})(?P<dialog_gender>[FM])_(?P<scene>.+)_(?P<gender>[FM])\d{3}")
_SESSION_DIR = re.compile(r"Session(\d+)")


def parse_utterance_name(name: str) -> dict[str, str] | None:
    """Split an IEMOCAP utterance name into speaker, session, gender, group and dialog.

    >>> parse_utterance_name("Ses01F_impro01_M011")["speaker"]
    'Ses01M'

    Returns ``None`` when ``name`` is not an IEMOCAP utterance name.
    """
    match = _UTTERANCE.fullmatch(name)
    if match is None:
        return None
    session, gender = match["session"], match["gender"]
    group = session + match["dialog_gender"]
    return {
        "speaker": session + gender,
        "session": session,
        "gender": gender,
        "group": group,
        "dialog": f"{group}_{match['scene']}",
    }


def _visible(path: Path) -> bool:
    # macOS copies leave AppleDouble "._name" files next to the real ones.
    return not path.name.startswith("._")


def _session_dirs(root: Path, options: dict) -> list[Path]:
    if not root.is_dir():
        raise InputError(f"{root} is not a folder: check the dataset's 'path' in the config")
    found = {int(m[1]): p for p in root.iterdir() if p.is_dir() and (m := _SESSION_DIR.fullmatch(p.name))}
    if not found:
        raise InputError(
            f"no SessionN folders under {root}: an IEMOCAP corpus root holds Session1 ... Session5; "
            "check 'path' (and 'layout') of this dataset in the config"
        )
    wanted = options.get("sessions")
    if wanted is None:
        return [found[n] for n in sorted(found)]
    try:
        wanted = [int(n) for n in wanted]
    except (TypeError, ValueError):
        raise InputError(
            f"options.sessions must be a list of session numbers such as [1, 2], got {wanted!r}"
        ) from None
    raise_if_any(
        f"options.sessions names {{n}} session(s) that are not under {root}",
        [f"Session{n}" for n in wanted if n not in found],
        hint=f"sessions present: {sorted(found)}",
    )
    return [found[n] for n in sorted(set(wanted))]


def _read_labels(session_dir: Path) -> dict[str, tuple[str, str]]:
    """Return utterance -> (raw label, 'file:line') from one session's EmoEvaluation files."""
    labels: dict[str, tuple[str, str]] = {}
    duplicates, unparsable = [], []
    folder = session_dir / "dialog" / "EmoEvaluation"
    # Only the top-level *.txt files: the Categorical/, Attribute/ ... subfolders hold the
    # individual annotators' votes, not the consensus label.
    for txt in sorted(p for p in folder.glob("*.txt") if _visible(p)):
        for number, line in enumerate(txt.read_text(errors="replace").splitlines(), start=1):
            fields = line.split("\t")
            if not line.startswith("[") or len(fields) < 3:
                continue
            utt, raw, where = fields[1].strip(), fields[2].strip(), f"{txt}:{number}"
            if parse_utterance_name(utt) is None:
                unparsable.append(f"{where}: {utt!r}")
            elif utt in labels:
                duplicates.append(f"{utt} ({labels[utt][1]} and {where})")
            else:
                labels[utt] = (raw, where)
    raise_if_any("{n} label line(s) do not name an IEMOCAP utterance like Ses01F_impro01_F000", unparsable)
    raise_if_any("{n} utterance(s) are labelled more than once", duplicates)
    return labels


def scan(root: Path, options: dict) -> pd.DataFrame:
    """One row per labelled utterance under ``root``; wavs without a label line are skipped."""
    root = Path(root).expanduser().absolute()
    options = options or {}
    rows, unlabelled = [], 0
    for session_dir in _session_dirs(root, options):
        labels = _read_labels(session_dir)
        wav_dir = session_dir / "sentences" / "wav"
        wavs = {p.stem: p for p in wav_dir.glob("*/*") if p.suffix.lower() == ".wav" and _visible(p)}
        unlabelled += len(wavs.keys() - labels.keys())
        for utt, (raw, _) in labels.items():
            parsed = parse_utterance_name(utt)
            # A labelled utterance keeps its row even when the wav is missing: the validation
            # step reports missing files instead of the corpus shrinking silently.
            source = wavs.get(utt, wav_dir / parsed["dialog"] / f"{utt}.wav")
            rows.append(
                {
                    "utt_id": utt,
                    "source": str(source),
                    "speaker": parsed["speaker"],
                    "session": parsed["session"],
                    "gender": parsed["gender"],
                    "raw_label": raw,
                    "group": parsed["group"],
                }
            )
    if unlabelled:
        log.warning("%s: %d wav file(s) have no line in any EmoEvaluation file; ignored", root, unlabelled)
    return finish_scan(rows, root, "iemocap")
