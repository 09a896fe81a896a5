"""The embedded demo corpus: espeak-ng speaks 4 emotions, so the pipeline runs without data.

Why synthetic speech: loralens should run end to end on a laptop with no corpus licence and
no download. A real speech synthesizer (espeak-ng, run as a subprocess) renders each
utterance; the emotion lives only in the prosody -- pitch level, pitch range, speaking rate
and amplitude -- spoken by one of several voice variants (the synthetic speakers). The text
is drawn from one emotion-neutral sentence pool for every emotion, so it gives nothing away.

Output (a folder, written atomically)::

    manifest.csv            utt_id,path,label,speaker,gender,session,sentence  ("generic" layout)
    synthesis.csv           the espeak-ng settings each clip was rendered with
    README.txt              what this is, the settings and the seed
    wav/<speaker>/<utt_id>.wav   16-bit PCM, 22050 Hz, exactly as espeak-ng writes it

The same seed (and the same espeak-ng version) gives byte-identical files: everything random
is drawn up front from seeded generators, and the synthesis threads only execute that plan.

Command line::

    python -m workflow_scripts.data.demo_corpus --out results/demo_corpus --spec '{}'
    python -m workflow_scripts.data.demo_corpus --out /tmp/demo --config config/config.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

from workflow_scripts.atomic import atomic_path
from workflow_scripts.cli import add_spec_arguments, resolve_spec, run_main
from workflow_scripts.errors import InputError

log = logging.getLogger(__name__)

def default_settings() -> dict:
    """The section ``demo_corpus``'s defaults (every key is optional), from config/schema.yaml."""
    import copy

    from workflow_scripts.stage_settings import section_schema

    return {key: copy.deepcopy(spec["default"]) for key, spec in section_schema("demo_corpus")["properties"].items()}


MIN_SPEAKERS = 2
MAX_UTTERANCES_PER_SPEAKER_PER_EMOTION = 1000
#: The shortest sentence the grammar below can build ("Anna opened it.") and the longest we allow.
MIN_SENTENCE_WORDS, MAX_SENTENCE_WORDS = 3, 20

EMOTIONS = ("neutral", "happy", "angry", "sad")

MANIFEST_COLUMNS = ["utt_id", "path", "label", "speaker", "gender", "session", "sentence"]

INSTALL_HINT = (
    "espeak-ng is needed to synthesise the demo corpus but was not found on PATH. "
    "Install it with 'apt-get install espeak-ng' (Debian/Ubuntu; 'brew install espeak-ng' on "
    "macOS), or run the project's setup command 'bash tools/setup.sh'."
)

# --------------------------------------------------------------------------------------------
# Prosody per emotion
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prosody:
    """espeak-ng settings for one clip, in espeak-ng's own units."""

    pitch: int  # -p, 0..99: where the voice sits within its variant's pitch band
    pitch_range: int  # SSML <prosody range>, 0..100: how far the intonation swings
    rate: int  # -s, words per minute (espeak-ng accepts 80..450)
    amplitude: int  # -a, 0..200 (espeak-ng limits its own peaks, so 200 does not clip)


# The emotion means follow the acoustic correlates of vocal emotion reported by Murray &
# Arnott (1993, "Toward the simulation of emotion in synthetic speech", JASA 93(2)), Banse &
# Scherer (1996, JPSP 70(3)) and the meta-analysis of Juslin & Laukka (2003, Psychol. Bull.
# 129(5)):
#   angry   - much louder, faster, raised pitch, wide pitch range;
#   happy   - high pitch, the widest range, fairly fast, somewhat louder;
#   sad     - low pitch, narrow (monotone) range, slow, soft;
#   neutral - the middle of every scale (espeak-ng's own defaults: -p 50, range 50, 100 amp).
# Angry and happy share "high and wide" pitch and differ mostly in loudness and rate, as in
# real speech, which is what makes them the hard pair.
EMOTION_PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(pitch=50, pitch_range=50, rate=165, amplitude=100),
    "happy": Prosody(pitch=66, pitch_range=82, rate=185, amplitude=125),
    "angry": Prosody(pitch=60, pitch_range=72, rate=205, amplitude=165),
    "sad": Prosody(pitch=36, pitch_range=20, rate=135, amplitude=70),
}

