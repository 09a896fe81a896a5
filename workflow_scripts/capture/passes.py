"""What one batch yields: the forward capture (``acts``) and the gradient capture (``grads``).

Both run the classifier exactly as training and evaluation do (``models.encoder.classify``:
cropped batches, masked attention and pooling; the 30-s window under ``legacy``) with forward
hooks (``capture.hooks``) on every encoder block, its self-attention and fc2, and every LoRA
A and B of the adapted modules. Hooks record; nothing in the forward pass is changed.

Notation (paper 3.1, 3.5): block b reads the residual stream x (layer b), its self-attention
adds a, its MLP (fc2) adds m; y = x + a + m is layer b + 1. An adapted module's LoRA A output is
U = A x' (x' the module's own input, e.g. the attention LayerNorm's output for v_proj) and its
B output V = B U, unscaled (the module adds (alpha / r) V).

Results are numpy, per batch: utterance-level arrays (keys as in ``capture.store.SPEC``) and,
for the utterances that keep frame-level rows, a dict per utterance keyed as
``StoreShape.frame_arrays``. Only real frames are returned (all 1500 under ``legacy``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workflow_scripts.capture.hooks import TraceDict
from workflow_scripts.capture.store import CONTRIBUTION_STATISTICS
from workflow_scripts.models.encoder import classification_model, classify, encoder_frame_mask, masked_mean

# Paper 3.1: ‖·‖ / max(‖x‖, 1e-6) and torch's cosine_similarity with eps 1e-8.
NORM_FLOOR = 1e-6
COSINE_EPS = 1e-8


def lora_modules(model: nn.Module) -> dict[tuple[int, str], nn.Module]:
    """``(block, module name) -> peft LoRA layer`` for every adapted module of the encoder."""
    found = {}
    for block, layer in enumerate(classification_model(model).encoder.layers):
        for name, module in layer.named_modules():
            if hasattr(module, "lora_A") and module.active_adapters:
                found[(block, name.rsplit(".", 1)[-1])] = module
    return found


def lora_parts(module: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The active adapter's A and B (``nn.Linear``) of a peft LoRA layer."""
    adapter = module.active_adapters[0]
    return module.lora_A[adapter], module.lora_B[adapter]


def only_lora_requires_grad(model: nn.Module) -> None:
    """Freeze everything but the LoRA A and B weights, so the graph reaches them and nothing else
    (paper 3.5). A model without LoRA is left with nothing to differentiate."""
    model.requires_grad_(False)
    for module in lora_modules(model).values():
        for part in lora_parts(module):
            part.requires_grad_(True)


@dataclass(frozen=True)
class CapturePlan:
    """Which frame-level quantities to return (``capture.*`` settings resolved for the model)."""

    legacy: bool
    resid_layers: tuple[int, ...]  # residual-stream positions 0..L
    lora_b_blocks: tuple[int, ...]  # blocks whose B output is kept


def _module_names(model: nn.Module) -> dict[str, dict]:
    """Names (in the unwrapped classifier) of what is traced, grouped by role."""
    hf = classification_model(model)
    names = {name: module for name, module in hf.named_modules()}
    by_module = {module: name for name, module in names.items()}
    n_blocks = len(hf.encoder.layers)
    lora = {}
    for key, module in lora_modules(model).items():
        a, b = lora_parts(module)
        lora[key] = (by_module[a], by_module[b])
    return {
        "block": [f"encoder.layers.{b}" for b in range(n_blocks)],
        "attn": [f"encoder.layers.{b}.self_attn" for b in range(n_blocks)],
        "mlp": [f"encoder.layers.{b}.fc2" for b in range(n_blocks)],
        "lora": lora,
    }


def frame_mask_of(mel_mask: torch.Tensor, legacy: bool, n_frames: int) -> torch.Tensor:
    """Encoder frames pooled over: the clip's real frames, or every frame under ``legacy``."""
    if legacy:
        return torch.ones((mel_mask.shape[0], n_frames), dtype=torch.bool, device=mel_mask.device)
    return encoder_frame_mask(mel_mask)


