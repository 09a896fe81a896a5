import pytest
from corpus_fixtures import make_generic, write_wav

from workflow_scripts.data.layouts import SCAN_COLUMNS
from workflow_scripts.data.layouts.generic import DEFAULT_LABEL_MAP, scan
from workflow_scripts.errors import InputError


def _facts(frame):
    """utt_id -> (source, speaker, session, gender, raw_label), with None for <NA>."""
    frame = frame.astype(object).where(frame.notna(), None)
    columns = [frame[c].tolist() for c in ["source", "speaker", "session", "gender", "raw_label"]]
    return {utt: tuple(values) for utt, *values in zip(frame["utt_id"].tolist(), *columns)}


def test_csv_manifest_in_a_folder(tmp_path):
    root = make_generic(tmp_path / "corpus")
    frame = scan(root, {})
    assert list(frame.columns) == SCAN_COLUMNS
    assert _facts(frame) == {
        "spk1_001": (str(root / "clips/a/spk1_001.wav"), "spk1", "s1", "F", "angry"),
        "spk1_002": (str(root / "clips/a/spk1_002.wav"), "spk1", "s1", "F", "sad"),
        "spk2_001": (str(root / "clips/b/spk2_001.wav"), "spk2", None, "M", "neutral"),
    }
    assert DEFAULT_LABEL_MAP == {}


def test_tsv_file_with_absolute_path_and_utt_ids(tmp_path):
    elsewhere = write_wav(tmp_path / "elsewhere" / "take.wav")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "list.tsv").write_text(
        "utt_id\tpath\tlabel\tspeaker\tsource_fold\tgroup\n"
        f"u1\t{elsewhere}\thappy\tA\t2\tg1\n"
        "u2\t../elsewhere/./take.wav\tsad, very\tB\t\tg2\n"
    )
    frame = scan(tmp_path / "m" / "list.tsv", {})
    assert list(frame.columns) == SCAN_COLUMNS + ["group", "source_fold"]
    assert frame["source"].tolist() == [str(elsewhere), str(elsewhere)]  # normalised, still absolute
    assert frame["raw_label"].tolist() == ["happy", "sad, very"]
    assert frame["source_fold"].tolist()[0] == 2 and frame["source_fold"].isna().tolist() == [False, True]
    assert frame["gender"].isna().all() and frame["session"].isna().all()


def test_missing_columns_are_named(tmp_path):
    (tmp_path / "manifest.csv").write_text("file,label\nclips/a.wav,angry\n")
    with pytest.raises(InputError) as error:
        scan(tmp_path, {})
    message = str(error.value)
    assert str(tmp_path / "manifest.csv") in message
    assert "lacks the required column(s) ['path', 'speaker']" in message


def test_empty_cells_are_refused_with_line_numbers(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,speaker\na/x.wav,angry,s1\nb/y.wav,,s1\n")
    with pytest.raises(
        InputError, match=rf"1 row\(s\) of manifest.csv have an empty 'label':\n  - {manifest}:3"
    ):
        scan(tmp_path, {})


def test_duplicate_ids_are_kept_by_the_scan_and_refused_by_the_manifest_step(tmp_path):
    from conftest import dataset_spec

    from workflow_scripts.data.manifest import build_manifest

    manifest = tmp_path / "manifest.csv"
    for name in ("a/x.wav", "b/y.wav", "b/x.wav"):
        write_wav(tmp_path / name)
    manifest.write_text("path,label,speaker\na/x.wav,angry,s1\nb/y.wav,sad,s1\nb/x.wav,sad,s2\n")
    assert scan(tmp_path, {})["utt_id"].tolist() == ["x", "y", "x"]
    with pytest.raises(InputError) as error:
        build_manifest("toy", dataset_spec(tmp_path, classes=["angry", "sad"]))
    message = str(error.value)
    assert (
        f"1. 2 rows of {tmp_path} share an utterance id with another row (ids must be unique):\n"
        f"  - x: {tmp_path / 'a' / 'x.wav'}\n  - x: {tmp_path / 'b' / 'x.wav'}\n"
    ) in message
    assert "give each row of the manifest its own 'utt_id'" in message


def test_bad_gender_and_fold_values_are_refused(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,speaker,gender\na.wav,angry,s1,X\n")
    with pytest.raises(InputError, match=rf"gender other than F/M/female/male or empty:\n  - {manifest}:2"):
        scan(tmp_path, {})
    manifest.write_text("path,label,speaker,source_fold\na.wav,angry,s1,1.5\n")
    with pytest.raises(InputError, match="source_fold that is not a whole number"):
        scan(tmp_path, {})


def test_folder_without_manifest_or_with_two(tmp_path):
    with pytest.raises(InputError, match=r"has no manifest\.csv or manifest\.tsv"):
        scan(tmp_path, {})
    make_generic(tmp_path)
    make_generic(tmp_path, sep="\t", name="manifest.tsv")
    with pytest.raises(InputError, match="both manifest.csv and manifest.tsv"):
        scan(tmp_path, {})


def test_spreadsheet_byte_order_mark_and_short_rows(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes("path,label,speaker\na.wav,angry,s1\nb.wav,sad\n".encode("utf-8-sig"))
    with pytest.raises(InputError, match=rf"have an empty 'speaker':\n  - {manifest}:3"):
        scan(tmp_path, {})


def test_config_without_classes_is_refused_naming_the_key_and_layout(tmp_path):
    from conftest import layout_spec

    with pytest.raises(InputError, match=r"datasets\.x\.classes: required for layout 'generic', "
                                         r"which has no standard class set"):
        layout_spec(tmp_path, "generic")
