"""Hook context managers: what they record, that edits take effect, and that they always clean up."""

import pytest
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from workflow_scripts.capture.hooks import Trace, TraceDict

LAYERS = 3


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, encoder_layers=LAYERS, encoder_attention_heads=2, encoder_ffn_dim=64,
                           num_mel_bins=16, max_source_positions=20, init_std=0.1)
    return WhisperEncoder(config).eval()


@pytest.fixture
def features():
    return torch.randn(2, 16, 40, generator=torch.Generator().manual_seed(1))


def layer_names(count=LAYERS):
    return [f"layers.{i}" for i in range(count)]


def hook_ids(module: torch.nn.Module) -> set:
    """Ids of every forward hook set on ``module`` and its children (transformers sets some of its
    own, lazily, on the first forward that asks for hidden states)."""
    return {hook_id for m in module.modules() for hook_id in m._forward_hooks}


def ours(traces) -> set:
    return {handle.id for trace in traces.values() for handle in trace._handles}


def test_layer_outputs_equal_the_hidden_states_of_an_independent_forward(encoder, features):
    with torch.no_grad(), TraceDict(encoder, layer_names(), retain_input=True) as traces:
        set_here = ours(traces)
        out = encoder(features, output_hidden_states=True)
    # hidden_states[l] is the input of layer l; the last entry is after the final LayerNorm.
    for layer in range(LAYERS):
        torch.testing.assert_close(traces[f"layers.{layer}"].input, out.hidden_states[layer], rtol=0, atol=0)
    for layer in range(LAYERS - 1):
        torch.testing.assert_close(traces[f"layers.{layer}"].output, out.hidden_states[layer + 1], rtol=0, atol=0)
    torch.testing.assert_close(encoder.layer_norm(traces[f"layers.{LAYERS - 1}"].output), out.last_hidden_state)
    assert len(set_here) == LAYERS and not set_here & hook_ids(encoder)


def test_recorded_gradients_equal_autograd(encoder, features):
    with TraceDict(encoder, ["layers.1", "layers.1.self_attn"], retain_grad=True, detach=False) as traces:
        loss = encoder(features).last_hidden_state.pow(2).mean()
        expected = torch.autograd.grad(loss, [traces["layers.1"].output, traces["layers.1.self_attn"].output],
                                       retain_graph=True)
        loss.backward()
    torch.testing.assert_close(traces["layers.1"].output_grad, expected[0])
    torch.testing.assert_close(traces["layers.1.self_attn"].output_grad, expected[1])


def test_an_edit_takes_effect_and_skipping_a_block_equals_running_without_it(encoder, features):
    before = hook_ids(encoder)
    with torch.no_grad():
        with Trace(encoder.layers[1], edit_output=lambda output, name, inputs: inputs):
            skipped = encoder(features).last_hidden_state
        without = torch.nn.ModuleList([encoder.layers[0], encoder.layers[2]])
        full_layers, encoder.layers = encoder.layers, without
        expected = encoder(features).last_hidden_state
        encoder.layers = full_layers
        normal = encoder(features).last_hidden_state
    torch.testing.assert_close(skipped, expected, rtol=0, atol=0)
    assert not torch.allclose(skipped, normal)
    assert hook_ids(encoder) == before


def test_hooks_are_removed_when_the_block_raises(encoder, features):
    before = hook_ids(encoder)
    with pytest.raises(RuntimeError, match="boom"):
        with TraceDict(encoder, layer_names()):
            encoder(features)
            raise RuntimeError("boom")
    assert hook_ids(encoder) == before


def test_unknown_names_are_refused_before_any_hook_is_set(encoder):
    before = hook_ids(encoder)
    with pytest.raises(KeyError, match=r"layers\.9"):
        TraceDict(encoder, ["layers.0", "layers.9"]).__enter__()
    assert hook_ids(encoder) == before


def test_gradients_need_the_graph():
    with pytest.raises(ValueError, match="detach=False"):
        Trace(torch.nn.Linear(2, 2), retain_grad=True)
