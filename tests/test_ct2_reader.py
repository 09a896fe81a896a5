"""Known-answer tests of the CTranslate2 model.bin reader (workflow_scripts/models/ct2.py).

The files are written here by a few lines that follow CTranslate2's ``ModelSpec._serialize``,
so every expected value is known exactly.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from workflow_scripts.errors import InputError
from workflow_scripts.models.ct2 import read_ct2_model

#: numpy dtype -> CTranslate2 dtype code. bfloat16 (5) is written by hand from float32 bits.
CODES = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
         np.dtype("float16"): 4}
BFLOAT16 = 5


def ct2_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_variable(name: str, array: np.ndarray, code: int | None = None) -> bytes:
    """One variable record; ``code=BFLOAT16`` stores a float32 array's top 16 bits."""
    array = np.asarray(array)
    if code == BFLOAT16:
        data = (array.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    else:
        code = CODES[array.dtype]
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return (ct2_string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
            + struct.pack("<BI", code, len(data)) + data)


def ct2_model_bytes(variables: dict, aliases: dict | None = None, spec: str = "WhisperSpec",
                    version: int = 6, revision: int = 3) -> bytes:
    """A whole model.bin. ``variables``: name -> array, or name -> (array, dtype code).

    Names are written sorted, as CTranslate2 does.
    """
    out = struct.pack("<I", version) + ct2_string(spec) + struct.pack("<II", revision, len(variables))
    for name in sorted(variables):
        value = variables[name]
        out += ct2_variable(name, *value) if isinstance(value, tuple) else ct2_variable(name, value)
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += ct2_string(alias) + ct2_string(target)
    return out


def write_parts(blob: bytes, folder: Path, cuts: list[int]) -> list[Path]:
    """Split ``blob`` at byte offsets ``cuts`` into model.bin.part1, part2, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    edges = [0, *cuts, len(blob)]
    parts = []
    for index, (start, end) in enumerate(zip(edges, edges[1:]), start=1):
        path = folder / f"model.bin.part{index}"
        path.write_bytes(blob[start:end])
        parts.append(path)
    return parts


# Values exactly representable in every stored dtype, so the answers are exact.
F32 = np.array([[1.5, -2.25, 3.0], [0.1, 1e-8, -7.0]], dtype=np.float32)
F16 = np.array([0.5, -1.0, 65504.0, 2.0**-14], dtype=np.float16)
BF16 = np.array([[1.0, -2.5, 1.0078125], [2.0**127, 2.0**-100, -0.0]], dtype=np.float32)  # exact in bfloat16
INT8_Q = np.array([[10, -20, 30], [-128, 127, 4]], dtype=np.int8)
INT8_SCALE = np.array([2.0, 4.0], dtype=np.float32)  # one per output row
INT16_Q = np.array([[100, -200], [300, 32767]], dtype=np.int16)
INT16_SCALE = np.array(4.0, dtype=np.float32)  # CTranslate2's int16 uses one scale


def toy_variables() -> dict:
    return {
        "decoder/embeddings/weight": F32,
        "decoder/layer_0/ffn/linear_0/bias": F16,
        "decoder/layer_0/ffn/linear_0/weight": INT8_Q,
        "decoder/layer_0/ffn/linear_0/weight_scale": INT8_SCALE,
        "decoder/layer_0/ffn/linear_1/weight": INT16_Q,
        "decoder/layer_0/ffn/linear_1/weight_scale": INT16_SCALE,
        "decoder/num_heads": np.array(8, dtype=np.int16),
        "decoder/pre_norm": np.array(1, dtype=np.int8),
        "decoder/alignment_layer": np.array(-1, dtype=np.int16),
        "encoder/big": np.array(123456789, dtype=np.int32),
        "encoder/layer_0/attention/bf16": (BF16, BFLOAT16),
    }


TOY_ALIASES = {"decoder/projection/weight": "decoder/embeddings/weight"}


@pytest.fixture
def toy_blob() -> bytes:
    return ct2_model_bytes(toy_variables(), TOY_ALIASES)


def check_toy(variables: dict, aliases: dict, header: dict) -> None:
    assert list(variables) == sorted(variables), "file order is CTranslate2's sorted order"
    assert "decoder/layer_0/ffn/linear_0/weight_scale" not in variables, "scales are consumed"
    np.testing.assert_array_equal(variables["decoder/embeddings/weight"], F32)
    assert variables["decoder/embeddings/weight"].dtype == np.float32
    np.testing.assert_array_equal(variables["decoder/layer_0/ffn/linear_0/bias"], F16)
    assert variables["decoder/layer_0/ffn/linear_0/bias"].dtype == np.float16
    np.testing.assert_array_equal(variables["encoder/layer_0/attention/bf16"], BF16)
    assert variables["encoder/layer_0/attention/bf16"].dtype == np.float32
    np.testing.assert_array_equal(variables["decoder/layer_0/ffn/linear_0/weight"],
                                  [[5.0, -10.0, 15.0], [-32.0, 31.75, 1.0]])
    np.testing.assert_array_equal(variables["decoder/layer_0/ffn/linear_1/weight"],
                                  [[25.0, -50.0], [75.0, 8191.75]])
    assert variables["decoder/layer_0/ffn/linear_1/weight"].dtype == np.float32
    scalars = [("decoder/num_heads", 8, np.int16), ("decoder/pre_norm", 1, np.int8),
               ("decoder/alignment_layer", -1, np.int16), ("encoder/big", 123456789, np.int32)]
    for name, value, dtype in scalars:
        assert variables[name].shape == () and variables[name] == value and variables[name].dtype == dtype
    assert aliases == TOY_ALIASES
    assert header["spec_name"] == "WhisperSpec" and header["format_version"] == 6
    assert header["spec_revision"] == 3 and header["n_variables"] == 11 and header["n_aliases"] == 1
    assert header["dequantized"] == 2
    assert header["stored_dtypes"] == {"bfloat16": 1, "float16": 1, "float32": 3, "int16": 3, "int32": 1,
                                       "int8": 2}


def test_reads_every_dtype_across_two_parts_at_an_awkward_boundary(tmp_path, toy_blob):
    # 37 bytes in: inside the name of the first variable (header is 4 + 14 + 8 = 26 bytes).
    parts = write_parts(toy_blob, tmp_path, [37])
    variables, aliases, header = read_ct2_model(parts)
    check_toy(variables, aliases, header)
    assert header["n_bytes"] == len(toy_blob)
    assert header["parts"] == [str(part) for part in parts]


def test_every_split_point_reads_the_same(tmp_path, toy_blob):
    """A part boundary anywhere (inside a string, a shape, a dtype, the data) makes no difference."""
    for cut in range(1, len(toy_blob)):
        check_toy(*read_ct2_model(write_parts(toy_blob, tmp_path / "p", [cut])))


def test_three_parts_and_an_empty_part(tmp_path, toy_blob):
    parts = write_parts(toy_blob, tmp_path, [100, 100, 301])
    assert parts[1].stat().st_size == 0
    check_toy(*read_ct2_model(parts))


def test_a_truncated_file_names_the_variable_it_ends_in(tmp_path, toy_blob):
    variables = toy_variables()
    names = sorted(variables)
    # End the stream 3 bytes into the data of the 4th variable (the int8 weight).
    head = ct2_model_bytes({}, spec="WhisperSpec")[:-8]  # header up to the variable count
    head += struct.pack("<I", len(variables))
    offset = len(head) + sum(len(ct2_variable(n, variables[n])) for n in names[:3])
    record = ct2_variable(names[3], variables[names[3]])
    end = offset + len(record) - INT8_Q.nbytes + 3
    parts = write_parts(toy_blob[:end], tmp_path, [end // 2])
    with pytest.raises(InputError) as error:
        read_ct2_model(parts)
    message = str(error.value)
    assert f"ends inside variable #4 of 11 '{names[3]}'" in message
    assert "the weights package is incomplete" in message
    assert str(parts[0]) in message and str(parts[1]) in message
    assert f"needs bytes up to {offset + len(record):,} but the file has {end:,}" in message


def test_a_file_cut_inside_the_aliases_or_the_header(tmp_path, toy_blob):
    with pytest.raises(InputError, match=r"ends inside alias #1 of 1: .* the weights package is incomplete"):
        read_ct2_model(write_parts(toy_blob[:-5], tmp_path / "a", []))
    with pytest.raises(InputError, match="ends inside the header"):
        read_ct2_model(write_parts(toy_blob[:10], tmp_path / "b", []))


def test_a_missing_part_file(tmp_path, toy_blob):
    parts = write_parts(toy_blob, tmp_path, [50])
    with pytest.raises(InputError, match=r"part file\(s\) not found: .*model.bin.part3"):
        read_ct2_model([*parts, tmp_path / "model.bin.part3"])


def test_wrong_spec_name(tmp_path):
    blob = ct2_model_bytes({"encoder/x": F32}, spec="TransformerSpec")
    expected = "holds a CTranslate2 'TransformerSpec' model; expected 'WhisperSpec'"
    with pytest.raises(InputError, match=expected):
        read_ct2_model(write_parts(blob, tmp_path, []))


def test_wrong_format_version(tmp_path):
    blob = ct2_model_bytes({"encoder/x": F32}, version=5)
    with pytest.raises(InputError, match="not a CTranslate2 model.bin of format version 6: .* version 5"):
        read_ct2_model(write_parts(blob, tmp_path, []))


def test_parts_out_of_order_are_refused(tmp_path, toy_blob):
    first, second = write_parts(toy_blob, tmp_path, [120])
    with pytest.raises(InputError):
        read_ct2_model([second, first])


def test_trailing_bytes_are_refused(tmp_path, toy_blob):
    with pytest.raises(InputError, match="3 bytes after its last alias"):
        read_ct2_model(write_parts(toy_blob + b"xyz", tmp_path, []))


def test_a_size_that_disagrees_with_the_shape(tmp_path):
    blob = bytearray(ct2_model_bytes({"encoder/x": F32}))
    # nbytes sits right before the 24 data bytes and the 4-byte alias count.
    struct.pack_into("<I", blob, len(blob) - 4 - 24 - 4, 20)
    expected = r"'encoder/x' claims 20 bytes but shape \[2, 3\] of float32 needs 24"
    with pytest.raises(InputError, match=expected):
        read_ct2_model(write_parts(bytes(blob), tmp_path, []))


def test_an_unknown_dtype_code(tmp_path):
    blob = bytearray(ct2_model_bytes({"encoder/x": F32}))
    struct.pack_into("<B", blob, len(blob) - 4 - 24 - 4 - 1, 9)
    with pytest.raises(InputError, match="has dtype code 9"):
        read_ct2_model(write_parts(bytes(blob), tmp_path, []))


def test_an_alias_to_nothing(tmp_path):
    blob = ct2_model_bytes({"encoder/x": F32}, {"a": "encoder/missing"})
    with pytest.raises(InputError, match="alias 'a' points to 'encoder/missing'"):
        read_ct2_model(write_parts(blob, tmp_path, []))
