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


def write_ravdess(root, emotions):
    """One RAVDESS speech clip per emotion code (1 neutral, 2 calm, 3 happy, 4 sad, 5 angry, ...)."""
    from corpus_fixtures import write_wav

    for code in emotions:
        write_wav(root / "Actor_01" / f"03-01-{code:02d}-01-01-01-01.wav")
        write_wav(root / "Actor_02" / f"03-01-{code:02d}-01-01-01-02.wav")
    return root


def test_class_that_the_label_map_leaves_empty_names_the_class_and_the_map(tmp_path):
    root = write_ravdess(tmp_path / "rav", [1, 2, 3, 4, 6])  # neutral, calm, happy, sad, fearful
    classes = ["neutral", "calm", "happy", "sad"]
    with pytest.raises(InputError) as error:
        build_manifest("rav", dataset_spec(root, layout="ravdess", classes=classes))
    message = str(error.value)
    assert ("1. datasets.rav.classes names 1 class(es) that no utterance ends up in after datasets.rav.label_map "
            "(merged over the layout's standard map):\n"
            "  - 'calm': no raw label maps to it, and raw label 'calm' (2 utterances) maps to null; "
            "set datasets.rav.label_map: {calm: calm}\n") in message
    # ... and which raw labels the map sends where, null ones included.
    assert "'calm' (2) -> null, 'fearful' (2) -> null, 'happy' (2) -> happy" in message
    manifest, _ = build_manifest("rav", dataset_spec(root, layout="ravdess", classes=classes,
                                                     label_map={"calm": "calm"}))
    assert manifest["label"].value_counts().to_dict() == {"neutral": 2, "calm": 2, "happy": 2, "sad": 2}


def test_class_without_utterances_in_the_corpus_is_refused(generic_corpus):
    with pytest.raises(InputError) as error:
        build_manifest("toy", dataset_spec(generic_corpus, classes=["neutral", "happy", "angry", "sad", "bored"]))
    assert "  - 'bored': no utterance has a raw label that maps to it ('bored')\n" in str(error.value)


def test_duplicate_ids_are_listed(generic_corpus):
    table = pd.read_csv(generic_corpus / "manifest.csv")
    table.loc[1, "utt_id"] = table.loc[0, "utt_id"]
    table.to_csv(generic_corpus / "manifest.csv", index=False)
    with pytest.raises(InputError, match=r"2 rows of .* share an utterance id.*:\n  - s1_neutral_0: .*wav/s1_neutral_0.wav\n"
                                         r"  - s1_neutral_0: .*wav/s1_neutral_1.wav\n"):
        build_manifest("toy", dataset_spec(generic_corpus))


