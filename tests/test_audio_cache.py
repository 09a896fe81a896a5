import numpy as np
import pandas as pd
import pytest

from conftest import write_tone
from workflow_scripts.config import validate_config
from workflow_scripts.data.audio_cache import AudioStore, audio_cache_settings, write_audio_store
from workflow_scripts.errors import InputError


def manifest_of(paths):
    return pd.DataFrame({"utt_id": [p.stem for p in paths], "source": [str(p) for p in paths]})


def test_ragged_store_in_manifest_order_resampled(tmp_path):
    paths = [
        write_tone(tmp_path / "a.wav", seconds=0.5, rate=16000),
        write_tone(tmp_path / "b.wav", seconds=1.0, rate=22050, channels=2),
        write_tone(tmp_path / "c.wav", seconds=2.5, rate=8000),
    ]
    summary = write_audio_store(str(tmp_path / "audio.zarr"), manifest_of(paths), 16000)
    store = AudioStore(str(tmp_path / "audio.zarr"))
    assert store.utt_ids == ["a", "b", "c"] and store.sample_rate == 16000
    assert list(np.diff(store.offsets)) == [8000, 16000, 40000]
    assert store[0].dtype == np.float32
    import soundfile

    np.testing.assert_allclose(store[0], soundfile.read(paths[0], dtype="float32")[0], atol=1e-6)
    assert summary == {"clips": 3, "hours": pytest.approx(4.0 / 3600), "longest_seconds": 2.5}
    store.check_matches(manifest_of(paths))
    with pytest.raises(InputError, match="does not match the manifest"):
        store.check_matches(manifest_of(paths[:2]))


def test_many_clips_span_write_blocks(tmp_path):
    paths = [write_tone(tmp_path / f"u{i:03d}.wav", seconds=0.01 * (i + 1)) for i in range(70)]
    write_audio_store(str(tmp_path / "a.zarr"), manifest_of(paths), 16000)
    store = AudioStore(str(tmp_path / "a.zarr"))
    assert len(store) == 70
    assert [store[i].size for i in (0, 63, 64, 69)] == [160, 10240, 10400, 11200]


def test_failure_leaves_no_store(tmp_path):
    good = write_tone(tmp_path / "good.wav")
    missing = tmp_path / "missing.wav"
    with pytest.raises(Exception):
        write_audio_store(str(tmp_path / "a.zarr"), manifest_of([good, missing]), 16000)
    assert not (tmp_path / "a.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.wav"]


def test_the_cache_depends_on_the_sample_rate_only():
    """audio.max_seconds crops in training; changing it must not rebuild the cache."""
    short = validate_config({"audio": {"sample_rate": 16000, "max_seconds": 10}})
    assert audio_cache_settings(short) == {"sample_rate": 16000}
    assert audio_cache_settings(validate_config({"audio": {"max_seconds": 30}})) == audio_cache_settings(short)
