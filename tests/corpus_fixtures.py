"""Tiny corpora on disk, laid out like the real releases, for the layout tests.

Every builder writes real (short) WAV files, takes the folder to write into and returns the
path a config would name. The data tables are module constants so that a test can state its
expected answer next to the input it comes from.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import soundfile as sf


def sine(seconds: float = 0.3, sample_rate: int = 16000, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.1 * np.sin(2 * np.pi * freq * t)).astype("float32")


def write_wav(path: Path, seconds: float = 0.3, sample_rate: int = 16000, freq: float = 220.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, sine(seconds, sample_rate, freq), sample_rate, subtype="PCM_16")
    return path


def wav_bytes(seconds: float = 0.3, sample_rate: int = 16000, freq: float = 220.0) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, sine(seconds, sample_rate, freq), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def paper_tone(utt: str) -> float:
    """The pitch of clip ``utt`` of :func:`iemocap_paper_labels`: a different tone per clip
    (identical clips would give every analysis identical features)."""
    return 150.0 + 37.0 * (sum(map(ord, utt)) % 29)


# --- IEMOCAP release tree ---------------------------------------------------------------

#: session -> dialog -> [(utterance, label)]; the dialog's EmoEvaluation file lists them.
IEMOCAP_LABELS = {
    1: {
        "Ses01F_impro01": [
            ("Ses01F_impro01_F000", "neu"),
            ("Ses01F_impro01_M011", "ang"),
            ("Ses01F_impro01_F001", "fru"),
        ],
        "Ses01M_script02_2": [("Ses01M_script02_2_F013", "exc"), ("Ses01M_script02_2_M000", "sad")],
    },
    3: {
        "Ses03M_script02_2": [("Ses03M_script02_2_F013", "hap"), ("Ses03M_script02_2_M001", "xxx")],
    },
}
#: labelled, but its wav is not on disk
IEMOCAP_MISSING_WAV = "Ses01M_script02_2_M000"
#: on disk, but no EmoEvaluation line names it
IEMOCAP_UNLABELLED = "Ses01F_impro01_M099"


def _emo_evaluation(utterances: list[tuple[str, str]]) -> str:
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for i, (utt, label) in enumerate(utterances):
        lines += [
            f"[{6.29 + 3 * i:.4f} - {8.23 + 3 * i:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]",
            "C-E2:\tNeutral;\t()",
            "C-F1:\tNeutral;\t(curious)",
            "A-E3:\tval 3; act 2; dom  2;\t()",
            "A-F1:\tval 3; act 2; dom  1;\t()",
            "",
        ]
    return "\n".join(lines)


#: IEMOCAP's raw labels of the four classes, in HF_LABEL_NAMES order (exc stands in for hap
#: every other time, as the layouts merge it into happy).
PAPER_RAW_LABELS = ("ang", "hap", "neu", "sad")


def iemocap_paper_labels(clips_per_class: int = 1) -> dict[int, dict[str, list[tuple[str, str]]]]:
    """An IEMOCAP label table (:data:`IEMOCAP_LABELS`' shape) big enough for the paper's grid:
    5 sessions, each with a dialog of each prefix (``Ses01F_impro01``, ``Ses01M_impro01``, so
    ``legacy_dialog10`` has its 10 groups), in which both actors speak ``clips_per_class`` clips
    of every class. So every session, speaker and dialog prefix holds all four classes: every
    split of every fold of ``loso_session``, ``loso_speaker`` and ``legacy_dialog10`` does."""
    labels: dict[int, dict[str, list[tuple[str, str]]]] = {}
    for session in range(1, 6):
        labels[session] = {}
        for prefix in "FM":
            dialog = f"Ses{session:02d}{prefix}_impro01"
            utterances = []
            for actor in "FM":
                for i in range(clips_per_class):
                    for c, label in enumerate(PAPER_RAW_LABELS):
                        if label == "hap" and i % 2:
                            label = "exc"
                        utterances.append((f"{dialog}_{actor}{i * len(PAPER_RAW_LABELS) + c:03d}", label))
            labels[session][dialog] = utterances
    return labels


def make_iemocap(root: Path, labels: dict | None = None, tone=None) -> Path:
    """Write ``labels`` (default :data:`IEMOCAP_LABELS`) as an IEMOCAP release, with the usual
    clutter. ``tone(utt)``: each clip's pitch (default 220 Hz for every clip)."""
    for session, dialogs in (IEMOCAP_LABELS if labels is None else labels).items():
        session_dir = root / f"Session{session}"
        emo_dir = session_dir / "dialog" / "EmoEvaluation"
        emo_dir.mkdir(parents=True)
        for dialog, utterances in dialogs.items():
            (emo_dir / f"{dialog}.txt").write_text(_emo_evaluation(utterances))
            # The per-annotator files in subfolders must not be read as consensus labels.
            (emo_dir / "Categorical").mkdir(exist_ok=True)
            (emo_dir / "Categorical" / f"{dialog}_e2_cat.txt").write_text(
                _emo_evaluation([(utt, "sur") for utt, _ in utterances])
            )
            (emo_dir / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
            for utt, _ in utterances:
                if utt != IEMOCAP_MISSING_WAV:
                    write_wav(session_dir / "sentences" / "wav" / dialog / f"{utt}.wav",
                              freq=220.0 if tone is None else tone(utt))
                    (session_dir / "sentences" / "wav" / dialog / f"._{utt}.wav").write_bytes(b"\x00\x05")
    write_wav(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / f"{IEMOCAP_UNLABELLED}.wav")
    (root / "Documentation").mkdir()
    return root


# --- Hugging Face datasets (Zahra99/IEMOCAP_Audio columns) -------------------------------

HF_LABEL_NAMES = ["ang", "hap", "neu", "sad"]
#: split -> [(audio.path, label index)]
HF_SPLITS = {
    "session1": [
        ("Ses01F_impro01_M011.wav", 0),
        ("Ses01M_script02_2_F013.wav", 1),
        ("Ses01F_impro01_F000.wav", 2),
    ],
    "session2": [("Ses02M_impro03_F005.wav", 3), ("Ses02F_script01_1_M002.wav", 2)],
}


def hf_dataset(rows: list[tuple[str | None, int]], names: list[str] = HF_LABEL_NAMES, tone=None):
    """A ``datasets.Dataset`` as a user would hold it after ``load_dataset``; ``tone(utt)``:
    each clip's pitch (default 220 Hz)."""
    import datasets
    import pyarrow as pa

    table = pa.table(
        {
            "audio": [{"bytes": wav_bytes(0.3, freq=220.0 if tone is None or path is None else tone(Path(path).stem)),
                       "path": path} for path, _ in rows],
            "label": pa.array([label for _, label in rows], pa.int64()),
        }
    )
    features = datasets.Features(
        {"audio": datasets.Audio(sampling_rate=16000), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def hf_splits_of(labels: dict) -> dict[str, list[tuple[str, int]]]:
    """An IEMOCAP label table (:func:`iemocap_paper_labels`) as Hugging Face splits, one per
    session (``session1`` ...), with ``exc`` counted as ``hap`` as in ``Zahra99/IEMOCAP_Audio``."""
    index = {name: i for i, name in enumerate(HF_LABEL_NAMES)} | {"exc": HF_LABEL_NAMES.index("hap")}
    return {
        f"session{session}": [(f"{utt}.wav", index[label]) for utterances in dialogs.values()
                              for utt, label in utterances]
        for session, dialogs in labels.items()
    }


def make_hf_dataset(folder: Path, rows=HF_SPLITS["session1"]) -> Path:
    hf_dataset(rows).save_to_disk(str(folder))
    return folder


def make_hf_dataset_dict(folder: Path, splits=HF_SPLITS, tone=None) -> Path:
    import datasets

    datasets.DatasetDict({name: hf_dataset(rows, tone=tone) for name, rows in splits.items()}).save_to_disk(str(folder))
    return folder


def make_hf_parquet(folder: Path, splits=HF_SPLITS) -> Path:
    """The hub's layout: ``data/<split>-00000-of-00001.parquet``."""
    (folder / "data").mkdir(parents=True)
    for name, rows in splits.items():
        hf_dataset(rows).to_parquet(str(folder / "data" / f"{name}-00000-of-00001.parquet"))
    return folder


# --- RAVDESS ----------------------------------------------------------------------------

#: modality-channel-emotion-intensity-statement-repetition-actor
RAVDESS_FILES = [
    "03-01-01-01-01-01-01",  # speech, neutral, actor 1 (male)
    "03-01-05-02-01-01-01",  # speech, angry
    "03-02-03-01-01-01-01",  # song, happy: not kept by default
    "01-01-04-01-01-01-01",  # audio-video modality: not kept by default
    "03-01-02-01-02-02-02",  # speech, calm, actor 2 (female)
    "03-01-08-02-02-01-02",  # speech, surprised
    "03-01-04-01-01-01-02",  # speech, sad
]


def make_ravdess(root: Path) -> Path:
    for name in RAVDESS_FILES:
        write_wav(root / f"Actor_{name[-2:]}" / f"{name}.wav", sample_rate=22050)
    (root / "Actor_01" / "._03-01-01-01-01-01-01.wav").write_bytes(b"\x00\x05")
    (root / "Actor_01" / "readme.txt").write_text("not audio")
    return root


# --- CREMA-D ----------------------------------------------------------------------------

CREMA_D_FILES = ["1001_DFA_ANG_XX", "1001_IEO_HAP_LO", "1002_TIE_NEU_XX", "1002_MTI_FEA_HI", "1091_IWW_SAD_X"]
#: actor 1091 is left out on purpose: its gender stays unknown
CREMA_D_DEMOGRAPHICS = (
    "ActorID,Age,Sex,Race,Ethnicity\n"
    "1001,51,Male,Caucasian,Not Hispanic\n"
    "1002,21,Female,Caucasian,Not Hispanic\n"
)


def make_crema_d(root: Path, *, demographics: bool = True, flat: bool = False) -> Path:
    folder = root if flat else root / "AudioWAV"
    for name in CREMA_D_FILES:
        write_wav(folder / f"{name}.wav")
    if demographics:
        (root / "VideoDemographics.csv").write_text(CREMA_D_DEMOGRAPHICS)
    return root


# --- EmoBox -----------------------------------------------------------------------------

#: (utterance, session number, label) in EmoBox's iemocap.jsonl; fold k tests session k
EMOBOX_IEMOCAP = [
    ("Ses01F_impro04_F000", 1, "neu"),
    ("Ses01F_impro04_M000", 1, "ang"),
    ("Ses01M_script01_1_F004", 1, "sad"),
    ("Ses02M_impro02_M010", 2, "hap"),
    ("Ses02F_script03_2_F021", 2, "neu"),
]


def _record(utt: str, session: int, label: str) -> dict:
    dialog = utt.rsplit("_", 1)[0]
    return {
        "key": f"iemocap-{utt}",
        "dataset": "iemocap",
        "wav": f"downloads/iemocap/Session{session}/sentences/wav/{dialog}/{utt}.wav",
        "type": "raw",
        "sample_rate": 16000,
        "num_frame": 4800.0,
        "task": "category",
        "length": 0.3,
        "emo": label,
        "channel": 1,
    }


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_emobox(metadata_dir: Path, audio_root: Path) -> Path:
    """EmoBox's ``data/iemocap`` folder, with wavs under ``audio_root/downloads/iemocap``."""
    records = [_record(*row) for row in EMOBOX_IEMOCAP]
    for record in records:
        write_wav(audio_root / record["wav"])
    _write_jsonl(metadata_dir / "iemocap.jsonl", records)
    for fold in (1, 2):
        test = [r for r, (_, s, _) in zip(records, EMOBOX_IEMOCAP) if s == fold]
        train = [r for r in records if r not in test]
        _write_jsonl(metadata_dir / f"fold_{fold}" / f"iemocap_test_fold_{fold}.jsonl", test)
        _write_jsonl(metadata_dir / f"fold_{fold}" / f"iemocap_train_fold_{fold}.jsonl", train)
    (metadata_dir / "label_map.json").write_text(
        '{"neu": "Neutral", "hap": "Happy", "ang": "Angry", "sad": "Sad"}'
    )
    return metadata_dir


# --- generic manifest -------------------------------------------------------------------

#: (path relative to the manifest, label, speaker, session, gender)
GENERIC_ROWS = [
    ("clips/a/spk1_001.wav", "angry", "spk1", "s1", "F"),
    ("clips/a/spk1_002.wav", "sad", "spk1", "s1", "female"),
    ("clips/b/spk2_001.wav", "neutral", "spk2", "", "M"),
]


def make_generic(root: Path, *, sep: str = ",", name: str = "manifest.csv", rows=GENERIC_ROWS) -> Path:
    lines = [sep.join(["path", "label", "speaker", "session", "gender"])]
    for row in rows:
        write_wav(root / row[0])
        lines.append(sep.join(row))
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("\n".join(lines) + "\n")
    return root
