import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_fixtures import HF_SPLITS, hf_dataset, make_hf_dataset, make_hf_dataset_dict, make_hf_parquet

from workflow_scripts.data.layouts import SCAN_COLUMNS
from workflow_scripts.data.layouts.hf_dataset import DEFAULT_LABEL_MAP, scan
from workflow_scripts.errors import InputError

REPO = Path(__file__).resolve().parents[1]

#: utt_id -> (speaker, session, gender, raw_label, group), from HF_SPLITS and the label names
EXPECTED = {
    "Ses01F_impro01_M011": ("Ses01M", "Ses01", "M", "ang", "Ses01F"),
    "Ses01M_script02_2_F013": ("Ses01F", "Ses01", "F", "hap", "Ses01M"),
    "Ses01F_impro01_F000": ("Ses01F", "Ses01", "F", "neu", "Ses01F"),
    "Ses02M_impro03_F005": ("Ses02F", "Ses02", "F", "sad", "Ses02M"),
    "Ses02F_script01_1_M002": ("Ses02M", "Ses02", "M", "neu", "Ses02F"),
}


def _facts(frame):
    frame = frame.set_index("utt_id")
    return {
        u: tuple(frame.loc[u, ["speaker", "session", "gender", "raw_label", "group"]]) for u in frame.index
    }


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    return {
        "dataset": make_hf_dataset(base / "single"),
        "dict": make_hf_dataset_dict(base / "dict"),
        "parquet": make_hf_parquet(base / "hub"),
    }


def test_dataset_dict_folder(stores):
    root = stores["dict"]
    frame = scan(root, {})
    assert list(frame.columns) == SCAN_COLUMNS + ["group"]
    assert _facts(frame) == EXPECTED
    sources = dict(zip(frame["utt_id"], frame["source"]))
    assert sources["Ses01F_impro01_F000"] == f"{root / 'session1' / 'data-00000-of-00001.arrow'}::2"
    assert sources["Ses02M_impro03_F005"] == f"{root / 'session2' / 'data-00000-of-00001.arrow'}::0"


def test_single_dataset_folder(stores):
    frame = scan(stores["dataset"], {})
    assert _facts(frame) == {
        u: EXPECTED[u] for u in ["Ses01F_impro01_M011", "Ses01M_script02_2_F013", "Ses01F_impro01_F000"]
    }


def test_parquet_folder_and_single_file(stores):
    root = stores["parquet"]
    frame = scan(root, {})
    assert _facts(frame) == EXPECTED
    session2 = root / "data" / "session2-00000-of-00001.parquet"
    assert dict(zip(frame["utt_id"], frame["source"]))["Ses02F_script01_1_M002"] == f"{session2}::1"
    one = scan(session2, {})
    assert sorted(one["utt_id"]) == ["Ses02F_script01_1_M002", "Ses02M_impro03_F005"]


def test_source_row_points_at_the_right_audio(stores):
    """The row index in ``source`` must address the row whose path named the utterance."""
    frame = scan(stores["parquet"], {})
    for utt, source in zip(frame["utt_id"], frame["source"]):
        file, row = source.rsplit("::", 1)
        path = pq.read_table(file, columns=["audio"]).column("audio")[int(row)]["path"].as_py()
        assert Path(path).stem == utt


def _strip_metadata(src: Path, dst: Path) -> Path:
    table = pq.read_table(src)
    pq.write_table(table.replace_schema_metadata(None), dst)
    return dst


def test_parquet_without_label_names_needs_the_option(stores, tmp_path):
    bare = _strip_metadata(
        stores["parquet"] / "data" / "session1-00000-of-00001.parquet", tmp_path / "bare.parquet"
    )
    with pytest.raises(InputError, match=r"bare\.parquet stores labels as numbers.*options\.label_names"):
        scan(bare, {})
    frame = scan(bare, {"label_names": ["anger", "happiness", "neutral", "sadness"]})
    assert dict(zip(frame["utt_id"], frame["raw_label"])) == {
        "Ses01F_impro01_M011": "anger",
        "Ses01M_script02_2_F013": "happiness",
        "Ses01F_impro01_F000": "neutral",
    }


