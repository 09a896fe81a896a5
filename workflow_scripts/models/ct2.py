"""Read a CTranslate2 ``model.bin`` (binary format version 6) into numpy arrays, without ctranslate2.

Why: the offline Whisper weights come as a CTranslate2 model split across pip packages
(``model.bin.part1``, ``model.bin.part2``, ...). The parts are one byte stream in order; they
are read one after the other here, never joined into a temporary file.

The format, as CTranslate2's ``ModelSpec._serialize`` writes it (all little-endian)::

    string  := uint16 n, then n bytes of UTF-8 whose last byte is NUL
    header  := uint32 version (= 6), string spec_name ("WhisperSpec"), uint32 spec_revision,
               uint32 n_variables
    variable:= string name, uint8 rank, rank x uint32 dims, uint8 dtype, uint32 nbytes,
               nbytes of row-major data (the PyTorch layout: Linear [out, in], Conv1d [out, in, k])
    trailer := uint32 n_aliases, then n_aliases x (string alias, string target)

dtype codes: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Rank-0 variables are
scalar flags (``decoder/num_heads``, ``decoder/pre_norm``, ...). Variables are stored sorted by
name, so a truncated Whisper file loses ``encoder/*`` first. An aliased name (Whisper's tied
``decoder/projection/weight``) is stored once, under its target.

A quantized model stores an int8/int16 ``.../weight`` next to a float32 ``.../weight_scale``
(one value per output row for int8, a single value for int16); the real weight is
``q / scale``. :func:`read_ct2_model` returns such weights dequantized to float32 and drops the
scales; every other variable keeps its stored dtype (bfloat16 becomes float32, which numpy
lacks, exactly: a bfloat16 is the top half of a float32).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from workflow_scripts.errors import InputError

FORMAT_VERSION = 6
WHISPER_SPEC = "WhisperSpec"

#: CTranslate2's DataType codes -> (name, numpy dtype of the stored bytes).
DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # raw bits; widened to float32 below
}
QUANTIZED = ("int8", "int16")
INCOMPLETE_HINT = "the weights package is incomplete (or its parts are missing or out of order)"


def describe_parts(parts: Sequence[Path]) -> str:
    """How an error names the model file: the part paths joined with '+'."""
    return " + ".join(str(part) for part in parts)


class PartStream:
    """The part files read as one stream of bytes, in order.

    ``where`` says what is being read; if the stream ends early, the error names it.
    """

    def __init__(self, parts: Sequence[str | Path]):
        self.parts = [Path(part) for part in parts]
        if not self.parts:
            raise InputError("no model.bin part files were given")
        missing = [str(part) for part in self.parts if not part.is_file()]
        if missing:
            raise InputError(f"model.bin part file(s) not found: {', '.join(missing)} — {INCOMPLETE_HINT}")
        self.total = sum(part.stat().st_size for part in self.parts)
        self.offset = 0
        self.where = "the header"
        self._next_part = 0
        self._handle = None

    def __enter__(self) -> PartStream:
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def read(self, n: int) -> bytearray:
        """Exactly ``n`` bytes, crossing part boundaries as needed."""
        buffer = bytearray(n)
        view = memoryview(buffer)
        filled = 0
        while filled < n:
            if self._handle is None:
                if self._next_part == len(self.parts):
                    self._raise_truncated(self.offset + n)
                self._handle = open(self.parts[self._next_part], "rb")  # noqa: SIM115 (closed in _close)
                self._next_part += 1
            got = self._handle.readinto(view[filled:])
            if not got:
                self._close()
            filled += got or 0
        self.offset += n
        return buffer

    def _raise_truncated(self, needed: int) -> None:
        raise InputError(
            f"model.bin ({describe_parts(self.parts)}) ends inside {self.where}: it needs bytes up to "
            f"{needed:,} but the file has {self.total:,} — {INCOMPLETE_HINT}"
        )

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))

    def uint(self, fmt: str = "I") -> int:
        return self.unpack(fmt)[0]

    def string(self) -> str:
        raw = self.read(self.uint("H"))
        if not raw or raw[-1] != 0:
            raise InputError(
                f"model.bin ({describe_parts(self.parts)}) is corrupt: {self.where} holds a string "
                f"without its closing NUL byte at offset {self.offset:,}"
            )
        return raw[:-1].decode("utf-8")


def read_header(stream: PartStream) -> dict:
    """Read and check the header; a non-Whisper or foreign file is an InputError."""
    version = stream.uint()
    if version != FORMAT_VERSION:
        raise InputError(
            f"{describe_parts(stream.parts)} is not a CTranslate2 model.bin of format version "
            f"{FORMAT_VERSION}: its first 4 bytes read version {version}"
        )
    spec_name = stream.string()
    if spec_name != WHISPER_SPEC:
        raise InputError(
            f"{describe_parts(stream.parts)} holds a CTranslate2 {spec_name!r} model; expected "
            f"{WHISPER_SPEC!r} (a Whisper model)"
        )
    revision = stream.uint()
    return {"format_version": version, "spec_name": spec_name, "spec_revision": revision,
            "n_variables": stream.uint()}


def read_variable(stream: PartStream) -> tuple[str, np.ndarray, str]:
    """One variable: its name, its array (stored dtype; bfloat16 widened) and its dtype name."""
    name = stream.string()
    stream.where += f" {name!r}"
    rank = stream.uint("B")
    shape = stream.unpack(f"{rank}I") if rank else ()
    code, nbytes = stream.unpack("BI")
    if code not in DTYPES:
        raise InputError(
            f"{describe_parts(stream.parts)}: {stream.where} has dtype code {code}; "
            f"expected one of {sorted(DTYPES)}"
        )
    dtype_name, dtype = DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes != expected:
        raise InputError(
            f"{describe_parts(stream.parts)}: {stream.where} claims {nbytes:,} bytes but shape "
            f"{list(shape)} of {dtype_name} needs {expected:,}"
        )
    array = np.frombuffer(stream.read(nbytes), dtype=dtype).reshape(shape)
    if dtype_name == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return name, array, dtype_name


def read_aliases(stream: PartStream, names: set[str]) -> dict[str, str]:
    count = stream.uint()
    aliases = {}
    for index in range(count):
        stream.where = f"alias #{index + 1} of {count}"
        alias, target = stream.string(), stream.string()
        if target not in names:
            raise InputError(
                f"{describe_parts(stream.parts)}: alias {alias!r} points to {target!r}, "
                "which is not a stored variable"
            )
        aliases[alias] = target
    return aliases


def dequantize(variables: dict[str, np.ndarray], dtypes: dict[str, str]) -> int:
    """Replace each quantized ``.../weight`` by ``q / scale`` (float32) and drop its scale.

    Returns how many weights were dequantized.
    """
    done = 0
    for scale_name in [name for name in variables if name.endswith("/weight_scale")]:
        weight_name = scale_name.removesuffix("_scale")
        if dtypes.get(weight_name) not in QUANTIZED:
            continue
        quantized = variables[weight_name].astype(np.float32)
        scale = variables.pop(scale_name).astype(np.float32)
        # int8 has one scale per output row (axis 0); int16 one for the whole matrix.
        scale = scale.reshape(scale.shape + (1,) * (quantized.ndim - scale.ndim))
        variables[weight_name] = quantized / scale
        done += 1
    return done


def read_ct2_model(parts: Sequence[str | Path]) -> tuple[dict[str, np.ndarray], dict[str, str], dict]:
    """Read a WhisperSpec ``model.bin`` given as its part files, in order.

    Returns ``(variables, aliases, header)``: arrays by CT2 name in file order, ``{alias:
    target}``, and the header plus ``n_bytes``, ``parts``, ``stored_dtypes`` (counts) and
    ``dequantized`` (how many int8/int16 weights were turned into float32).
    """
    with PartStream(parts) as stream:
        header = read_header(stream)
        variables: dict[str, np.ndarray] = {}
        dtypes: dict[str, str] = {}
        count = header["n_variables"]
        for index in range(count):
            stream.where = f"variable #{index + 1} of {count}"
            name, array, dtype_name = read_variable(stream)
            variables[name], dtypes[name] = array, dtype_name
        aliases = read_aliases(stream, set(variables))
        if stream.offset != stream.total:
            raise InputError(
                f"model.bin ({describe_parts(stream.parts)}) has {stream.total - stream.offset:,} bytes "
                "after its last alias, where it should end — are these the right parts, in order?"
            )
    header.update(
        n_aliases=len(aliases),
        n_bytes=stream.total,
        parts=[str(part) for part in stream.parts],
        stored_dtypes=dict(sorted(Counter(dtypes.values()).items())),
        dequantized=dequantize(variables, dtypes),
    )
    return variables, aliases, header