# Per-utterance jitter (standard deviation, same units). Together with the speakers' own
# offsets and loudness it makes every single dimension overlap between neighbouring classes
# (neutral/happy in amplitude, happy/angry in pitch and rate, neutral/sad in pitch), so no one
# number separates the classes, while their combination still does.
PROSODY_JITTER_SD = Prosody(pitch=5, pitch_range=10, rate=12, amplitude=15)

# Hard limits of each espeak-ng setting (a jittered value is clipped into them).
PROSODY_LIMITS: dict[str, tuple[int, int]] = {
    "pitch": (0, 99),
    "pitch_range": (0, 100),
    "rate": (80, 450),
    "amplitude": (0, 200),
}

# --------------------------------------------------------------------------------------------
# Speakers
# --------------------------------------------------------------------------------------------

# espeak-ng voice variants (espeak-ng --voices=variant) that sound like ordinary adult
# speakers; whispering, robotic and novelty variants are left out. Each speaker gets its own
# variant, so the pools bound the number of speakers.
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Andrea", "belinda", "steph", "linda", "Annie")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m6", "m7", "m8", "Andy", "paul", "rob")
MAX_SPEAKERS = 2 * min(len(FEMALE_VARIANTS), len(MALE_VARIANTS))
BASE_LANGUAGE = "en-us"

# A speaker's habitual pitch (espeak -p units) and tempo (words/min) differ from the others'.
SPEAKER_PITCH_OFFSET_MAX = 8
SPEAKER_RATE_OFFSET_MAX = 15


@dataclass(frozen=True)
class Speaker:
    speaker_id: str  # spk01, spk02, ...
    gender: str  # "F" or "M"
    variant: str  # espeak-ng voice variant
    session: str  # one female and one male speaker per session, as in IEMOCAP
    pitch_offset: int
    rate_offset: int

    @property
    def voice(self) -> str:
        return f"{BASE_LANGUAGE}+{self.variant}"


