"""One module per corpus layout on disk; each turns a corpus into rows of one table.

The contract every layout module keeps:

* ``scan(root: pathlib.Path, options: dict) -> pandas.DataFrame`` with exactly the columns of
  :data:`SCAN_COLUMNS` (plus :data:`OPTIONAL_COLUMNS` where the layout knows them), one row per
  utterance, in any order. ``scan`` lists and parses; it does not decode audio.
* ``DEFAULT_LABEL_MAP``: raw label -> class name, or ``None`` for raw labels that the layout's
  standard protocol drops (IEMOCAP's frustration, surprise, ...). The dataset config's
  ``label_map`` is merged over it.
* ``DEFAULT_CLASSES``: the layout's standard class set in label-index order, which a dataset
  without ``classes`` in its config gets (filled in by :func:`workflow_scripts.config.validate_config`),
  or ``None`` where the classes depend on the corpus (``generic``, ``emobox``) and the config
  must list them.
* ``DESCRIPTION``: one line for ``--help`` and error messages.

Column meanings:

``utt_id``      unique id of the utterance within the dataset (str)
``source``      where its audio is: a file path, or ``<file>::<row>`` for audio embedded in an
                Arrow/Parquet file (see :func:`workflow_scripts.data.audio.read_clip`)
``speaker``     the true speaker id (str); never a dialog or recording-group id
``session``     recording session (str) or ``<NA>`` when the corpus has none
``gender``      ``"F"``, ``"M"`` or ``<NA>`` when unknown
``raw_label``   the label as the corpus spells it (str)
``group``       optional: the original paper's grouping key (IEMOCAP dialog prefix ``Ses01F``)
``source_fold`` optional: a fold the corpus itself assigns for testing (EmoBox fold files), int
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pandas as pd

from workflow_scripts.errors import InputError

SCAN_COLUMNS = ["utt_id", "source", "speaker", "session", "gender", "raw_label"]

#: How corpora spell genders -> the manifest's "F" / "M".
GENDER_SPELLINGS = {"f": "F", "female": "F", "m": "M", "male": "M"}

#: IEMOCAP's label codes and common spellings of the 4 classes, as metadata-based layouts
#: (Hugging Face datasets, EmoBox) carry them; the other IEMOCAP codes are dropped as in the
#: standard 4-class protocol.
IEMOCAP_LABEL_SPELLINGS: dict[str, str | None] = {
    **dict.fromkeys(["ang", "anger", "angry"], "angry"),
    **dict.fromkeys(["hap", "happy", "happiness", "exc", "excited"], "happy"),
    **dict.fromkeys(["neu", "neutral"], "neutral"),
    **dict.fromkeys(["sad", "sadness"], "sad"),
    **dict.fromkeys(["fru", "sur", "fea", "dis", "oth", "xxx"], None),
}
OPTIONAL_COLUMNS = ["group", "source_fold"]

#: The standard 4-class set of IEMOCAP, and the classes RAVDESS and CREMA-D share with it, in
#: the paper's label order.
FOUR_CLASSES = ("angry", "happy", "neutral", "sad")

#: layout name in the config -> module under this package
LAYOUT_MODULES = {
    "iemocap": "iemocap",
    "hf_dataset": "hf_dataset",
    "ravdess": "ravdess",
    "crema_d": "crema_d",
    "emobox": "emobox",
    "generic": "generic",
}


def get_layout(name: str) -> ModuleType:
    """Return the layout module called ``name`` (the config's ``datasets.<name>.layout``)."""
    if name not in LAYOUT_MODULES:
        raise InputError(
            f"unknown corpus layout {name!r}; choose one of: {', '.join(sorted(LAYOUT_MODULES))}"
        )
    return importlib.import_module(f"{__name__}.{LAYOUT_MODULES[name]}")


def finish_scan(rows: list[dict] | pd.DataFrame, root: Path, layout: str) -> pd.DataFrame:
    """Give a layout's rows the contract's columns and dtypes; refuse an empty corpus."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise InputError(
            f"no utterances found for layout {layout!r} under {root}: "
            "check the dataset's 'path' and 'layout' in the config"
        )
    for column in SCAN_COLUMNS:
        if column not in frame:
            frame[column] = pd.NA
    keep = SCAN_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in frame]
    frame = frame[keep].copy()
    for column in ["utt_id", "source", "speaker", "session", "gender", "raw_label", "group"]:
        if column in frame:
            frame[column] = frame[column].astype("string")
    if "source_fold" in frame:
        frame["source_fold"] = frame["source_fold"].astype("Int64")
    return frame.reset_index(drop=True)
