"""The short-clip encoder: pinned against Hugging Face's own forward, batch-independent, masked."""

import pytest
import torch
from transformers import WhisperConfig, WhisperForAudioClassification

from workflow_scripts.errors import InputError
from workflow_scripts.models.encoder import EmotionClassifier, classify, encode, masked_mean


def tiny_classifier(impl="sdpa", seed=0):
    torch.manual_seed(seed)
    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           num_labels=4, attn_implementation=impl)
    return WhisperForAudioClassification(config).eval()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_full_window_equals_hugging_face(impl):
    """Pins the behaviour across transformers upgrades: on 30-s input we are HF's forward."""
    model = tiny_classifier(impl)
    features = torch.randn(2, 80, 3000)
    with torch.no_grad():
        ours, mask = encode(model.encoder, features)
        torch.testing.assert_close(ours, model.encoder(features).last_hidden_state, rtol=0, atol=1e-6)
        torch.testing.assert_close(classify(model, features, None, legacy=True), model(features).logits,
                                   rtol=0, atol=1e-6)
    assert mask.all() and mask.shape == (2, 1500)


def test_cropped_input_equals_hugging_face_with_a_cut_position_table():
    """The notes' recipe (cut table + max_source_positions) gives the same result on 4-s input."""
    model = tiny_classifier()
    features = torch.randn(2, 80, 400)
    with torch.no_grad():
        ours, _ = encode(model.encoder, features)
        model.encoder.embed_positions = torch.nn.Embedding.from_pretrained(
            model.encoder.embed_positions.weight[:200].clone(), freeze=True)
        model.config.max_source_positions = 200
        reference = model.encoder(features).last_hidden_state
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_a_clip_encodes_the_same_alone_and_in_a_padded_batch(impl):
    model = tiny_classifier(impl)
    short, long = torch.randn(1, 80, 200), torch.randn(1, 80, 350)
    batch = torch.full((2, 80, 350), -1.5)
    batch[0, :, :200], batch[1] = short[0], long[0]
    mask = torch.zeros(2, 350, dtype=torch.bool)
    mask[0, :200], mask[1] = True, True
    with torch.no_grad():
        alone, _ = encode(model.encoder, short, torch.ones(1, 200, dtype=torch.bool))
        together, frame_mask = encode(model.encoder, batch, mask)
        logits_alone = classify(model, short, torch.ones(1, 200, dtype=torch.bool))
        logits_together = classify(model, batch, mask)
    assert frame_mask.sum(1).tolist() == [100, 175]
    torch.testing.assert_close(together[0, :100], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_together[0], logits_alone[0], rtol=0, atol=1e-5)


def test_masked_mean_known_answer():
    values = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert masked_mean(values, mask).tolist() == [[2.0], [4.0]]


def test_module_wrapper_and_too_long_input():
    model = tiny_classifier()
    classifier = EmotionClassifier(model).eval()
    features, mask = torch.randn(3, 80, 100), torch.ones(3, 100, dtype=torch.bool)
    with torch.no_grad():
        assert classifier(features, mask).shape == (3, 4)
    with pytest.raises(InputError, match="3002 mel frames exceed the encoder's 1500 positions"):
        encode(model.encoder, torch.randn(1, 80, 3002))


def test_lora_is_active_through_the_short_clip_path():
    from peft import LoraConfig, get_peft_model

    model = tiny_classifier()
    features, mask = torch.randn(2, 80, 120), torch.ones(2, 120, dtype=torch.bool)
    with torch.no_grad():
        before = classify(model, features, mask)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"],
                                                  modules_to_save=["projector", "classifier"]))
    with torch.no_grad():
        torch.testing.assert_close(classify(peft_model, features, mask), before)  # B = 0 at init
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.1)
        assert not torch.allclose(classify(peft_model, features, mask), before)