def make_speakers(seed: int, count: int) -> list[Speaker]:
    """Return ``count`` speakers alternating F, M, each with its own variant and offsets.

    Speaker k depends only on (seed, k), so asking for more speakers adds speakers without
    changing the existing ones.
    """
    voice_rng = np.random.default_rng([seed, 0])
    female = [FEMALE_VARIANTS[i] for i in voice_rng.permutation(len(FEMALE_VARIANTS))]
    male = [MALE_VARIANTS[i] for i in voice_rng.permutation(len(MALE_VARIANTS))]
    speakers = []
    for index in range(count):
        offset_rng = np.random.default_rng([seed, 1, index])
        gender, pool = ("F", female) if index % 2 == 0 else ("M", male)
        speakers.append(
            Speaker(
                speaker_id=f"spk{index + 1:02d}",
                gender=gender,
                variant=pool[index // 2],
                session=f"ses{index // 2 + 1:02d}",
                pitch_offset=int(offset_rng.integers(-SPEAKER_PITCH_OFFSET_MAX, SPEAKER_PITCH_OFFSET_MAX + 1)),
                rate_offset=int(offset_rng.integers(-SPEAKER_RATE_OFFSET_MAX, SPEAKER_RATE_OFFSET_MAX + 1)),
            )
        )
    return speakers


def utterance_prosody(emotion: str, speaker: Speaker, rng: np.random.Generator) -> Prosody:
    """The emotion's prosody, shifted by the speaker's habits and a little random jitter."""
    mean = EMOTION_PROSODY[emotion]
    shift = {"pitch": speaker.pitch_offset, "rate": speaker.rate_offset}
    values = {}
    for name, (low, high) in PROSODY_LIMITS.items():
        centre = getattr(mean, name) + shift.get(name, 0)
        value = centre + getattr(PROSODY_JITTER_SD, name) * rng.standard_normal()
        values[name] = int(np.clip(round(value), low, high))
    return Prosody(**values)


# --------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------

# Everyday, emotion-neutral words: no word here hints at a feeling or at how it is said.
WORDS: dict[str, tuple[str, ...]] = {
    "name": ("Anna", "Peter", "Maria", "David", "Laura", "Thomas", "Sofia", "Daniel", "Clara",
             "Martin", "Nina", "Victor", "Helen", "Robert", "Julia", "Simon"),
    "person": ("teacher", "driver", "student", "clerk", "farmer", "painter", "pilot", "baker",
               "neighbour", "porter", "tailor", "builder", "cashier", "gardener"),
    "person_adj": ("new", "young", "tall", "other", "local", "second"),
    "relation": ("sister", "brother", "cousin", "colleague", "father", "mother", "uncle", "aunt"),
    "verb": ("moved", "opened", "carried", "painted", "checked", "cleaned", "counted",
             "delivered", "fixed", "measured", "ordered", "packed", "repaired", "sorted",
             "washed", "found", "brought", "closed", "labelled", "weighed", "borrowed", "lifted"),
    "intransitive": ("waited", "returned", "stayed", "walked", "listened", "called", "arrived"),
    # things and their adjectives start with a consonant, so "a" is always the right article
    "thing": ("box", "table", "window", "letter", "chair", "ladder", "basket", "lamp", "folder",
              "bicycle", "curtain", "suitcase", "kettle", "map", "parcel", "drawer", "bench",
              "fence", "cupboard", "bucket", "notebook", "radio"),
    "thing_adj": ("blue", "wooden", "small", "green", "heavy", "metal", "round", "white", "spare",
                  "square", "brown", "plain", "narrow", "large"),
    "place": ("station", "library", "bakery", "harbour", "garage", "office", "school", "museum",
              "market", "bridge", "warehouse", "kitchen", "corner", "garden", "hotel"),
    "city": ("Boston", "Denver", "Leeds", "Lyon", "Porto", "Berlin", "Dublin", "Toronto"),
    "event": ("meeting", "lecture", "delivery", "inspection", "rehearsal", "appointment",
              "break", "concert", "match", "seminar"),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "day_part": ("morning", "afternoon", "evening"),
    "hour": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"),
}

# The core clause: subject + predicate. Every slot ({...}) is one word, so a template's word
# count is its length.
SUBJECTS = ("{name}", "the {person}", "my {relation}", "the {person_adj} {person}")
PREDICATES = ("{verb} it", "{intransitive}", "{verb} the {thing}", "{verb} a {thing}",
              "{verb} the {thing_adj} {thing}", "{verb} a {thing_adj} {thing}")

# Optional modifier phrases, at most one per category. Every category offers phrases of each
# length from 1 to its longest, so any remaining word count within capacity can be filled.
MODIFIERS: dict[str, tuple[str, ...]] = {
    "manner": ("again", "twice", "carefully", "once more", "one more time", "for the second time"),
    "company": ("alone", "with {name}", "with a {person}", "with the {person_adj} {person}"),
    "place": ("outside", "upstairs", "downstairs", "in {city}", "at the {place}",
              "near the {place}", "behind the {place}", "next to the {place}"),
    "sequence": ("afterwards", "before lunch", "after work", "before the {event}",
                 "after the {event}", "right after the {event}"),
    "time": ("today", "yesterday", "on {day}", "last {day}", "this {day_part}",
             "in the {day_part}", "at {hour} o'clock", "on {day} {day_part}",
             "early on {day} {day_part}"),
}
#: The order modifiers are spoken in, whatever order their lengths were chosen in.
MODIFIER_ORDER = ("manner", "company", "place", "sequence", "time")


def _words(template: str) -> int:
    return len(template.split())


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _fill(template: str, rng: np.random.Generator) -> str:
    """Replace every {slot} with a random word of its list."""
    return " ".join(
        _pick(rng, WORDS[word[1:-1]]) if word.startswith("{") else word for word in template.split()
    )


def _pick_with_length(rng: np.random.Generator, templates: Sequence[str], length: int) -> str:
    return _pick(rng, [t for t in templates if _words(t) == length])


def make_sentence(rng: np.random.Generator, min_words: int, max_words: int) -> str:
    """One random sentence with between ``min_words`` and ``max_words`` words."""
    target = int(rng.integers(min_words, max_words + 1))
    subject = _pick(rng, [s for s in SUBJECTS if _words(s) < target])
    predicate = _pick(rng, [p for p in PREDICATES if _words(subject) + _words(p) <= target])
    remaining = target - _words(subject) - _words(predicate)

    # Share the remaining words among the modifier categories, in random order; each gets a
    # length between what the later categories cannot absorb and what it can hold itself.
    categories = [MODIFIER_ORDER[i] for i in rng.permutation(len(MODIFIER_ORDER))]
    capacity = {c: max(_words(t) for t in MODIFIERS[c]) for c in categories}
    chosen = {}
    for position, category in enumerate(categories):
        later = sum(capacity[c] for c in categories[position + 1:])
        length = int(rng.integers(max(0, remaining - later), min(remaining, capacity[category]) + 1))
        if length:
            chosen[category] = _pick_with_length(rng, MODIFIERS[category], length)
            remaining -= length

    parts = [subject, predicate] + [chosen[c] for c in MODIFIER_ORDER if c in chosen]
    text = " ".join(_fill(part, rng) for part in parts)
    return text[0].upper() + text[1:] + "."


def make_sentences(rng: np.random.Generator, count: int, min_words: int, max_words: int) -> list[str]:
    """``count`` distinct sentences (one speaker never says the same sentence twice)."""
    sentences: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(sentences) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise InputError(
                f"could not build {count} distinct sentences of {min_words}-{max_words} words: "
                "widen demo_corpus.sentence_words or lower "
                "demo_corpus.utterances_per_speaker_per_emotion"
            )
        sentence = make_sentence(rng, min_words, max_words)
        if sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    return sentences


# --------------------------------------------------------------------------------------------
# The plan: everything random, decided before any audio is rendered
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    speaker: Speaker
    label: str
    sentence: str
    prosody: Prosody

    @property
    def path(self) -> str:
        """The wav file, relative to the corpus folder (always with forward slashes)."""
        return f"wav/{self.speaker.speaker_id}/{self.utt_id}.wav"


def plan_speaker(speaker: Speaker, index: int, settings: Mapping) -> list[Utterance]:
    """All utterances of one speaker: per emotion, fresh sentences from the shared pool."""
    rng = np.random.default_rng([settings["seed"], 2, index])
    per_emotion = settings["utterances_per_speaker_per_emotion"]
    min_words, max_words = settings["sentence_words"]
    sentences = make_sentences(rng, per_emotion * len(EMOTIONS), min_words, max_words)
    labels = [emotion for emotion in EMOTIONS for _ in range(per_emotion)]
    # Number the clips in shuffled order, so an utterance id says nothing about its label.
    order = rng.permutation(len(labels))
    return [
        Utterance(
            utt_id=f"{speaker.speaker_id}_u{number + 1:03d}",
            speaker=speaker,
            label=labels[item],
            sentence=sentences[item],
            prosody=utterance_prosody(labels[item], speaker, rng),
        )
        for number, item in enumerate(order)
    ]


def plan_corpus(speakers: Sequence[Speaker], settings: Mapping) -> list[Utterance]:
    return [u for index, s in enumerate(speakers) for u in plan_speaker(s, index, settings)]


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


def find_espeak() -> str:
    """The espeak-ng executable, or an InputError that says how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise InputError(INSTALL_HINT)
    return path


def espeak_version(espeak: str) -> str:
    """E.g. 'eSpeak NG text-to-speech: 1.51' (the data path, which varies by machine, is cut)."""
    result = subprocess.run([espeak, "--version"], capture_output=True, text=True, check=True)
    return result.stdout.split("Data at:")[0].strip()


def espeak_command(espeak: str, voice: str, prosody: Prosody, sentence: str, wav: Path) -> list[str]:
    # Pitch range has no command-line flag, so it goes in as SSML (-m); an absolute number
    # sets espeak-ng's range parameter directly (0..100, default 50).
    ssml = f'<speak><prosody range="{prosody.pitch_range}">{escape(sentence)}</prosody></speak>'
    return [
        espeak, "-m", "-v", voice,
        "-p", str(prosody.pitch), "-s", str(prosody.rate), "-a", str(prosody.amplitude),
        "-w", str(wav), ssml,
    ]  # fmt: skip


def synthesize(espeak: str, voice: str, prosody: Prosody, sentence: str, wav: Path) -> None:
    """Render one sentence to ``wav`` (16-bit PCM, 22050 Hz, as espeak-ng writes it)."""
    wav.parent.mkdir(parents=True, exist_ok=True)
    command = espeak_command(espeak, voice, prosody, sentence, wav)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
        raise RuntimeError(
            f"espeak-ng failed on {wav.name} (exit {result.returncode}): {result.stderr.strip()}\n"
            f"command: {command}"
        )


def synthesis_threads() -> int:
    # espeak-ng runs in a subprocess, so threads overlap fine (the GIL is released while they
    # wait). Snakemake sets OMP_NUM_THREADS to the job's threads: stay within them.
    cores = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    return max(1, min(8, cores))


def synthesize_all(espeak: str, plan: Sequence[Utterance], root: Path) -> None:
    """Render every planned clip. Each thread only writes its own file, so the result does not
    depend on which thread runs when."""

    def render(utterance: Utterance) -> None:
        synthesize(espeak, utterance.speaker.voice, utterance.prosody, utterance.sentence,
                   root / utterance.path)

    with ThreadPoolExecutor(max_workers=synthesis_threads()) as pool:
        # list() re-raises the first failure, which aborts the atomic write.
        list(pool.map(render, plan))


# --------------------------------------------------------------------------------------------
# Tables and README
# --------------------------------------------------------------------------------------------


def manifest_frame(plan: Sequence[Utterance]) -> pd.DataFrame:
    rows = [
        {
            "utt_id": u.utt_id,
            "path": u.path,
            "label": u.label,
            "speaker": u.speaker.speaker_id,
            "gender": u.speaker.gender,
            "session": u.speaker.session,
            "sentence": u.sentence,
        }
        for u in plan
    ]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def synthesis_frame(plan: Sequence[Utterance]) -> pd.DataFrame:
    """What each clip was rendered with, for anyone who wants to check what a model learned."""
    return pd.DataFrame(
        [{"utt_id": u.utt_id, "label": u.label, "voice": u.speaker.voice, **asdict(u.prosody)} for u in plan]
    )


def readme_text(settings: Mapping, speakers: Sequence[Speaker], version: str, n_clips: int) -> str:
    speaker_lines = [
        f"  {s.speaker_id}  {s.gender}  {s.session}  variant {s.variant:<8} "
        f"pitch offset {s.pitch_offset:+d}  rate offset {s.rate_offset:+d} wpm"
        for s in speakers
    ]
    emotion_lines = [
        f"  {name:<8} pitch {p.pitch:>2}  range {p.pitch_range:>3}  rate {p.rate:>3} wpm  amplitude {p.amplitude:>3}"
        for name, p in EMOTION_PROSODY.items()
    ]
    jitter = PROSODY_JITTER_SD
    return "\n".join([
        "loralens demo corpus -- synthetic emotional speech",
        "",
        "Made by workflow_scripts/data/demo_corpus.py so that the pipeline runs without data.",
        f"{n_clips} clips: espeak-ng ({version}) speaks emotion-neutral sentences; the emotion",
        "is carried only by prosody (pitch level and range, rate, amplitude). It is a smoke test",
        "and a teaching corpus, not evidence about human emotional speech.",
        "",
        "Settings (config section demo_corpus):",
        json.dumps(dict(settings), sort_keys=True),
        "The same settings and espeak-ng version give byte-identical files.",
        "",
        "Emotion prosody means (espeak-ng units; Murray & Arnott 1993, Juslin & Laukka 2003):",
        *emotion_lines,
        f"Per-clip jitter (s.d.): pitch {jitter.pitch}, range {jitter.pitch_range}, "
        f"rate {jitter.rate} wpm, amplitude {jitter.amplitude}.",
        "",
        "Speakers (id, gender, session, espeak-ng voice variant on en-us, habitual offsets):",
        *speaker_lines,
        "",
        "Files:",
        "  manifest.csv   utt_id,path,label,speaker,gender,session,sentence (the 'generic' layout)",
        "  synthesis.csv  the espeak-ng settings of every clip",
        "  wav/<speaker>/<utt_id>.wav   16-bit PCM mono, 22050 Hz as espeak-ng writes it",
        "",
    ])


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(settings: Mapping, key: str, low: int, high: int | None = None) -> None:
    value = settings[key]
    bound = f"between {low} and {high}" if high is not None else f"at least {low}"
    if not _is_int(value) or value < low or (high is not None and value > high):
        raise InputError(f"demo_corpus.{key} must be an integer {bound}, got {value!r}")


def validate_settings(settings: Mapping | None) -> dict:
    """Return the settings with defaults filled in; raise InputError naming a bad key."""
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        raise InputError(f"demo_corpus must be a mapping of settings, got {settings!r}")
    defaults = default_settings()
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise InputError(
            f"unknown setting(s) {', '.join(f'demo_corpus.{k}' for k in unknown)}; "
            f"known: {', '.join(defaults)}"
        )
    merged = {**defaults, **settings}
    _check_int(merged, "seed", 0)
    _check_int(merged, "speakers", MIN_SPEAKERS, MAX_SPEAKERS)
    _check_int(merged, "utterances_per_speaker_per_emotion", 1, MAX_UTTERANCES_PER_SPEAKER_PER_EMOTION)

    words = merged["sentence_words"]
    if (
        not isinstance(words, Sequence)
        or isinstance(words, str)
        or len(words) != 2
        or not all(_is_int(w) for w in words)
        or not MIN_SENTENCE_WORDS <= words[0] <= words[1] <= MAX_SENTENCE_WORDS
    ):
        raise InputError(
            f"demo_corpus.sentence_words must be [min, max] integers with "
            f"{MIN_SENTENCE_WORDS} <= min <= max <= {MAX_SENTENCE_WORDS}, got {words!r}"
        )
    merged["sentence_words"] = [int(words[0]), int(words[1])]
    return merged


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def generate_demo_corpus(out_dir: str | os.PathLike, settings: Mapping | None) -> pd.DataFrame:
    """Synthesise the demo corpus into ``out_dir`` and return its manifest.

    ``out_dir`` appears only once it is complete; an existing one is replaced.
    """
    settings = validate_settings(settings)
    espeak = find_espeak()
    started = time.perf_counter()
    speakers = make_speakers(settings["seed"], settings["speakers"])
    plan = plan_corpus(speakers, settings)
    manifest = manifest_frame(plan)
    with atomic_path(out_dir, directory=True) as root:
        synthesize_all(espeak, plan, root)
        manifest.to_csv(root / "manifest.csv", index=False)
        synthesis_frame(plan).to_csv(root / "synthesis.csv", index=False)
        (root / "README.txt").write_text(readme_text(settings, speakers, espeak_version(espeak), len(plan)))
    log.info(
        "wrote %d clips (%d speakers x %d emotions) to %s in %.1f s",
        len(plan), settings["speakers"], len(EMOTIONS), out_dir, time.perf_counter() - started,
    )
    return manifest


def build_parser() -> argparse.ArgumentParser:
    defaults = json.dumps(default_settings())
    parser = argparse.ArgumentParser(
        prog="python -m workflow_scripts.data.demo_corpus",
        description=(
            "Synthesise loralens' demo corpus with espeak-ng: synthetic speakers say emotion-"
            "neutral sentences as neutral, happy, angry or sad speech, the emotion carried by "
            "pitch level and range, rate and amplitude. Writes OUT/manifest.csv (the 'generic' "
            "layout), OUT/wav/<speaker>/<utt_id>.wav, OUT/synthesis.csv and OUT/README.txt."
        ),
        epilog=(
            f"Settings (all optional) and their defaults: {defaults}. "
            "Example: python -m workflow_scripts.data.demo_corpus --out /tmp/demo "
            "--spec '{\"seed\": 1, \"speakers\": 4}'. Needs espeak-ng (apt-get install espeak-ng)."
        ),
    )
    parser.add_argument("--out", required=True, help="the corpus folder to write (replaced if it exists)")
    add_spec_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = resolve_spec(args, select=lambda cfg: cfg["demo_corpus"])
    generate_demo_corpus(args.out, settings)


if __name__ == "__main__":
    run_main(main)
