"""A Hugging Face dataset on disk with IEMOCAP utterances, such as ``Zahra99/IEMOCAP_Audio``.

Columns: ``audio`` (struct ``{bytes, path}``, ``path`` the original file name such as
``Ses01F_impro01_M011.wav``) and ``label`` (ClassLabel: an integer whose names are kept in
the dataset's metadata; a plain string column is taken as the label itself). Accepted on disk:

* ``Dataset.save_to_disk`` folder: ``state.json``, ``dataset_info.json``,
  ``data-00000-of-00001.arrow`` (Arrow IPC stream files);
* ``DatasetDict.save_to_disk`` folder: ``dataset_dict.json`` and one such folder per split
  (``session1/`` ... ``session5/``);
* Parquet: one file, or a folder searched recursively, e.g. the hub's
  ``data/session1-00000-of-00001.parquet``.

Label names come from the files' ``huggingface`` schema metadata (``info.features.label.names``),
then ``dataset_info.json``, then ``options.label_names``. Speaker, session, gender and group
are parsed from ``audio.path`` exactly as in the ``iemocap`` layout. Audio stays in the files:
``source`` is ``<file>::<row>``. This module reads with pyarrow only; importing ``datasets``
would pull in its audio decoder.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workflow_scripts.data.layouts import FOUR_CLASSES, IEMOCAP_LABEL_SPELLINGS, finish_scan
from workflow_scripts.data.layouts.iemocap import parse_utterance_name
from workflow_scripts.errors import InputError, raise_if_any

DESCRIPTION = "Hugging Face dataset (save_to_disk folder or Parquet) with IEMOCAP audio and a ClassLabel"

DEFAULT_LABEL_MAP: dict[str, str | None] = dict(IEMOCAP_LABEL_SPELLINGS)
# Only IEMOCAP file names are accepted (the speaker is read from them): IEMOCAP's 4 classes.
DEFAULT_CLASSES: tuple[str, ...] | None = FOUR_CLASSES


def _names_from_metadata(metadata: dict | None) -> list[str] | None:
    try:
        info = json.loads(metadata[b"huggingface"])["info"]
        return list(info["features"]["label"]["names"])
    except (TypeError, KeyError, ValueError):
        return None


def _names_from_info(folder: Path) -> list[str] | None:
    try:
        info = json.loads((folder / "dataset_info.json").read_text())
        return list(info["features"]["label"]["names"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _check_schema(schema: pa.Schema, file: Path) -> None:
    if "audio" not in schema.names or "label" not in schema.names:
        raise InputError(
            f"{file} has columns {schema.names}; the hf_dataset layout needs 'audio' and 'label'"
        )
    audio = schema.field("audio").type
    if not pa.types.is_struct(audio) or audio.get_field_index("path") < 0:
        raise InputError(f"{file}: column 'audio' is {audio}, not a struct {{bytes, path}}")


def _read(file: Path) -> tuple[list, pa.DataType, list, dict | None]:
    """Return (audio paths, label type, labels, schema metadata) of one data file."""
    try:
        return _read_unchecked(file)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"cannot read {file} as an Arrow stream or Parquet file: {error}") from error


def _read_unchecked(file: Path) -> tuple[list, pa.DataType, list, dict | None]:
    # Neither branch copies the audio bytes: Parquet reads the nested path field alone, and the
    # Arrow IPC *stream* files that save_to_disk writes are memory-mapped.
    if file.suffix == ".parquet":
        schema = pq.read_schema(file)
        _check_schema(schema, file)
        table = pq.read_table(file, columns=["audio.path", "label"])
        paths, labels = table.column(0), table.column(1)
    else:
        with pa.memory_map(str(file)) as source:
            table = pa.ipc.open_stream(source).read_all()
        schema = table.schema
        _check_schema(schema, file)
        paths, labels = pc.struct_field(table.column("audio"), "path"), table.column("label")
    return paths.to_pylist(), labels.type, labels.to_pylist(), schema.metadata


def _data_files(root: Path) -> list[tuple[Path, Path]]:
    """Return (data file, folder holding its dataset_info.json) pairs in the dataset's order."""
    if root.is_file():
        return [(root, root.parent)]
    if (root / "dataset_dict.json").is_file():
        splits = _json_field(root / "dataset_dict.json", "splits")
        return [pair for split in splits for pair in _data_files(root / split)]
    if (root / "state.json").is_file():
        return [(root / f["filename"], root) for f in _json_field(root / "state.json", "_data_files")]
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("._"))
    if not files:
        raise InputError(
            f"{root} is not a Hugging Face dataset on disk: it has no dataset_dict.json, no "
            "state.json and no *.parquet files; point the dataset's 'path' in the config at the "
            "folder written by save_to_disk or at the Parquet files"
        )
    return [(f, f.parent) for f in files]


def _json_field(path: Path, field: str):
    """``field`` of a save_to_disk metadata file; a damaged file is an input error naming it."""
    try:
        return json.loads(path.read_text())[field]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(
            f"{path} is damaged: expected JSON with a {field!r} entry ({type(error).__name__}: {error}); "
            "write the dataset again with save_to_disk"
        ) from error


def _rows_of(file: Path, info_dir: Path, options: dict) -> list[dict]:
    paths, label_type, labels, metadata = _read(file)
    if pa.types.is_integer(label_type):
        names = _names_from_metadata(metadata) or _names_from_info(info_dir) or options.get("label_names")
        if not names:
            raise InputError(
                f"{file} stores labels as numbers but has no ClassLabel names in its metadata; "
                "list them in the config under options.label_names, in class-index order"
            )
        bad = [
            f"{file}::{i} (label {v})" for i, v in enumerate(labels) if v is None or not 0 <= v < len(names)
        ]
        raise_if_any(f"{{n}} row(s) have a label outside 0..{len(names) - 1} (names {names})", bad)
        raw = [names[v] for v in labels]
    else:
        raw = labels

    rows, problems = [], []
    for index, (path, label) in enumerate(zip(paths, raw)):
        where = f"{file}::{index}"
        if not path or label is None:
            problems.append(f"{where}: {'label' if path else 'audio.path'} is empty")
            continue
        utt = PurePosixPath(path.replace("\\", "/")).stem
        parsed = parse_utterance_name(utt)
        if parsed is None:
            problems.append(f"{where}: {path!r} is not an IEMOCAP name like Ses01F_impro01_F000.wav")
            continue
        rows.append({"utt_id": utt, "source": where, "raw_label": str(label), **parsed})
    raise_if_any(
        "{n} row(s) cannot be used: each needs a label and an IEMOCAP file name in audio.path, "
        "which is where the speaker is read from",
        problems,
        hint="the hf_dataset layout reads the speaker from IEMOCAP file names; for other corpora "
        "export a CSV manifest and use layout 'generic'",
    )
    return rows


def scan(root: Path, options: dict) -> pd.DataFrame:
    """One row per dataset row, across all splits and data files under ``root``."""
    root = Path(root).expanduser().absolute()
    options = options or {}
    if not root.exists():
        raise InputError(f"{root} does not exist: check the dataset's 'path' in the config")
    rows = [row for file, info_dir in _data_files(root) for row in _rows_of(file, info_dir, options)]
    # An utterance in two rows (or splits) is reported by the manifest builder, with the
    # corpus's other problems.
    return finish_scan(rows, root, "hf_dataset")
