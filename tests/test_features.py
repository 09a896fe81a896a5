"""Log-mel features per clip equal the first frames of Hugging Face's 30-s features; collation."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_tone
from workflow_scripts.data.audio_cache import AudioStore, write_audio_store
from workflow_scripts.features import (FeatureStore, clip_features, clip_frame_count, collate, feature_extractor,
                                       padding_floor, write_feature_store)


@pytest.fixture(scope="module")
def extractor():
    return feature_extractor(80)


def noise(seconds, seed=0, rms=0.1):
    """Seeded white noise; ``rms`` 0.1 is -20 dBFS, 0.001 is -60 dBFS."""
    rng = np.random.default_rng(seed)
    return (rms * rng.standard_normal(int(seconds * 16000) + 37)).astype(np.float32)


def tone(seconds, dbfs, freq=440.0):
    """A sine whose peak is ``dbfs`` below full scale."""
    t = np.arange(int(seconds * 16000) + 11) / 16000
    return (10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# A loud clip, whose silence floor is its maximum - 8 (log10), and two quiet ones, whose floor is
# Hugging Face's clamp of the mel power at 1e-10 (log10 = -10, -1.5 after normalisation).
CLIPS = {
    "noise -20 dBFS": lambda: noise(3.2),
    "tone -50 dBFS": lambda: tone(2.3, -50),
    "noise -60 dBFS": lambda: noise(1.7, seed=3, rms=10 ** (-60 / 20)),
}


@pytest.mark.parametrize("name", CLIPS)
def test_clip_frames_equal_the_30s_window_frames(extractor, name):
    clip = CLIPS[name]()
    ours = clip_features(extractor, clip)
    window = extractor(clip, sampling_rate=16000, return_tensors="np").input_features[0].T
    assert ours.shape == (clip_frame_count(clip.size), 80)
    np.testing.assert_array_equal(ours, window[: len(ours)])
    # Every later frame of the 30-s window holds the clip's floor value.
    np.testing.assert_allclose(window[len(ours) :], padding_floor(ours.max()), atol=1e-6)


def test_clip_frame_count_known_answer():
    assert clip_frame_count(noise(3.2).size) == 322  # ceil((51237 + 200) / 160)


BATCHES = {
    "loud": lambda: [noise(2.0, seed=1), noise(4.5, seed=2)],
    "quiet and loud": lambda: [CLIPS["tone -50 dBFS"](), CLIPS["noise -60 dBFS"](), noise(4.5, seed=2)],
}


@pytest.mark.parametrize("name", BATCHES)
def test_legacy_collation_reproduces_hugging_face_input_exactly(extractor, name):
    clips = BATCHES[name]()
    features, mask = collate([clip_features(extractor, c) for c in clips], max_frames=3000, legacy=True)
    reference = extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape == reference.shape == (len(clips), 80, 3000)
    torch.testing.assert_close(features, reference, atol=0, rtol=0)  # bit for bit, padding included
    assert mask.sum(1).tolist() == [clip_frame_count(c.size) for c in clips]


def test_padding_floor_known_answers():
    # (max - 8 + 4) / 4 = max - 2 while the clip's log10 maximum exceeds -2 (normalised 0.5),
    # else log10(1e-10) = -10 -> (-10 + 4) / 4 = -1.5.
    assert padding_floor(1.0) == pytest.approx(-1.0)
    assert padding_floor(0.5) == pytest.approx(-1.5)
    assert padding_floor(-0.2) == pytest.approx(-1.5)
    assert padding_floor(-1.5) == pytest.approx(-1.5)


def test_default_collation_crops_to_the_longest_clip_and_caps():
    a = np.full((7, 3), 1.0, dtype=np.float32)
    b = np.arange(24, dtype=np.float32).reshape(8, 3)
    features, mask = collate([a, b], max_frames=3000)
    assert features.shape == (2, 3, 8) and mask.tolist() == [[True] * 7 + [False], [True] * 8]
    assert features[0, :, 7].tolist() == [-1.0] * 3  # floor = max - 2 for a loud clip
    capped, capped_mask = collate([a, b], max_frames=4)
    assert capped.shape == (2, 3, 4) and capped_mask.all()
    torch.testing.assert_close(capped[1], torch.from_numpy(b[:4].T))
    odd, _ = collate([a], max_frames=3000)
    assert odd.shape[-1] == 8  # even length for the stride-2 convolution


def test_store_round_trip(tmp_path, extractor):
    paths = [write_tone(tmp_path / f"{name}.wav", seconds=s) for name, s in [("a", 0.5), ("b", 1.27)]]
    manifest = pd.DataFrame({"utt_id": ["a", "b"], "source": [str(p) for p in paths]})
    write_audio_store(str(tmp_path / "audio.zarr"), manifest, 16000)
    audio = AudioStore(str(tmp_path / "audio.zarr"))
    summary = write_feature_store(str(tmp_path / "logmel80.zarr"), audio, 80)
    store = FeatureStore(str(tmp_path / "logmel80.zarr"))
    assert summary == {"clips": 2, "frames": 52 + 129}  # ceil((8000 + 200) / 160), ceil((20320 + 200) / 160)
    assert store.utt_ids == ["a", "b"] and store.n_mels == 80 and store.length(1) == 129
    np.testing.assert_array_equal(store[1], clip_features(extractor, audio[1]))
    assert [c.shape for c in store.load_all()] == [(52, 80), (129, 80)]


def test_writer_failure_leaves_no_store(tmp_path):
    from workflow_scripts.features import FeatureStoreWriter

    with pytest.raises(ValueError, match=r"u2: rows must be \[n, 80\], got \(5, 40\)"):
        with FeatureStoreWriter(str(tmp_path / "f.zarr"), 80) as writer:
            writer.append("u1", np.zeros((5, 80), dtype=np.float32))
            writer.append("u2", np.zeros((5, 40), dtype=np.float32))
    assert list(tmp_path.iterdir()) == []
