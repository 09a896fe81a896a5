"""The Whisper encoder on clips shorter than 30 s, and the emotion classifier around it.

Hugging Face's ``WhisperEncoder.forward`` refuses any input that is not exactly 30 s and adds
the whole 1500-row position table. Rather than mutating the model per batch (its config, its
table), :func:`encode` runs the encoder's own submodules -- ``conv1``, ``conv2``,
``embed_positions``, ``layers``, ``layer_norm`` -- on the batch as it is, adding only the first
``T`` rows of the position table. It relies on those submodule names, the layer call
``layer(hidden, attention_mask)`` and the encoder's ``dropout``; it does not implement
LayerDrop (``encoder_layerdrop``, 0 in every released Whisper) and refuses to train with it; ``tests/test_encoder.py`` pins that the result
equals Hugging Face's forward on 30-s input, so an upgrade that changes the internals fails a
test instead of silently changing results.

Masking, by default: padded mel frames are zeroed before and after ``conv1`` and excluded as
attention keys, so a clip's encoding does not depend on what else is in its batch (it equals the clip
encoded alone), and pooling is a masked mean over the clip's own frames. Under ``legacy`` the
input is the 30-s window, nothing is masked, and pooling is Hugging Face's plain mean over all
1500 positions, as in the original notebook.

LoRA (peft) injects into the same submodules, so everything here works unchanged on a
``PeftModel``; forward hooks on ``encoder.layers[i]`` fire as usual.
"""

from __future__ import annotations

import torch
from torch import nn

from workflow_scripts.errors import InputError


def encoder_frame_mask(mel_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T_mel]`` -> ``[B, ceil(T_mel / 2)]``: encoder frame ``j`` sees mel frame ``2j``."""
    return mel_mask[:, ::2]


def _attention_bias(frame_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask ``[B, 1, 1, T]``: 0 for real frames, a large negative for padding."""
    bias = torch.zeros(frame_mask.shape, dtype=dtype, device=frame_mask.device)
    bias.masked_fill_(~frame_mask, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def encode(encoder: nn.Module, features: torch.Tensor, mel_mask: torch.Tensor | None = None):
    """Run a Whisper encoder on ``features [B, n_mels, T]`` of any even length ``T <= 3000``.

    Returns ``(hidden [B, T/2, d], frame_mask [B, T/2])``, ``hidden`` after the final LayerNorm.
    With ``mel_mask=None`` nothing is masked (the original 30-s behaviour).
    """
    if encoder.training and encoder.layerdrop > 0:
        raise InputError("encoder_layerdrop > 0 is not supported (no released Whisper uses it)")
    length = features.shape[-1]
    positions = encoder.embed_positions.weight
    if length > 2 * positions.shape[0]:
        raise InputError(
            f"{length} mel frames exceed the encoder's {positions.shape[0]} positions "
            f"({positions.shape[0] // 50} s); lower audio.max_seconds"
        )
    if mel_mask is not None:
        # Zero the padding, before and after conv1, so that both convolutions see the clip's
        # end exactly as they would if the clip were encoded alone (zero padding).
        mel_mask = mel_mask[:, None, :].to(features.dtype)
        features = features * mel_mask
    hidden = nn.functional.gelu(encoder.conv1(features))
    if mel_mask is not None:
        hidden = hidden * mel_mask
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + positions[: hidden.shape[1]]
    hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)
    if mel_mask is None:
        frame_mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        bias = None
    else:
        frame_mask = encoder_frame_mask(mel_mask[:, 0].bool())
        bias = _attention_bias(frame_mask, hidden.dtype)
    for layer in encoder.layers:
        hidden = layer(hidden, bias)
    return encoder.layer_norm(hidden), frame_mask


def masked_mean(values: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real frames: ``[B, T, d]``, ``[B, T]`` -> ``[B, d]``."""
    weights = frame_mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def classification_model(model: nn.Module) -> nn.Module:
    """The ``WhisperForAudioClassification`` inside ``model`` (unwraps a ``PeftModel``)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def classify(model: nn.Module, features: torch.Tensor, mel_mask: torch.Tensor, legacy: bool = False):
    """Emotion logits ``[B, C]`` from a (possibly LoRA-adapted) ``WhisperForAudioClassification``.

    Projector, pooling and classifier are the Hugging Face head's own modules; only the pooling
    is masked (by default) or the plain mean over every position (``legacy``).
    """
    hf = classification_model(model)
    if hf.config.use_weighted_layer_sum:
        raise InputError("use_weighted_layer_sum is not supported: the paper's head reads the last layer")
    hidden, frame_mask = encode(hf.encoder, features, None if legacy else mel_mask)
    projected = hf.projector(hidden)
    pooled = projected.mean(1) if legacy else masked_mean(projected, frame_mask)
    return hf.classifier(pooled)


class EmotionClassifier(nn.Module):
    """``classify`` as a module: ``forward(features, mel_mask) -> logits``.

    Holding the (peft-wrapped) Hugging Face model as a submodule keeps ``state_dict``,
    ``train()/eval()`` and hooks working as usual.
    """

    def __init__(self, model: nn.Module, legacy: bool = False):
        super().__init__()
        self.model = model
        self.legacy = legacy

    def forward(self, features: torch.Tensor, mel_mask: torch.Tensor) -> torch.Tensor:
        return classify(self.model, features, mel_mask, self.legacy)