def break_clips(root):
    """Missing, corrupt, empty, NaN and digitally silent clips: one of each."""
    (root / "wav" / "s1_happy_0.wav").unlink()
    (root / "wav" / "s2_happy_0.wav").write_bytes(b"not a wav file at all")
    soundfile.write(root / "wav" / "s3_happy_0.wav", np.zeros(0, dtype=np.float32), 16000)
    soundfile.write(root / "wav" / "s4_happy_0.wav", np.full(50, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    soundfile.write(root / "wav" / "s1_sad_0.wav", np.zeros(3200, dtype=np.float32), 16000, subtype="PCM_16")


BROKEN = ["s1_happy_0", "s1_sad_0", "s2_happy_0", "s3_happy_0", "s4_happy_0"]


def test_bad_audio_stops_with_every_offender_named(generic_corpus):
    break_clips(generic_corpus)
    with pytest.raises(InputError) as error:
        build_manifest("toy", dataset_spec(generic_corpus))
    message = str(error.value)
    assert message.startswith(f"datasets.toy (layout 'generic', path {generic_corpus}): 1 kind of problem")
    assert "\n\n1. 5 clips of dataset 'toy' cannot be used:" in message
    assert "s1_happy_0" in message and "file not found" in message
    assert "s2_happy_0" in message and "unreadable or corrupt" in message
    assert "s3_happy_0" in message and "zero-length" in message
    assert "s4_happy_0" in message and "all samples are NaN" in message
    assert "s1_sad_0" in message and "digitally silent: every sample is 0" in message
    assert "datasets.toy.on_bad_audio: skip" in message


def test_skip_mode_drops_and_lists_bad_clips(generic_corpus, tmp_path, capsys):
    break_clips(generic_corpus)
    spec = dataset_spec(generic_corpus, on_bad_audio="skip")
    manifest, rejected = build_manifest("toy", spec)
    assert len(manifest) == 27
    assert sorted(rejected["utt_id"]) == BROKEN
    silent = rejected.set_index("utt_id").loc["s1_sad_0"]
    assert silent["reason"] == "digitally silent: every sample is 0"
    assert silent["source"].endswith("wav/s1_sad_0.wav")
    # The entry point writes both files; a failing run writes neither.
    import json

    out = tmp_path / "out"
    main(["--dataset", "toy", "--spec", json.dumps(spec), "--manifest", str(out / "m.parquet"),
          "--rejected", str(out / "rejected.csv")])
    assert len(pd.read_csv(out / "rejected.csv")) == 5
    assert len(pd.read_parquet(out / "m.parquet")) == 27


def test_skip_mode_with_every_clip_unusable_names_the_key_and_the_clips(tmp_path):
    root = tmp_path / "corpus"
    (root / "wav").mkdir(parents=True)
    soundfile.write(root / "wav" / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    (root / "wav" / "b.wav").write_bytes(b"not audio")
    (root / "manifest.csv").write_text("path,label,speaker\nwav/a.wav,x,s1\nwav/b.wav,y,s2\n")
    spec = dataset_spec(root, classes=["x", "y"], on_bad_audio="skip")
    with pytest.raises(InputError) as error:
        build_manifest("toy", spec)
    message = str(error.value)
    assert message.startswith("datasets.toy: every clip was unusable, so with datasets.toy.on_bad_audio: skip")
    assert "a (" in message and "digitally silent" in message and "b (" in message and "unreadable" in message


def corrupt_with_every_kind_of_problem(root):
    """A duplicate id, an unknown label, a corrupt clip and a digitally silent one."""
    table = pd.read_csv(root / "manifest.csv")
    table.loc[table["utt_id"] == "s2_neutral_1", "utt_id"] = "s2_neutral_0"
    table.loc[table["utt_id"] == "s3_sad_0", "label"] = "bored"
    table.to_csv(root / "manifest.csv", index=False)
    (root / "wav" / "s2_happy_0.wav").write_bytes(b"not a wav file at all")
    soundfile.write(root / "wav" / "s1_sad_0.wav", np.zeros(3200, dtype=np.float32), 16000, subtype="PCM_16")


def test_every_kind_of_problem_is_reported_in_one_error(generic_corpus):
    corrupt_with_every_kind_of_problem(generic_corpus)
    # The clip with the unknown label is decoded too: its audio problem is in the same report.
    (generic_corpus / "wav" / "s3_sad_0.wav").unlink()
    with pytest.raises(InputError) as error:
        build_manifest("toy", dataset_spec(generic_corpus))
    message = str(error.value)
    assert message.startswith(
        f"datasets.toy (layout 'generic', path {generic_corpus}): 3 kinds of problem, all listed here\n\n"
    )
    sections = message.split("\n\n")[1:]
    assert [section.splitlines()[0] for section in sections] == [
        f"1. 2 rows of {generic_corpus} share an utterance id with another row (ids must be unique):",
        "2. 1 utterances have a label that datasets.toy.label_map does not mention:",
        "3. 3 clips of dataset 'toy' cannot be used:",
    ]
    duplicates, labels, audio = sections
    assert duplicates.count("  - s2_neutral_0: ") == 2 and "s2_neutral_1.wav" in duplicates
    assert "s3_sad_0: 'bored'" in labels and "datasets.toy.classes" in labels
    assert "s2_happy_0" in audio and "unreadable or corrupt" in audio
    assert "s1_sad_0" in audio and "digitally silent" in audio
    assert "s3_sad_0" in audio and "file not found" in audio
    assert "datasets.toy.on_bad_audio: skip" in audio


def test_skip_mode_still_stops_on_labels_and_lists_the_clips_it_would_drop(generic_corpus, tmp_path):
    import json

    corrupt_with_every_kind_of_problem(generic_corpus)
    table = pd.read_csv(generic_corpus / "manifest.csv")
    table.loc[table["utt_id"] == "s2_neutral_0", "utt_id"] = ["s2_neutral_0", "s2_neutral_1"]
    table.to_csv(generic_corpus / "manifest.csv", index=False)
    spec = dataset_spec(generic_corpus, on_bad_audio="skip")
    out = tmp_path / "out"
    with pytest.raises(InputError) as error:
        main(["--dataset", "toy", "--spec", json.dumps(spec), "--manifest", str(out / "m.parquet"),
              "--rejected", str(out / "rejected.csv")])
    message = str(error.value)
    assert "1 kind of problem" in message
    assert "\n\n1. 1 utterances have a label that datasets.toy.label_map does not mention:\n  - s3_sad_0: 'bored'" in message
    # The skipped clips are not a problem under 'skip', but the user sees them in the same run.
    assert ("\n\nAlso: 2 unusable clips will be dropped (datasets.toy.on_bad_audio: skip) and listed in "
            "rejected.csv once the problems above are fixed:") in message
    assert "s1_sad_0" in message and "s2_happy_0" in message
    assert "cannot be used" not in message
    # Nothing is written, not even rejected.csv: it would describe a manifest that does not exist.
    assert not out.exists() or list(out.iterdir()) == []


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

    classes = ["neutral", "happy", "angry", "sad"]
    if layout == "emobox":
        root = fx.make_emobox(tmp_path / "meta", tmp_path / "audio")
        options = {"audio_root": str(tmp_path / "audio")}
    else:
        root = {"ravdess": fx.make_ravdess, "crema_d": fx.make_crema_d, "generic": fx.make_generic}[layout](
            tmp_path / "corpus")
        # The fixtures' only happy RAVDESS clip is sung; the generic fixture has no happy clip.
        options = {"vocal_channels": [1, 2]} if layout == "ravdess" else {}
        if layout == "generic":
            classes = ["neutral", "angry", "sad"]
    from workflow_scripts.data.layouts import get_layout

    scan = get_layout(layout).scan(root, options)
    manifest, rejected = build_manifest(layout, dataset_spec(root, layout=layout, options=options, classes=classes))
    assert rejected.empty and len(manifest) > 0
    assert set(manifest["label"]) <= {"neutral", "happy", "angry", "sad"}
    assert set(manifest["utt_id"]) <= set(scan["utt_id"])


def test_class_from_the_standard_map_outside_classes_names_its_raw_labels(tmp_path):
    from corpus_fixtures import make_iemocap

    root = make_iemocap(tmp_path / "IEMOCAP_full_release")
    spec = dataset_spec(root, layout="iemocap", classes=["neutral", "angry", "sad"], on_bad_audio="skip")
    with pytest.raises(InputError) as error:
        build_manifest("iemocap", spec)
    assert ("1. datasets.iemocap.label_map (merged over the layout's standard map) maps to 1 class names that "
            "are not in datasets.iemocap.classes ['neutral', 'angry', 'sad']:\n"
            "  - happy (from raw label(s) ['exc', 'hap'], 2 utterances)\n"
            "Add each to datasets.iemocap.classes, or map its raw labels to null in datasets.iemocap.label_map") in str(
        error.value)
