"""Manifest building: label mapping and every bad-input case, on a generic-layout corpus."""

import numpy as np
import pandas as pd
import pytest
import soundfile

from conftest import dataset_spec, write_generic_corpus
from workflow_scripts.data.manifest import MANIFEST_COLUMNS, build_manifest, main
from workflow_scripts.errors import InputError


def test_manifest_columns_order_and_values(generic_corpus):
    manifest, rejected = build_manifest("toy", dataset_spec(generic_corpus))
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 32 and rejected.empty
    assert manifest["utt_id"].is_monotonic_increasing
    row = manifest.set_index("utt_id").loc["s2_angry_1"]
    assert row["speaker"] == "s2" and row["label"] == "angry" and row["gender"] == "F"
    assert row["sample_rate"] == 16000
    assert row["duration_s"] == pytest.approx(0.25)
    assert row["source"].endswith("wav/s2_angry_1.wav")


def test_label_map_renames_and_drops(tmp_path):
    root = write_generic_corpus(tmp_path / "c", labels=("neu", "hap", "exc", "ang", "sad", "fru"), per_label=1)
    spec = dataset_spec(root, label_map={"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry",
                                         "sad": "sad", "fru": None})
    manifest, _ = build_manifest("toy", spec)
    assert manifest["label"].value_counts().to_dict() == {"happy": 8, "neutral": 4, "angry": 4, "sad": 4}


def test_unknown_label_is_named_with_the_key(tmp_path):
    root = write_generic_corpus(tmp_path / "c", labels=("neutral", "happy", "angry", "sad", "bored"), per_label=1)
    with pytest.raises(InputError) as error:
        build_manifest("toy", dataset_spec(root))
    message = str(error.value)
    assert "4 utterances have a label that datasets.toy.label_map does not mention" in message
    assert "s1_bored_0: 'bored'" in message


def test_label_mapped_outside_classes_is_refused(generic_corpus):
    with pytest.raises(InputError, match=r"maps to 1 class names that are not in datasets\.toy\.classes.*\n  - calm"):
        build_manifest("toy", dataset_spec(generic_corpus, label_map={"sad": "calm"}))


def test_duplicate_ids_are_listed(generic_corpus):
    table = pd.read_csv(generic_corpus / "manifest.csv")
    table.loc[1, "utt_id"] = table.loc[0, "utt_id"]
    table.to_csv(generic_corpus / "manifest.csv", index=False)
    with pytest.raises(InputError, match=r"2 row\(s\) share an utt_id.*\n  - .*manifest.csv:2: s1_neutral_0\n"):
        build_manifest("toy", dataset_spec(generic_corpus))


def break_clips(root):
    """Missing, corrupt, empty and NaN clips: one of each."""
    (root / "wav" / "s1_happy_0.wav").unlink()
    (root / "wav" / "s2_happy_0.wav").write_bytes(b"not a wav file at all")
    soundfile.write(root / "wav" / "s3_happy_0.wav", np.zeros(0, dtype=np.float32), 16000)
    soundfile.write(root / "wav" / "s4_happy_0.wav", np.full(50, np.nan, dtype=np.float32), 16000, subtype="FLOAT")


def test_bad_audio_stops_with_every_offender_named(generic_corpus):
    break_clips(generic_corpus)
    with pytest.raises(InputError) as error:
        build_manifest("toy", dataset_spec(generic_corpus))
    message = str(error.value)
    assert message.startswith("4 clips of dataset 'toy' cannot be used:")
    assert "s1_happy_0" in message and "file not found" in message
    assert "s2_happy_0" in message and "unreadable or corrupt" in message
    assert "s3_happy_0" in message and "zero-length" in message
    assert "s4_happy_0" in message and "all samples are NaN" in message
    assert "datasets.toy.on_bad_audio: skip" in message


