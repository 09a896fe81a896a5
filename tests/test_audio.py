import numpy as np
import pytest
import soundfile

from conftest import write_tone
from workflow_scripts.data.audio import BadClip, read_clip, resample


def test_stereo_is_averaged_to_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    left = np.full(1000, 0.5, dtype=np.float32)
    right = np.full(1000, -0.25, dtype=np.float32)
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    samples, rate = read_clip(str(path))
    assert rate == 16000 and samples.dtype == np.float32 and samples.shape == (1000,)
    np.testing.assert_allclose(samples, 0.125)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage that is not audio"), "unreadable or corrupt"),
        (lambda p: soundfile.write(p, np.zeros(0, dtype=np.float32), 16000), "zero-length"),
        (lambda p: soundfile.write(p, np.full(100, np.nan, dtype=np.float32), 16000, subtype="FLOAT"),
         "all samples are NaN"),
        (lambda p: soundfile.write(p, np.array([0.1, np.inf, 0.2], dtype=np.float32), 16000, subtype="FLOAT"),
         "1 samples are NaN/Inf"),
        (lambda p: soundfile.write(p, np.zeros(800, dtype=np.float32), 16000, subtype="PCM_16"),
         "digitally silent: every sample is 0"),
        (lambda p: soundfile.write(p, np.zeros((800, 2), dtype=np.float32), 16000, subtype="FLOAT"),
         "digitally silent"),
    ],
)
def test_bad_clips_say_why(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(BadClip, match=reason):
        read_clip(str(path))


def test_quiet_or_phase_cancelling_clips_are_not_silent(tmp_path):
    path = tmp_path / "quiet.wav"
    quiet = np.zeros(800, dtype=np.float32)
    quiet[400] = 1 / 32768  # one least-significant bit of 16-bit PCM: quiet, but recorded
    soundfile.write(path, quiet, 16000, subtype="PCM_16")
    assert read_clip(str(path))[0].any()
    tone = np.sin(np.arange(800) / 10).astype(np.float32)
    soundfile.write(path, np.stack([tone, -tone], axis=1), 16000, subtype="FLOAT")
    samples, _ = read_clip(str(path))  # the mono mix is zeros, but the channels are not
    assert samples.shape == (800,)


def test_resample_keeps_duration_and_pitch(tmp_path):
    path = write_tone(tmp_path / "a.wav", seconds=1.0, rate=22050, freq=440.0)
    samples, rate = read_clip(str(path))
    out = resample(samples, rate, 16000)
    assert out.dtype == np.float32
    assert out.size == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == 440  # 1-s clip: bin k is k Hz
    assert resample(out, 16000, 16000) is out or np.shares_memory(resample(out, 16000, 16000), out)
