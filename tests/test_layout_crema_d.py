import pandas as pd
import pytest
from corpus_fixtures import make_crema_d, write_wav

from workflow_scripts.data.layouts import SCAN_COLUMNS
from workflow_scripts.data.layouts.crema_d import DEFAULT_LABEL_MAP, scan
from workflow_scripts.errors import InputError


def _facts(frame):
    return {
        u: (s, g, r)
        for u, s, g, r in zip(frame["utt_id"], frame["speaker"], frame["gender"], frame["raw_label"])
    }


def test_audiowav_folder_with_demographics(tmp_path):
    root = make_crema_d(tmp_path)
    frame = scan(root, {})
    assert list(frame.columns) == SCAN_COLUMNS
    assert _facts(frame) == {
        "1001_DFA_ANG_XX": ("1001", "M", "ANG"),
        "1001_IEO_HAP_LO": ("1001", "M", "HAP"),
        "1002_TIE_NEU_XX": ("1002", "F", "NEU"),
        "1002_MTI_FEA_HI": ("1002", "F", "FEA"),
        "1091_IWW_SAD_X": ("1091", pd.NA, "SAD"),  # actor missing from VideoDemographics.csv
    }
    assert frame["session"].isna().all()
    sources = dict(zip(frame["utt_id"], frame["source"]))
    assert sources["1002_TIE_NEU_XX"] == str(root / "AudioWAV" / "1002_TIE_NEU_XX.wav")


def test_flat_folder_without_demographics(tmp_path):
    frame = scan(make_crema_d(tmp_path, demographics=False, flat=True), {})
    assert len(frame) == 5
    assert frame["gender"].isna().all()
    assert set(frame["speaker"]) == {"1001", "1002", "1091"}


def test_malformed_names_are_listed(tmp_path):
    root = make_crema_d(tmp_path)
    write_wav(root / "AudioWAV" / "1003_DFA_JOY_XX.wav")
    write_wav(root / "AudioWAV" / "1003_DFA_ANG.wav")
    (root / "AudioWAV" / "._1001_DFA_ANG_XX.wav").write_bytes(b"\x00")  # macOS clutter: ignored
    with pytest.raises(InputError) as error:
        scan(root, {})
    message = str(error.value)
    assert message.startswith("2 wav file(s) are not named like CREMA-D clips")
    assert str(root / "AudioWAV" / "1003_DFA_JOY_XX.wav") in message
    assert "._1001" not in message


def test_bad_demographics_are_refused(tmp_path):
    root = make_crema_d(tmp_path)
    (root / "VideoDemographics.csv").write_text("ActorID,Gender\n1001,Male\n")
    with pytest.raises(InputError, match=r"VideoDemographics\.csv lacks the column\(s\) \['Sex'\]"):
        scan(root, {})
    (root / "VideoDemographics.csv").write_text("ActorID,Sex\n1001,Male\n1002,unknown\n")
    with pytest.raises(InputError, match=r"ActorID 1002: 'unknown'"):
        scan(root, {})


def test_missing_root_names_the_config_key(tmp_path):
    with pytest.raises(InputError, match=r"is not a folder: check the dataset's 'path'"):
        scan(tmp_path / "nope", {})


def test_default_label_map():
    assert DEFAULT_LABEL_MAP == {
        "NEU": "neutral",
        "HAP": "happy",
        "ANG": "angry",
        "SAD": "sad",
        "DIS": None,
        "FEA": None,
    }


def test_config_without_classes_gets_the_standard_four_and_builds_a_manifest(tmp_path):
    from conftest import layout_spec

    from workflow_scripts.data.manifest import build_manifest

    spec = layout_spec(make_crema_d(tmp_path), "crema_d")
    assert spec["classes"] == ["angry", "happy", "neutral", "sad"]  # the paper's label order
    # every default class is a target of the layout's standard map
    assert set(spec["classes"]) == {c for c in DEFAULT_LABEL_MAP.values() if c}
    manifest, _ = build_manifest("x", spec)
    assert set(manifest["label"]) == set(spec["classes"])
