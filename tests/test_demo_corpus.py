"""Tests for the espeak-ng demo corpus (workflow_scripts/data/demo_corpus.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from workflow_scripts.data import demo_corpus as dc
from workflow_scripts.errors import InputError

REPO = Path(__file__).resolve().parents[1]

#: 2 speakers x 4 emotions x 2 utterances = 16 clips: enough to check, fast to make.
SMALL = {"seed": 3, "speakers": 2, "utterances_per_speaker_per_emotion": 2, "sentence_words": [5, 8]}



def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(audio**2)))


def median_f0(audio: np.ndarray, rate: int) -> float:
    """Median pitch of the voiced 40 ms frames, by autocorrelation (70-400 Hz)."""
    frame = int(0.04 * rate)
    pitches = []
    for start in range(0, len(audio) - frame, frame // 2):
        chunk = audio[start : start + frame] - audio[start : start + frame].mean()
        if rms(chunk) < 0.02:
            continue
        corr = np.correlate(chunk, chunk, "full")[frame - 1 :]
        low, high = rate // 400, rate // 70
        lag = low + int(np.argmax(corr[low:high]))
        if corr[lag] > 0.5 * corr[0]:
            pitches.append(rate / lag)
    return float(np.median(pitches))


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("demo") / "corpus"
    return out, dc.generate_demo_corpus(out, SMALL)


# ------------------------------------------------------------------ layout and manifest


def test_manifest_columns_and_counts(small_corpus):
    out, manifest = small_corpus
    on_disk = pd.read_csv(out / "manifest.csv")
    assert list(on_disk.columns) == ["utt_id", "path", "label", "speaker", "gender", "session", "sentence"]
    pd.testing.assert_frame_equal(on_disk, manifest)
    assert len(manifest) == 2 * 4 * 2
    assert manifest["utt_id"].is_unique
    assert manifest.groupby(["speaker", "label"]).size().eq(2).all()
    assert set(manifest["label"]) == {"neutral", "happy", "angry", "sad"}
    assert sorted(manifest["speaker"].unique()) == ["spk01", "spk02"]
    assert manifest.groupby("speaker")["gender"].first().to_dict() == {"spk01": "F", "spk02": "M"}
    # no speaker says the same sentence twice; sentences respect the word limits
    assert manifest.groupby("speaker")["sentence"].nunique().eq(8).all()
    words = manifest["sentence"].str.split().str.len()
    assert words.between(5, 8).all()
    assert (manifest["path"] == "wav/" + manifest["speaker"] + "/" + manifest["utt_id"] + ".wav").all()
    assert (out / "README.txt").read_text().count('"seed": 3') == 1
    assert len(pd.read_csv(out / "synthesis.csv")) == len(manifest)


def test_every_wav_decodes_as_espeak_wrote_it(small_corpus):
    out, manifest = small_corpus
    for path in manifest["path"]:
        info = sf.info(out / path)
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        audio, _ = sf.read(out / path)
        assert len(audio) > 0.5 * 22050, path
        assert np.isfinite(audio).all() and rms(audio) > 0.005, path
    # nothing but the corpus in the folder (no temporary leftovers next to it either)
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "manifest.csv", "synthesis.csv", "wav"]
    assert [p.name for p in out.parent.iterdir()] == ["corpus"]


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_bytes(small_corpus, tmp_path):
    out, _ = small_corpus
    again = tmp_path / "again"
    dc.generate_demo_corpus(again, SMALL)
    first, second = file_hashes(out), file_hashes(again)
    assert len(first) == 16 + 3
    assert first == second


def test_other_seed_gives_other_corpus(small_corpus, tmp_path):
    out, manifest = small_corpus
    other = dc.generate_demo_corpus(tmp_path / "other", {**SMALL, "seed": 4})
    assert list(other["sentence"]) != list(manifest["sentence"])
    wavs_a = {h for name, h in file_hashes(out).items() if name.endswith(".wav")}
    wavs_b = {h for name, h in file_hashes(tmp_path / "other").items() if name.endswith(".wav")}
    assert not wavs_a & wavs_b


def test_speakers_are_distinct_and_gender_balanced():
    speakers = dc.make_speakers(0, 8)
    assert [s.speaker_id for s in speakers] == [f"spk{i:02d}" for i in range(1, 9)]
    assert [s.gender for s in speakers].count("F") == 4
    assert len({s.variant for s in speakers}) == 8
    assert len({s.session for s in speakers}) == 4
    # asking for more speakers keeps the first ones as they were
    assert dc.make_speakers(0, 10)[:8] == speakers


# ------------------------------------------------------------------ prosody really differs


def test_prosody_differs_by_emotion_in_the_audio(tmp_path):
    """Same sentences and speakers in each emotion: the audio must move the literature's way."""
    espeak = dc.find_espeak()
    sentences = [
        "The driver moved the wooden table to the kitchen on Monday.",
        "My cousin opened a parcel at the station this morning.",
        "Peter checked the map near the library again.",
    ]
    rng = np.random.default_rng(0)
    measured = {}
    for emotion in dc.EMOTIONS:
        loudness, seconds_per_word, pitch = [], [], []
        for speaker in dc.make_speakers(0, 2):
            for number, sentence in enumerate(sentences):
                wav = tmp_path / f"{emotion}_{speaker.speaker_id}_{number}.wav"
                prosody = dc.utterance_prosody(emotion, speaker, rng)
                dc.synthesize(espeak, speaker.voice, prosody, sentence, wav)
                audio, rate = sf.read(wav)
                loudness.append(rms(audio))
                seconds_per_word.append(len(audio) / rate / len(sentence.split()))
                # log pitch, so the female and the male speaker weigh alike
                pitch.append(np.log(median_f0(audio, rate)))
        measured[emotion] = {k: np.mean(v) for k, v in
                             {"rms": loudness, "spw": seconds_per_word, "f0": pitch}.items()}

    assert measured["angry"]["rms"] > 1.5 * measured["sad"]["rms"]
    assert measured["angry"]["rms"] > measured["neutral"]["rms"]
    assert measured["sad"]["spw"] > 1.2 * measured["angry"]["spw"]
    assert measured["sad"]["spw"] > measured["neutral"]["spw"]
    assert measured["happy"]["f0"] > measured["neutral"]["f0"] > measured["sad"]["f0"]


