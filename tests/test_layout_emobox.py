import json
import logging

import pandas as pd
import pytest
from corpus_fixtures import make_emobox

from workflow_scripts.data.layouts import SCAN_COLUMNS
from workflow_scripts.data.layouts.emobox import DEFAULT_LABEL_MAP, scan
from workflow_scripts.errors import InputError


@pytest.fixture()
def corpus(tmp_path):
    """(metadata folder, audio root) as EmoBox leaves them: data/iemocap and the checkout."""
    checkout = tmp_path / "EmoBox"
    return make_emobox(checkout / "data" / "iemocap", checkout), checkout


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_emobox_iemocap_with_folds(corpus):
    meta, checkout = corpus
    frame = scan(meta, {"audio_root": str(checkout)})
    assert list(frame.columns) == SCAN_COLUMNS + ["group", "source_fold"]
    got = {
        u: (s, se, g, r, gr, f)
        for u, s, se, g, r, gr, f in zip(
            *(
                frame[c]
                for c in ["utt_id", "speaker", "session", "gender", "raw_label", "group", "source_fold"]
            )
        )
    }
    assert got == {
        "iemocap-Ses01F_impro04_F000": ("Ses01F", "Ses01", "F", "neu", "Ses01F", 1),
        "iemocap-Ses01F_impro04_M000": ("Ses01M", "Ses01", "M", "ang", "Ses01F", 1),
        "iemocap-Ses01M_script01_1_F004": ("Ses01F", "Ses01", "F", "sad", "Ses01M", 1),
        "iemocap-Ses02M_impro02_M010": ("Ses02M", "Ses02", "M", "hap", "Ses02M", 2),
        "iemocap-Ses02F_script03_2_F021": ("Ses02F", "Ses02", "F", "neu", "Ses02F", 2),
    }
    assert frame["source_fold"].dtype == "Int64"
    source = dict(zip(frame["utt_id"], frame["source"]))["iemocap-Ses02M_impro02_M010"]
    assert source == str(
        checkout / "downloads/iemocap/Session2/sentences/wav/Ses02M_impro02/Ses02M_impro02_M010.wav"
    )


def test_relative_audio_root_and_metadata_file_as_path(corpus):
    meta, checkout = corpus
    by_folder = scan(meta, {"audio_root": "../.."})  # relative to the metadata folder
    by_file = scan(meta / "iemocap.jsonl", {"audio_root": "../.."})
    pd.testing.assert_frame_equal(by_folder, by_file)
    wav = "downloads/iemocap/Session1/sentences/wav/Ses01F_impro04/Ses01F_impro04_F000.wav"
    assert by_folder["source"][0] == str(checkout / wav)
    # without audio_root, wav paths are relative to the metadata folder
    assert scan(meta, {})["source"][0] == str(
        meta / "downloads/iemocap/Session1/sentences/wav/Ses01F_impro04/Ses01F_impro04_F000.wav"
    )


def test_utterance_in_no_test_fold_has_no_fold(corpus):
    meta, _ = corpus
    (meta / "fold_2" / "iemocap_test_fold_2.jsonl").unlink()
    frame = scan(meta, {})
    assert frame["source_fold"].tolist() == [1, 1, 1, pd.NA, pd.NA]


def test_utterance_in_two_test_folds_is_refused(corpus):
    meta, _ = corpus
    first = (meta / "fold_1" / "iemocap_test_fold_1.jsonl").read_text().splitlines()[0]
    with open(meta / "fold_2" / "iemocap_test_fold_2.jsonl", "a") as f:
        f.write(first + "\n")
    with pytest.raises(InputError, match=r"iemocap-Ses01F_impro04_F000 \(test folds 1 and 2\)"):
        scan(meta, {})


def test_fold_key_missing_from_metadata_is_refused(corpus):
    meta, _ = corpus
    records = [json.loads(line) for line in (meta / "iemocap.jsonl").read_text().splitlines()]
    _write(meta / "iemocap.jsonl", records[1:])
    with pytest.raises(InputError, match="1 key\\(s\\) in the fold test files are not in the metadata file"):
        scan(meta, {})