def contribution_sums(x: torch.Tensor, a: torch.Tensor, m: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Paper 3.1 per frame, summed over each clip's frames: ``[B, T, d]`` x3 -> ``[B, 6]`` float64
    in the order of ``CONTRIBUTION_STATISTICS``."""
    x_norm = x.norm(dim=-1).clamp_min(NORM_FLOOR)
    both = a + m
    per_frame = torch.stack([
        a.norm(dim=-1) / x_norm,
        m.norm(dim=-1) / x_norm,
        both.norm(dim=-1) / x_norm,
        nn.functional.cosine_similarity(a, x, dim=-1, eps=COSINE_EPS),
        nn.functional.cosine_similarity(m, x, dim=-1, eps=COSINE_EPS),
        nn.functional.cosine_similarity(both, x, dim=-1, eps=COSINE_EPS),
    ], dim=-1).double()
    assert per_frame.shape[-1] == len(CONTRIBUTION_STATISTICS)
    return (per_frame * frame_mask.unsqueeze(-1)).sum(1)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """Host copy; float64 stays float64, anything else becomes float32."""
    tensor = tensor.detach()
    return (tensor if tensor.dtype == torch.float64 else tensor.float()).cpu().numpy()


def _frame_rows(tensors: dict[tuple, torch.Tensor], counts: list[int], keep: list[bool]) -> list[dict | None]:
    """Per utterance, its real frames of each ``[B, T, w]`` tensor (None where not kept)."""
    host = {key: _numpy(tensor) for key, tensor in tensors.items()}
    return [{key: value[i, :n] for key, value in host.items()} if wanted else None
            for i, (n, wanted) in enumerate(zip(counts, keep))]


def capture_forward(model: nn.Module, features: torch.Tensor, mel_mask: torch.Tensor, plan: CapturePlan,
                    keep_frames: list[bool]) -> tuple[dict, list[dict | None]]:
    """One batch, no gradients: ``(utterance arrays, frame rows per utterance)``.

    Utterance arrays: ``logits``, ``prediction``, ``n_frames``, ``resid``, ``normed``, ``attn``,
    ``mlp``, ``contribution``. Frame rows (for ``keep_frames[i]``): the residual stream at
    ``plan.resid_layers``, every adapted module's A output and, at ``plan.lora_b_blocks``, its B
    output.
    """
    names = _module_names(model)
    hf = classification_model(model)
    lora_names = [name for pair in names["lora"].values() for name in pair]
    with torch.no_grad(), TraceDict(hf, names["block"], retain_input=True) as blocks, \
            TraceDict(hf, names["attn"] + names["mlp"] + lora_names) as parts:
        logits = classify(model, features, mel_mask, plan.legacy)
        residual = [blocks[names["block"][0]].input] + [blocks[name].output for name in names["block"]]
        mask = frame_mask_of(mel_mask, plan.legacy, residual[0].shape[1])
        attn = [parts[name].output for name in names["attn"]]
        mlp = [parts[name].output for name in names["mlp"]]
        utterance = {
            "logits": _numpy(logits),
            "prediction": logits.argmax(-1).cpu().numpy(),
            "n_frames": mask.sum(1).cpu().numpy(),
            "resid": np.stack([_numpy(masked_mean(h, mask)) for h in residual], axis=1),
            "normed": np.stack([_numpy(masked_mean(hf.encoder.layer_norm(h), mask)) for h in residual], axis=1),
            "attn": np.stack([_numpy(masked_mean(a, mask)) for a in attn], axis=1),
            "mlp": np.stack([_numpy(masked_mean(m, mask)) for m in mlp], axis=1),
            "contribution": np.stack([
                _numpy(contribution_sums(residual[b], attn[b], mlp[b], mask)) for b in range(len(attn))
            ], axis=1),
        }
        frame_tensors = {("resid", layer): residual[layer] for layer in plan.resid_layers}
        for (block, module), (a_name, b_name) in names["lora"].items():
            frame_tensors[("lora", block, module, "a_out")] = parts[a_name].output
            if block in plan.lora_b_blocks:
                frame_tensors[("lora", block, module, "b_out")] = parts[b_name].output
        rows = _frame_rows(frame_tensors, utterance["n_frames"].tolist(), keep_frames)
    return utterance, rows


def capture_gradients(model: nn.Module, features: torch.Tensor, mel_mask: torch.Tensor, labels: torch.Tensor,
                      legacy: bool) -> tuple[dict, list[dict]]:
    """One batch, forward and backward of the summed per-clip cross-entropy (a clip's gradients
    are those of its own loss: clips do not interact). The model should be in eval mode with
    only its LoRA weights requiring gradients.

    Utterance arrays: ``logits``, ``prediction``, ``loss``, ``n_frames``. Frame rows, every
    utterance: the residual stream at every layer, and U, V, dL/dU, dL/dV of every adapted module.
    """
    names = _module_names(model)
    hf = classification_model(model)
    lora_names = [name for pair in names["lora"].values() for name in pair]
    with TraceDict(hf, names["block"], retain_input=True) as blocks, \
            TraceDict(hf, lora_names, detach=False, retain_grad=True) as lora:
        logits = classify(model, features, mel_mask, legacy)
        losses = nn.functional.cross_entropy(logits, labels, reduction="none")
        if losses.requires_grad:  # a run without LoRA (frozen, full) has nothing to differentiate here
            losses.sum().backward()
        residual = [blocks[names["block"][0]].input] + [blocks[name].output for name in names["block"]]
        mask = frame_mask_of(mel_mask, legacy, residual[0].shape[1])
        utterance = {
            "logits": _numpy(logits),
            "prediction": logits.argmax(-1).cpu().numpy(),
            "loss": _numpy(losses),
            "n_frames": mask.sum(1).cpu().numpy(),
        }
        frame_tensors = {("resid", layer): h for layer, h in enumerate(residual)}
        for (block, module), (a_name, b_name) in names["lora"].items():
            frame_tensors[("lora", block, module, "a_out")] = lora[a_name].output
            frame_tensors[("lora", block, module, "b_out")] = lora[b_name].output
            frame_tensors[("lora", block, module, "a_grad")] = lora[a_name].output_grad
            frame_tensors[("lora", block, module, "b_grad")] = lora[b_name].output_grad
        rows = _frame_rows(frame_tensors, utterance["n_frames"].tolist(), [True] * len(logits))
    return utterance, rows
