import logging

import pytest
from corpus_fixtures import IEMOCAP_MISSING_WAV, make_iemocap, write_wav

from workflow_scripts.data.layouts import SCAN_COLUMNS, get_layout
from workflow_scripts.data.layouts.iemocap import DEFAULT_LABEL_MAP, parse_utterance_name, scan
from workflow_scripts.errors import InputError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_iemocap(tmp_path_factory.mktemp("IEMOCAP_full_release"))


def test_parse_utterance_name_takes_speaker_from_the_utterance_suffix():
    assert parse_utterance_name("Ses01F_impro01_M011") == {
        "speaker": "Ses01M",
        "session": "Ses01",
        "gender": "M",
        "group": "Ses01F",
        "dialog": "Ses01F_impro01",
    }
    script = parse_utterance_name("Ses03M_script02_2_F013")
    assert (script["speaker"], script["group"], script["dialog"]) == ("Ses03F", "Ses03M", "Ses03M_script02_2")
    assert parse_utterance_name("Ses05F_impro05a_M021")["dialog"] == "Ses05F_impro05a"
    for bad in ["Ses01F_impro01", "ses01F_impro01_F000", "Ses01X_impro01_F000", "Ses01F_impro01_F000.wav"]:
        assert parse_utterance_name(bad) is None, bad


def test_scan_lists_every_labelled_utterance_with_the_true_speaker(corpus):
    frame = scan(corpus, {}).set_index("utt_id")
    assert list(scan(corpus, {}).columns) == SCAN_COLUMNS + ["group"]
    expected = {
        # utt: (speaker, session, gender, raw_label, group)
        "Ses01F_impro01_F000": ("Ses01F", "Ses01", "F", "neu", "Ses01F"),
        "Ses01F_impro01_M011": ("Ses01M", "Ses01", "M", "ang", "Ses01F"),
        "Ses01F_impro01_F001": ("Ses01F", "Ses01", "F", "fru", "Ses01F"),
        "Ses01M_script02_2_F013": ("Ses01F", "Ses01", "F", "exc", "Ses01M"),
        "Ses01M_script02_2_M000": ("Ses01M", "Ses01", "M", "sad", "Ses01M"),
        "Ses03M_script02_2_F013": ("Ses03F", "Ses03", "F", "hap", "Ses03M"),
        "Ses03M_script02_2_M001": ("Ses03M", "Ses03", "M", "xxx", "Ses03M"),
    }
    assert sorted(frame.index) == sorted(expected)
    got = {u: tuple(frame.loc[u, ["speaker", "session", "gender", "raw_label", "group"]]) for u in expected}
    assert got == expected
    assert frame.loc["Ses03M_script02_2_F013", "source"] == str(
        corpus / "Session3" / "sentences" / "wav" / "Ses03M_script02_2" / "Ses03M_script02_2_F013.wav"
    )
    assert all(str(s).startswith("/") for s in frame["source"])
    assert frame["speaker"].dtype == "string"


def test_labelled_utterance_without_wav_keeps_its_row(corpus):
    frame = scan(corpus, {}).set_index("utt_id")
    source = corpus / "Session1" / "sentences" / "wav" / "Ses01M_script02_2" / f"{IEMOCAP_MISSING_WAV}.wav"
    assert frame.loc[IEMOCAP_MISSING_WAV, "source"] == str(source)
    assert not source.exists()


def test_unlabelled_wav_is_ignored_with_a_counted_warning(corpus, caplog):
    with caplog.at_level(logging.WARNING):
        frame = scan(corpus, {})
    assert "Ses01F_impro01_M099" not in set(frame["utt_id"])
    assert "1 wav file(s) have no line" in caplog.text


def test_sessions_option_selects_sessions(corpus):
    frame = scan(corpus, {"sessions": [3]})
    assert sorted(frame["utt_id"]) == ["Ses03M_script02_2_F013", "Ses03M_script02_2_M001"]
    with pytest.raises(InputError, match=r"Session2"):
        scan(corpus, {"sessions": [1, 2]})


def test_default_label_map_keeps_the_four_class_protocol():
    kept = {raw: name for raw, name in DEFAULT_LABEL_MAP.items() if name is not None}
    assert kept == {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
    assert {raw for raw, name in DEFAULT_LABEL_MAP.items() if name is None} == {
        "fru",
        "sur",
        "fea",
        "dis",
        "oth",
        "xxx",
    }


def test_get_layout_finds_the_module():
    assert get_layout("iemocap").scan is scan


def test_root_without_sessions_is_refused(tmp_path):
    write_wav(tmp_path / "Ses01F_impro01_F000.wav")
    with pytest.raises(InputError, match=r"no SessionN folders under .*'path'"):
        scan(tmp_path, {})


def test_label_line_with_a_foreign_name_is_refused(tmp_path):
    emo = tmp_path / "Session1" / "dialog" / "EmoEvaluation"
    emo.mkdir(parents=True)
    (emo / "Ses01F_impro01.txt").write_text("[1.0000 - 2.0000]\tSpeaker7_take3\tneu\t[2.5, 2.5, 2.5]\n")
    with pytest.raises(InputError) as error:
        scan(tmp_path, {})
    assert f"{emo / 'Ses01F_impro01.txt'}:1: 'Speaker7_take3'" in str(error.value)


def test_utterance_labelled_twice_is_refused(tmp_path):
    emo = tmp_path / "Session1" / "dialog" / "EmoEvaluation"
    emo.mkdir(parents=True)
    line = "[1.0000 - 2.0000]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n"
    (emo / "Ses01F_impro01.txt").write_text(line)
    (emo / "Ses01F_impro01_copy.txt").write_text(line)
    with pytest.raises(InputError, match="1 utterance\\(s\\) are labelled more than once"):
        scan(tmp_path, {})


def test_session_without_labels_gives_an_empty_corpus_error(tmp_path):
    write_wav(tmp_path / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F000.wav")
    with pytest.raises(InputError, match="no utterances found for layout 'iemocap'"):
        scan(tmp_path, {})


def test_config_without_classes_gets_the_standard_four_and_builds_a_manifest(corpus):
    from conftest import layout_spec

    from workflow_scripts.data.manifest import build_manifest

    spec = layout_spec(corpus, "iemocap", on_bad_audio="skip")
    assert spec["classes"] == ["angry", "happy", "neutral", "sad"]  # the paper's label order
    # every default class is a target of the layout's standard map
    assert set(spec["classes"]) == {c for c in DEFAULT_LABEL_MAP.values() if c}
    manifest, rejected = build_manifest("x", spec)  # its one sad clip is missing, hence skip
    assert set(manifest["label"]) | {"sad"} == set(spec["classes"])
    assert rejected["utt_id"].tolist() == [IEMOCAP_MISSING_WAV]