def test_generated_corpus_is_louder_when_angry(small_corpus):
    out, manifest = small_corpus
    loudness = manifest.assign(rms=[rms(sf.read(out / p)[0]) for p in manifest["path"]])
    by_label = loudness.groupby("label")["rms"].mean()
    assert by_label["angry"] > by_label["sad"]


def test_classes_overlap_in_every_single_setting():
    """No one espeak-ng setting separates all four classes: the task must not be trivial."""
    speakers = dc.make_speakers(0, 8)
    rng = np.random.default_rng(0)
    rows = [
        {"label": emotion, **vars(dc.utterance_prosody(emotion, speaker, rng))}
        for speaker in speakers for emotion in dc.EMOTIONS for _ in range(15)
    ]
    table = pd.DataFrame(rows)
    for setting in ["pitch", "pitch_range", "rate", "amplitude"]:
        spans = table.groupby("label")[setting].agg(["min", "max"]).sort_values("min")
        overlaps = (spans["max"].to_numpy()[:-1] >= spans["min"].to_numpy()[1:]).sum()
        assert overlaps >= 1, setting


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"speakers": 1}, "demo_corpus.speakers"),
        ({"speakers": dc.MAX_SPEAKERS + 1}, "demo_corpus.speakers"),
        ({"speakers": "8"}, "demo_corpus.speakers"),
        ({"seed": -1}, "demo_corpus.seed"),
        ({"seed": True}, "demo_corpus.seed"),
        ({"utterances_per_speaker_per_emotion": 0}, "demo_corpus.utterances_per_speaker_per_emotion"),
        ({"sentence_words": [9, 5]}, "demo_corpus.sentence_words"),
        ({"sentence_words": [1, 5]}, "demo_corpus.sentence_words"),
        ({"sentence_words": 7}, "demo_corpus.sentence_words"),
        ({"speaker": 8}, "demo_corpus.speaker"),
    ],
)
def test_bad_settings_name_the_key(settings, key, tmp_path):
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        dc.generate_demo_corpus(tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()


def test_defaults_are_filled_in():
    assert dc.validate_settings({}) == dc.default_settings() == {"seed": 0, "speakers": 8, "utterances_per_speaker_per_emotion": 8,
                                                              "sentence_words": [5, 12]}
    assert dc.validate_settings(None)["speakers"] == 8


def test_missing_espeak_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InputError, match="apt-get install espeak-ng") as error:
        dc.generate_demo_corpus(tmp_path / "out", SMALL)
    assert "tools/setup.sh" in str(error.value)


def test_failed_synthesis_leaves_no_folder(tmp_path, monkeypatch):
    calls = []
    real = dc.synthesize

    def fail_on_third(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("espeak-ng crashed")
        real(*args)

    monkeypatch.setattr(dc, "synthesize", fail_on_third)
    with pytest.raises(RuntimeError, match="crashed"):
        dc.generate_demo_corpus(tmp_path / "out", SMALL)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workflow_scripts.data.demo_corpus", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def test_cli_help():
    result = run_cli("--help")
    assert result.returncode == 0
    for text in ["--out", "--spec", "--config", "espeak-ng", "utterances_per_speaker_per_emotion"]:
        assert text in result.stdout


def test_cli_reports_bad_settings_plainly(tmp_path):
    result = run_cli("--out", str(tmp_path / "out"), "--spec", '{"speakers": 0}')
    assert result.returncode == 2
    assert "demo_corpus.speakers" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_writes_a_corpus(tmp_path):
    spec = '{"speakers": 2, "utterances_per_speaker_per_emotion": 1}'
    result = run_cli("--out", str(tmp_path / "out"), "--spec", spec)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(tmp_path / "out" / "manifest.csv")) == 8
