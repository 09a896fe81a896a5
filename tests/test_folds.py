"""Fold protocols on a synthetic IEMOCAP-shaped manifest (5 sessions x 2 actors, 4 classes)."""

import pandas as pd
import pytest

from workflow_scripts.data.folds import build_folds, fold_settings, make_folds
from workflow_scripts.errors import InputError

CLASSES = ["neutral", "happy", "angry", "sad"]


def iemocap_like_manifest(per_class: int = 3) -> pd.DataFrame:
    rows = []
    for session in range(1, 6):
        for dialog_gender in "FM":  # the dialog prefix: which actor wore the markers
            for speaker_gender in "FM":  # who speaks the utterance
                for label in CLASSES:
                    for k in range(per_class):
                        rows.append({
                            "utt_id": f"Ses0{session}{dialog_gender}_impro01_{speaker_gender}{label}{k}",
                            "speaker": f"Ses0{session}{speaker_gender}",
                            "session": f"Ses0{session}",
                            "gender": speaker_gender,
                            "group": f"Ses0{session}{dialog_gender}",
                            "label": label,
                        })
    return pd.DataFrame(rows)


SPEC = {"classes": CLASSES, "folds": {"protocols": ["loso_session", "loso_speaker", "legacy_dialog10", "holdout"]}}


def folds_of(manifest, protocol, spec=SPEC, name="iemocap"):
    """One protocol's fold table, as the `folds` rule builds it."""
    return build_folds(name, manifest, protocol, fold_settings(spec, protocol, name))


@pytest.fixture(scope="module")
def folds():
    """Every protocol's table of the IEMOCAP-like manifest, stacked."""
    manifest = iemocap_like_manifest()
    return pd.concat([folds_of(manifest, p) for p in SPEC["folds"]["protocols"]], ignore_index=True)


def test_a_table_holds_one_protocol():
    table = folds_of(iemocap_like_manifest(), "holdout")
    assert list(table.columns) == ["protocol", "fold", "utt_id", "split"]
    assert set(table["protocol"]) == {"holdout"}


def test_fold_settings_hold_only_what_the_protocol_uses():
    folds = {"protocols": ["loso_speaker", "holdout"], "val_fraction": 0.3, "holdout_test_fraction": 0.25,
             "seed": 1}
    spec = {"classes": CLASSES, "label_map": {}, "folds": folds}
    assert fold_settings(spec, "loso_speaker", "demo") == {"classes": CLASSES, "val_fraction": 0.3, "seed": 1}
    assert fold_settings(spec, "holdout", "demo") == {"classes": CLASSES, "val_fraction": 0.3, "seed": 1,
                                                      "holdout_test_fraction": 0.25}
    # Adding a protocol, or changing what only holdout uses, leaves loso_speaker's table as it is.
    more = {**spec, "folds": {**folds, "protocols": [*folds["protocols"], "loso_session"],
                              "holdout_test_fraction": 0.5}}
    assert fold_settings(more, "loso_speaker", "demo") == fold_settings(spec, "loso_speaker", "demo")
    with pytest.raises(InputError, match=r"datasets\.demo\.folds\.protocols: 'predefined' is not configured"):
        fold_settings(spec, "predefined", "demo")


def test_fold_counts(folds):
    n_folds = folds.groupby("protocol")["fold"].nunique().to_dict()
    assert n_folds == {"loso_session": 5, "loso_speaker": 10, "legacy_dialog10": 10, "holdout": 1}


@pytest.mark.parametrize("protocol", ["loso_session", "loso_speaker", "legacy_dialog10"])
def test_each_utterance_is_tested_exactly_once(folds, protocol):
    manifest = iemocap_like_manifest()
    tested = folds[(folds.protocol == protocol) & (folds.split == "test")]["utt_id"]
    assert tested.is_unique
    assert set(tested) == set(manifest["utt_id"])


def test_legacy_fold_one_is_the_first_dialog_prefix(folds):
    legacy = folds[(folds.protocol == "legacy_dialog10") & (folds.fold == 1) & (folds.split == "test")]
    assert legacy["utt_id"].str.startswith("Ses01F_").all()
    # ...which holds both actors of session 1: the original paper's leak.
    assert {u.split("_")[2][0] for u in legacy["utt_id"]} == {"F", "M"}


