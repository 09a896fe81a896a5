import pytest
from corpus_fixtures import make_ravdess, write_wav

from workflow_scripts.data.layouts import SCAN_COLUMNS
from workflow_scripts.data.layouts.ravdess import DEFAULT_LABEL_MAP, scan
from workflow_scripts.errors import InputError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_ravdess(tmp_path_factory.mktemp("ravdess"))


def _facts(frame):
    return {
        u: (s, g, r)
        for u, s, g, r in zip(frame["utt_id"], frame["speaker"], frame["gender"], frame["raw_label"])
    }


def test_default_keeps_audio_only_speech(corpus):
    frame = scan(corpus, {})
    assert list(frame.columns) == SCAN_COLUMNS
    assert _facts(frame) == {
        "03-01-01-01-01-01-01": ("Actor_01", "M", "neutral"),
        "03-01-05-02-01-01-01": ("Actor_01", "M", "angry"),
        "03-01-02-01-02-02-02": ("Actor_02", "F", "calm"),
        "03-01-08-02-02-01-02": ("Actor_02", "F", "surprised"),
        "03-01-04-01-01-01-02": ("Actor_02", "F", "sad"),
    }
    assert frame["session"].isna().all()
    sources = dict(zip(frame["utt_id"], frame["source"]))
    assert sources["03-01-04-01-01-01-02"] == str(corpus / "Actor_02" / "03-01-04-01-01-01-02.wav")


def test_options_widen_the_selection(corpus):
    songs = scan(corpus, {"vocal_channels": [1, 2]})
    assert len(songs) == 6
    assert songs.set_index("utt_id").loc["03-02-03-01-01-01-01", "raw_label"] == "happy"
    av = scan(corpus, {"modalities": [1, 3]})
    assert set(av["utt_id"]) - set(scan(corpus, {})["utt_id"]) == {"01-01-04-01-01-01-01"}
    assert len(scan(corpus, {"modalities": [1, 3], "vocal_channels": [1, 2]})) == 7


def test_selection_that_keeps_nothing_names_the_options(corpus):
    with pytest.raises(InputError, match=r"options\.modalities / options\.vocal_channels"):
        scan(corpus, {"modalities": [2]})
    with pytest.raises(InputError, match=r"options\.vocal_channels must be a list"):
        scan(corpus, {"vocal_channels": ["speech"]})


def test_malformed_names_are_listed(tmp_path):
    make_ravdess(tmp_path)
    write_wav(tmp_path / "Actor_03" / "03-01-09-01-01-01-03.wav")  # emotion 09 does not exist
    write_wav(tmp_path / "Actor_03" / "take1.wav")
    with pytest.raises(InputError) as error:
        scan(tmp_path, {})
    message = str(error.value)
    assert message.startswith("2 audio file(s) are not named like RAVDESS files")
    assert str(tmp_path / "Actor_03" / "take1.wav") in message
    assert str(tmp_path / "Actor_03" / "03-01-09-01-01-01-03.wav") in message


def test_same_file_twice_is_refused_by_the_manifest_step(tmp_path):
    from conftest import dataset_spec

    from workflow_scripts.data.manifest import build_manifest

    make_ravdess(tmp_path / "speech")
    write_wav(tmp_path / "copy" / "03-01-01-01-01-01-01.wav")
    assert (scan(tmp_path, {})["utt_id"] == "03-01-01-01-01-01-01").sum() == 2
    with pytest.raises(InputError) as error:
        build_manifest("rav", dataset_spec(tmp_path, layout="ravdess", classes=["neutral", "angry", "sad"]))
    message = str(error.value)
    assert "2 rows of" in message and "share an utterance id" in message
    assert f"03-01-01-01-01-01-01: {tmp_path / 'copy' / '03-01-01-01-01-01-01.wav'}" in message
    assert f"03-01-01-01-01-01-01: {tmp_path / 'speech' / 'Actor_01' / '03-01-01-01-01-01-01.wav'}" in message


def test_default_label_map_is_the_shared_four_classes():
    assert {k: v for k, v in DEFAULT_LABEL_MAP.items() if v} == {
        "neutral": "neutral",
        "happy": "happy",
        "sad": "sad",
        "angry": "angry",
    }
    assert {k for k, v in DEFAULT_LABEL_MAP.items() if v is None} == {
        "calm",
        "fearful",
        "disgust",
        "surprised",
    }


def test_config_without_classes_gets_the_standard_four_and_builds_a_manifest(corpus):
    from conftest import layout_spec

    from workflow_scripts.data.manifest import build_manifest

    spec = layout_spec(corpus, "ravdess", options={"vocal_channels": [1, 2]})
    assert spec["classes"] == ["angry", "happy", "neutral", "sad"]  # the paper's label order
    # every default class is a target of the layout's standard map
    assert set(spec["classes"]) == {c for c in DEFAULT_LABEL_MAP.values() if c}
    manifest, _ = build_manifest("x", spec)
    assert set(manifest["label"]) == set(spec["classes"])