def test_skip_mode_drops_and_lists_bad_clips(generic_corpus, tmp_path, capsys):
    break_clips(generic_corpus)
    spec = dataset_spec(generic_corpus, on_bad_audio="skip")
    manifest, rejected = build_manifest("toy", spec)
    assert len(manifest) == 28
    assert sorted(rejected["utt_id"]) == ["s1_happy_0", "s2_happy_0", "s3_happy_0", "s4_happy_0"]
    # The entry point writes both files; a failing run writes neither.
    import json

    out = tmp_path / "out"
    main(["--dataset", "toy", "--spec", json.dumps(spec), "--manifest", str(out / "m.parquet"),
          "--rejected", str(out / "rejected.csv")])
    assert len(pd.read_csv(out / "rejected.csv")) == 4
    assert len(pd.read_parquet(out / "m.parquet")) == 28


def test_failed_run_leaves_no_output(generic_corpus, tmp_path):
    import json

    break_clips(generic_corpus)
    out = tmp_path / "out"
    with pytest.raises(InputError):
        main(["--dataset", "toy", "--spec", json.dumps(dataset_spec(generic_corpus)),
              "--manifest", str(out / "m.parquet"), "--rejected", str(out / "rejected.csv")])
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_corpus_root_names_the_key(tmp_path):
    with pytest.raises(InputError, match=r"datasets\.toy\.path: .*nowhere does not exist"):
        build_manifest("toy", dataset_spec(tmp_path / "nowhere"))


def test_cli_prints_input_errors_without_traceback(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.data.manifest", "--dataset", "toy",
         "--spec", '{"layout": "generic", "path": "/nonexistent", "classes": ["a", "b"]}',
         "--manifest", str(tmp_path / "m.parquet"), "--rejected", str(tmp_path / "r.csv")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "error: datasets.toy.path: /nonexistent does not exist" in result.stderr
    assert "Traceback" not in result.stderr


# --- every layout through the manifest builder -------------------------------------------


def test_iemocap_release_gives_the_four_class_manifest(tmp_path):
    from corpus_fixtures import make_iemocap

    root = make_iemocap(tmp_path / "IEMOCAP_full_release")
    spec = dataset_spec(root, layout="iemocap", on_bad_audio="skip")
    manifest, rejected = build_manifest("iemocap", spec)
    # fru and xxx are dropped by the standard map, exc joins happy, one labelled wav is missing.
    assert manifest.set_index("utt_id")["label"].to_dict() == {
        "Ses01F_impro01_F000": "neutral",
        "Ses01F_impro01_M011": "angry",
        "Ses01M_script02_2_F013": "happy",
        "Ses03M_script02_2_F013": "happy",
    }
    assert manifest.set_index("utt_id").loc["Ses01F_impro01_M011", ["speaker", "group", "session"]].tolist() == [
        "Ses01M", "Ses01F", "Ses01"]
    assert rejected["utt_id"].tolist() == ["Ses01M_script02_2_M000"]
    assert "file not found" in rejected["reason"].iloc[0]


def test_hf_dataset_dict_decodes_embedded_audio(tmp_path):
    from corpus_fixtures import make_hf_dataset_dict

    root = make_hf_dataset_dict(tmp_path / "hf")
    manifest, rejected = build_manifest("iemocap_hf", dataset_spec(root, layout="hf_dataset"))
    assert rejected.empty
    assert manifest["label"].value_counts().to_dict() == {"neutral": 2, "angry": 1, "happy": 1, "sad": 1}
    assert manifest["source"].str.contains("::").all()
    assert (manifest["duration_s"] > 0).all() and (manifest["sample_rate"] == 16000).all()


@pytest.mark.parametrize("layout", ["ravdess", "crema_d", "emobox", "generic"])
def test_other_layouts_build_a_manifest(tmp_path, layout):
    import corpus_fixtures as fx

    if layout == "emobox":
        root = fx.make_emobox(tmp_path / "meta", tmp_path / "audio")
        options = {"audio_root": str(tmp_path / "audio")}
    else:
        root = {"ravdess": fx.make_ravdess, "crema_d": fx.make_crema_d, "generic": fx.make_generic}[layout](
            tmp_path / "corpus")
        options = {}
    from workflow_scripts.data.layouts import get_layout

    scan = get_layout(layout).scan(root, options)
    manifest, rejected = build_manifest(layout, dataset_spec(root, layout=layout, options=options))
    assert rejected.empty and len(manifest) > 0
    assert set(manifest["label"]) <= {"neutral", "happy", "angry", "sad"}
    assert set(manifest["utt_id"]) <= set(scan["utt_id"])
