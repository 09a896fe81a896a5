"""Model specs resolve to checkpoint folders: tiny random, local folder, hub (offline error)."""

import json

import pytest
import torch

from workflow_scripts.config import validate_config
from workflow_scripts.errors import InputError
from workflow_scripts.models.build import PROVENANCE_FILE, build_checkpoint, load_classifier

CLASSES = ["neutral", "happy", "angry", "sad"]


def model_spec(**spec):
    return validate_config({"models": {"m": spec}})["models"]["m"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    build_checkpoint("tiny", model_spec(source="tiny_random", layers=3, d_model=48, heads=4, ffn_dim=96, seed=7), out)
    return out


def test_tiny_random_checkpoint_has_the_configured_shape(tiny):
    config = json.loads((tiny / "config.json").read_text())
    assert (config["encoder_layers"], config["d_model"], config["encoder_attention_heads"],
            config["encoder_ffn_dim"], config["num_mel_bins"]) == (3, 48, 4, 96, 80)
    assert (tiny / "model.safetensors").is_file() and (tiny / "preprocessor_config.json").is_file()
    record = json.loads((tiny / PROVENANCE_FILE).read_text())
    assert record["tiny"]["seed"] == 7 and record["settings"]["source"] == "tiny_random"


def test_tiny_random_is_seeded(tiny, tmp_path):
    again = tmp_path / "again"
    build_checkpoint("tiny", model_spec(source="tiny_random", layers=3, d_model=48, heads=4, ffn_dim=96, seed=7), again)
    assert (again / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    other = tmp_path / "other"
    build_checkpoint("tiny", model_spec(source="tiny_random", layers=3, d_model=48, heads=4, ffn_dim=96, seed=8), other)
    assert (other / "model.safetensors").read_bytes() != (tiny / "model.safetensors").read_bytes()


def test_classifier_initialises_only_the_head_and_is_seeded(tiny):
    a = load_classifier(tiny, CLASSES, seed=1)
    b = load_classifier(tiny, CLASSES, seed=1)
    c = load_classifier(tiny, CLASSES, seed=2)
    assert a.config.id2label == dict(enumerate(CLASSES)) and a.classifier.out_features == 4
    torch.testing.assert_close(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    torch.testing.assert_close(a.encoder.layers[0].fc1.weight, c.encoder.layers[0].fc1.weight)


def test_local_folder_is_copied_and_a_bad_folder_is_named(tiny, tmp_path):
    build_checkpoint("mine", model_spec(source="local", path=str(tiny)), tmp_path / "mine")
    assert (tmp_path / "mine" / "model.safetensors").is_file()
    with pytest.raises(InputError, match=r"models\.mine\.path: .* is not a Hugging Face checkpoint folder"):
        build_checkpoint("mine", model_spec(source="local", path=str(tmp_path)), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_mel_bin_mismatch_is_refused(tiny, tmp_path):
    with pytest.raises(InputError, match=r"models\.mine\.num_mel_bins is 128 but the checkpoint expects 80"):
        build_checkpoint("mine", model_spec(source="local", path=str(tiny), num_mel_bins=128), tmp_path / "y")


def test_hub_without_network_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # Offline mode answers at once; with no network the hub client would retry for a while first.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError) as error:
        build_checkpoint("large", model_spec(source="hub", id="openai/whisper-large-v2"), tmp_path / "large")
    message = str(error.value)
    assert "models.large: could not load 'openai/whisper-large-v2' from the Hugging Face hub" in message
    assert "source: local" in message and "offline_whisper_base" in message


@pytest.mark.parametrize("spec, expected", [
    ({"source": "hub"}, r"models\.m: 'id' is a required property"),
    ({"source": "local"}, r"models\.m: 'path' is a required property"),
    ({"source": "huggingface"}, r"models\.m\.source: 'huggingface' is not one of"),
])
def test_bad_model_specs_name_the_key(spec, expected):
    with pytest.raises(InputError, match=expected):
        model_spec(**spec)


def test_tiny_heads_must_divide_width(tmp_path):
    with pytest.raises(InputError, match=r"heads \(3\) must divide d_model \(64\)"):
        build_checkpoint("t", model_spec(source="tiny_random", heads=3), tmp_path / "t")


@pytest.mark.parametrize("method, targets, rank", [("lora", "q_proj+v_proj", 4), ("frozen", "none", 0),
                                                   ("full", "none", 0)])
def test_a_float16_checkpoint_trains_with_float32_weights(tiny, tmp_path, method, targets, rank):
    """transformers 5 loads a checkpoint in its stored dtype by default; training must not run
    on fp16 master weights (GPUs get bf16 through autocast instead)."""
    import shutil

    from transformers import WhisperForConditionalGeneration

    from workflow_scripts.runs import Run
    from workflow_scripts.train.methods import build_model

    half = tmp_path / "half"
    WhisperForConditionalGeneration.from_pretrained(tiny).half().save_pretrained(half)
    shutil.copy(tiny / "preprocessor_config.json", half)
    # The checkpoint folder keeps the stored precision (a copy, not a conversion).
    build_checkpoint("half", model_spec(source="local", path=str(half)), tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["dtype"] == "float16"

    lora = validate_config({})["training"]["lora"]
    model = build_model(tmp_path / "model", CLASSES, Run("d", "p", "half", method, targets, rank, 0, 1), lora)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert any(p.requires_grad for p in model.parameters())
    assert {name: d for name, d in dtypes.items() if d != torch.float32} == {}