def test_speaker_field_for_other_corpora_and_its_absence(tmp_path):
    records = [
        {
            "key": "cremad-1001_DFA_ANG_XX",
            "wav": "/data/cremad/1001_DFA_ANG_XX.wav",
            "emo": "ang",
            "spk": 1001,
            "gender": "male",
        },
        {
            "key": "cremad-1002_DFA_NEU_XX",
            "wav": "/data/cremad/1002_DFA_NEU_XX.wav",
            "emo": "neu",
            "speaker": "1002",
            "session": "s1",
        },
    ]
    _write(tmp_path / "cremad.jsonl", records)
    frame = scan(tmp_path, {})
    assert list(frame.columns) == SCAN_COLUMNS  # no IEMOCAP names: no group; no fold files: no source_fold
    assert frame["session"].isna().tolist() == [True, False]
    assert frame.to_dict("list") == {  # to_dict gives None for <NA>
        "utt_id": ["cremad-1001_DFA_ANG_XX", "cremad-1002_DFA_NEU_XX"],
        "source": ["/data/cremad/1001_DFA_ANG_XX.wav", "/data/cremad/1002_DFA_NEU_XX.wav"],
        "speaker": ["1001", "1002"],
        "session": [None, "s1"],
        "gender": ["M", None],
        "raw_label": ["ang", "neu"],
    }
    del records[1]["speaker"]
    _write(tmp_path / "cremad.jsonl", records)
    with pytest.raises(InputError) as error:
        scan(tmp_path, {})
    assert f"1 metadata line(s) have no speaker:\n  - {tmp_path / 'cremad.jsonl'}:2" in str(error.value)
    assert "add a 'spk' field" in str(error.value)


def test_iemocap_name_beats_emobox_dialog_prefix_spk(tmp_path, caplog):
    record = {"key": "iemocap-Ses01F_impro01_M011", "wav": "a.wav", "emo": "neu", "spk": "Ses01F"}
    _write(tmp_path / "iemocap.jsonl", [record])
    with caplog.at_level(logging.WARNING):
        frame = scan(tmp_path, {})
    assert frame["speaker"].tolist() == ["Ses01M"]
    assert "1 line(s) list a spk that differs" in caplog.text


def test_metadata_choice(tmp_path):
    with pytest.raises(InputError, match=r"no \*\.jsonl metadata file directly under"):
        scan(tmp_path, {})
    for name in ["a", "b"]:
        _write(tmp_path / f"{name}.jsonl", [{"key": f"{name}1", "wav": "x.wav", "emo": "neu", "spk": "s"}])
    with pytest.raises(
        InputError, match=r"2 \*\.jsonl files .* could be the metadata(.|\n)*options\.metadata"
    ):
        scan(tmp_path, {})
    assert scan(tmp_path, {"metadata": "b.jsonl"})["utt_id"].tolist() == ["b1"]
    with pytest.raises(InputError, match=r"options\.metadata names .*c\.jsonl"):
        scan(tmp_path, {"metadata": "c.jsonl"})


def test_broken_lines_are_refused(tmp_path):
    (tmp_path / "x.jsonl").write_text(
        '{"key": "k1", "wav": "a.wav", "emo": "neu", "spk": "s"}\n\n{"key": "k2", "wav": \n[1]\n'
    )
    with pytest.raises(InputError) as error:
        scan(tmp_path, {})
    assert str(error.value).startswith("2 line(s) are not valid JSON objects")
    assert f"{tmp_path / 'x.jsonl'}:4: not a JSON object" in str(error.value)
    _write(
        tmp_path / "x.jsonl",
        [{"key": "k1", "wav": "a.wav", "spk": "s"}, {"key": "k1", "wav": "b.wav", "emo": "sad", "spk": "s"}],
    )
    with pytest.raises(InputError, match=r"x\.jsonl:1: no 'emo'"):
        scan(tmp_path, {})


def test_duplicate_keys_are_refused_by_the_manifest_step_and_segments_by_the_scan(tmp_path):
    from conftest import dataset_spec, write_tone

    from workflow_scripts.data.manifest import build_manifest

    row = {"key": "k1", "wav": "a.wav", "emo": "neu", "spk": "s"}
    write_tone(tmp_path / "a.wav")
    _write(tmp_path / "x.jsonl", [row, row, {**row, "key": "k2", "emo": "sad"}])
    assert scan(tmp_path, {})["utt_id"].tolist() == ["k1", "k1", "k2"]
    with pytest.raises(InputError, match=rf"2 rows of {tmp_path} share an utterance id.*:\n  - k1: .*a.wav\n  - k1"):
        build_manifest("eb", dataset_spec(tmp_path, layout="emobox", classes=["neutral", "sad"]))
    _write(tmp_path / "x.jsonl", [{**row, "start_time": 0.5, "end_time": 2.0}])
    with pytest.raises(InputError, match=r"start_time/end_time"):
        scan(tmp_path, {})


def test_default_label_map_covers_emobox_iemocap_codes():
    assert {k: DEFAULT_LABEL_MAP[k] for k in ["neu", "hap", "ang", "sad", "exc"]} == {
        "neu": "neutral",
        "hap": "happy",
        "ang": "angry",
        "sad": "sad",
        "exc": "happy",
    }


def test_config_without_classes_is_refused_naming_the_key_and_layout(tmp_path):
    from conftest import layout_spec

    with pytest.raises(InputError, match=r"datasets\.x\.classes: required for layout 'emobox', "
                                         r"which has no standard class set"):
        layout_spec(tmp_path, "emobox")