def test_label_index_out_of_range_is_refused(tmp_path):
    table = pa.table({"audio": [{"bytes": b"", "path": "Ses01F_impro01_F000.wav"}], "label": [7]})
    pq.write_table(table, tmp_path / "x.parquet")
    with pytest.raises(InputError, match=r"x\.parquet::0 \(label 7\)"):
        scan(tmp_path, {"label_names": ["ang", "hap"]})


def test_foreign_file_names_and_missing_paths_are_refused(tmp_path):
    hf_dataset([("Ses01F_impro01_F000.wav", 0), ("speaker7_take3.wav", 1), (None, 2)]).save_to_disk(
        str(tmp_path / "d")
    )
    with pytest.raises(InputError) as error:
        scan(tmp_path / "d", {})
    message = str(error.value)
    arrow = tmp_path / "d" / "data-00000-of-00001.arrow"
    assert "2 row(s) cannot be used" in message
    assert f"{arrow}::1: 'speaker7_take3.wav' is not an IEMOCAP name" in message
    assert f"{arrow}::2: audio.path is empty" in message


def test_string_label_column_is_used_as_is(tmp_path):
    table = pa.table(
        {"audio": [{"bytes": b"", "path": "/x/Ses04M_impro02_M003.wav"}], "label": ["frustrated"]}
    )
    pq.write_table(table, tmp_path / "s.parquet")
    assert _facts(scan(tmp_path, {})) == {
        "Ses04M_impro02_M003": ("Ses04M", "Ses04", "M", "frustrated", "Ses04M")
    }


def test_folder_without_a_dataset_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a Hugging Face dataset on disk"):
        scan(tmp_path, {})


def test_duplicate_utterances_across_splits_are_refused_by_the_manifest_step(tmp_path):
    from conftest import dataset_spec

    from workflow_scripts.data.manifest import build_manifest

    make_hf_dataset_dict(
        tmp_path / "d", splits={"a": [("Ses01F_impro01_F000.wav", 0)], "b": [("Ses01F_impro01_F000.wav", 1)]}
    )
    assert scan(tmp_path / "d", {})["utt_id"].tolist() == ["Ses01F_impro01_F000"] * 2
    with pytest.raises(InputError) as error:
        build_manifest("hf", dataset_spec(tmp_path / "d", layout="hf_dataset", classes=["angry", "happy"]))
    message = str(error.value)
    assert "2 rows of" in message and "share an utterance id" in message
    for split in ("a", "b"):
        assert f"Ses01F_impro01_F000: {tmp_path / 'd' / split}" in message


def test_default_label_map_spellings():
    assert {k: DEFAULT_LABEL_MAP[k] for k in ["ang", "anger", "hap", "exc", "excited", "neu", "sadness"]} == {
        "ang": "angry",
        "anger": "angry",
        "hap": "happy",
        "exc": "happy",
        "excited": "happy",
        "neu": "neutral",
        "sadness": "sad",
    }


def test_module_does_not_import_datasets(stores):
    code = (
        "import sys, json\n"
        "from workflow_scripts.data.layouts.hf_dataset import scan\n"
        f"frame = scan({str(stores['dict'])!r}, {{}})\n"
        "print(json.dumps([len(frame), 'datasets' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [sum(len(rows) for rows in HF_SPLITS.values()), False]


def test_config_without_classes_gets_the_standard_four_and_builds_a_manifest(stores):
    from conftest import layout_spec

    from workflow_scripts.data.manifest import build_manifest

    spec = layout_spec(stores["dict"], "hf_dataset")
    assert spec["classes"] == ["angry", "happy", "neutral", "sad"]  # the paper's label order
    # every default class is a target of the layout's standard map
    assert set(spec["classes"]) == {c for c in DEFAULT_LABEL_MAP.values() if c}
    manifest, _ = build_manifest("x", spec)
    assert set(manifest["label"]) == set(spec["classes"])