@pytest.mark.parametrize("protocol", ["loso_session", "loso_speaker", "holdout"])
def test_no_speaker_in_train_and_test_and_validation_disjoint(folds, protocol):
    speakers = iemocap_like_manifest().set_index("utt_id")["speaker"]
    for fold, rows in folds[folds.protocol == protocol].groupby("fold"):
        by_split = {s: set(speakers[rows.loc[rows.split == s, "utt_id"]]) for s in ("train", "val", "test")}
        assert by_split["train"] and by_split["val"] and by_split["test"]
        assert not by_split["train"] & by_split["test"], (protocol, fold)
        assert not by_split["train"] & by_split["val"], (protocol, fold)
        assert not by_split["val"] & by_split["test"], (protocol, fold)
        assert rows["utt_id"].is_unique  # one split per utterance per fold


def test_legacy_validation_is_disjoint_from_train_and_test(folds):
    groups = iemocap_like_manifest().set_index("utt_id")["group"]
    for _, rows in folds[folds.protocol == "legacy_dialog10"].groupby("fold"):
        by_split = {s: set(groups[rows.loc[rows.split == s, "utt_id"]]) for s in ("train", "val", "test")}
        assert not by_split["val"] & (by_split["train"] | by_split["test"])
        assert rows["utt_id"].is_unique


def test_loso_session_validation_takes_a_fifth_of_training_speakers_mixing_genders(folds):
    session = folds[folds.protocol == "loso_session"]
    speakers = iemocap_like_manifest().set_index("utt_id")["speaker"]
    for _, rows in session.groupby("fold"):
        val_speakers = set(speakers[rows.loc[rows.split == "val", "utt_id"]])
        assert len(val_speakers) == 2  # round(0.2 * 8)
        assert {s[-1] for s in val_speakers} == {"F", "M"}


def test_folds_are_deterministic_and_seeded():
    manifest = iemocap_like_manifest()
    spec = {"protocols": ["loso_session"], "seed": 0}
    a = make_folds(manifest, "loso_session", spec, "k")
    b = make_folds(manifest, "loso_session", spec, "k")
    pd.testing.assert_frame_equal(a, b)
    others = [make_folds(manifest, "loso_session", {**spec, "seed": s}, "k") for s in range(1, 6)]
    assert any(not o.equals(a) for o in others)


def test_missing_class_in_a_fold_is_named():
    manifest = iemocap_like_manifest()
    manifest = manifest[~((manifest.session == "Ses03") & (manifest.label == "sad"))]
    with pytest.raises(InputError, match=r"loso_session fold 3 test: no 'sad'"):
        folds_of(manifest, "loso_session")


def test_protocol_needing_a_missing_column_is_refused():
    manifest = iemocap_like_manifest().drop(columns=["group"])
    with pytest.raises(InputError, match=r"'legacy_dialog10' needs the manifest column 'group'"):
        folds_of(manifest, "legacy_dialog10", name="demo")
    manifest["session"] = pd.NA
    with pytest.raises(InputError, match=r"datasets\.demo\.folds\.protocols: 'loso_session' needs"):
        folds_of(manifest, "loso_session", name="demo")


def test_predefined_folds_follow_the_source():
    manifest = iemocap_like_manifest()
    manifest["source_fold"] = manifest["session"].str[-1].astype(int)
    folds = make_folds(manifest, "predefined", {}, "k")
    test1 = folds[(folds.fold == 1) & (folds.split == "test")]["utt_id"]
    assert set(test1) == set(manifest.loc[manifest.session == "Ses01", "utt_id"])


def test_a_single_validation_speaker_is_not_always_the_same_gender():
    rows = [{"utt_id": f"s{s}_{label}_{k}", "speaker": f"s{s}", "gender": "FM"[s % 2], "label": label,
             "session": pd.NA} for s in range(8) for label in CLASSES for k in range(2)]
    manifest = pd.DataFrame(rows)
    genders = set()
    for seed in range(3):
        folds = make_folds(manifest, "loso_speaker", {"val_fraction": 0.2, "seed": seed}, "k")
        val = folds[folds.split == "val"].merge(manifest, on="utt_id")
        assert (val.groupby("fold")["speaker"].nunique() == 1).all()  # round(0.2 x 7) = 1
        genders |= set(val["gender"])
    assert genders == {"F", "M"}


def test_predefined_folds_keep_the_corpus_fold_numbers():
    manifest = iemocap_like_manifest()
    manifest["source_fold"] = manifest["session"].map({"Ses01": 2, "Ses02": 5, "Ses03": 7, "Ses04": 9, "Ses05": 11})
    folds = make_folds(manifest, "predefined", {}, "k")
    assert sorted(folds["fold"].unique()) == [2, 5, 7, 9, 11]
