"""Build the model of a run's method, and save / load what a run trained.

Methods:

``lora``         peft LoRA on the run's target modules and rank, head in ``modules_to_save``
``frozen``       encoder frozen, only the head (projector, classifier) trained
``full``         every weight trained
``lora_init``    an untrained reference: peft's own initialisation (A Kaiming-uniform, B = 0)
``lora_random``  an untrained reference as in the original notebook: A and B ~ N(0, 0.02)

Both references are seeded by the run's seed (the original's were not). What a run saves in
its ``weights/`` folder:

* LoRA methods: ``PeftModel.save_pretrained`` (``adapter_config.json``,
  ``adapter_model.safetensors`` with the head), loadable with plain ``PeftModel.from_pretrained``;
* ``frozen``: ``head.safetensors`` (projector and classifier);
* ``full``: the whole classifier, ``save_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from workflow_scripts.errors import InputError
from workflow_scripts.models.build import load_classifier
from workflow_scripts.runs import LORA_METHODS, Run

HEAD_MODULES = ["projector", "classifier"]
RANDOM_LORA_STD = 0.02  # the original notebook's "untrained LoRA"


def lora_alpha(rank: int, lora: dict) -> float:
    """``alpha = ratio x rank`` (default ratio 2, the paper's 64 at rank 32) or a fixed alpha."""
    return lora["alpha"] * rank if lora["alpha_policy"] == "ratio" else lora["alpha"]


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """Refuse target modules that match nothing, before peft (or training) starts."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.encoder.named_modules()}
    missing = sorted(set(targets) - leaf_names)
    if missing:
        raise InputError(
            f"training.targets: {missing} match no module of the encoder "
            f"(it has {sorted(n for n in leaf_names if n and not n.isdigit())})"
        )


def build_model(checkpoint: str | Path, classes: list[str], run: Run, lora: dict | None) -> nn.Module:
    """The Hugging Face classifier of ``run``, prepared for its method (peft-wrapped for LoRA;
    ``lora`` is ``training.lora``, None for the methods without LoRA)."""
    model = load_classifier(checkpoint, classes, seed=run.seed)
    if run.method == "frozen":
        model.freeze_encoder()
        return model
    if run.method == "full":
        # Whisper's sinusoidal position table is fixed (WhisperEncoder freezes it at construction;
        # loading a checkpoint makes it trainable again).
        model.encoder.embed_positions.requires_grad_(False)
        return model
    if run.method not in LORA_METHODS:
        raise InputError(f"unknown training method {run.method!r}")
    if run.rank <= 0:
        raise InputError(f"training.ranks: a LoRA rank must be positive, got {run.rank}")
    from peft import LoraConfig, get_peft_model

    check_targets(model, run.target_modules)
    config = LoraConfig(
        r=run.rank, lora_alpha=lora_alpha(run.rank, lora), lora_dropout=lora["dropout"],
        target_modules=run.target_modules, modules_to_save=HEAD_MODULES, bias="none",
    )
    torch.manual_seed(run.seed)  # LoRA's A initialisation
    model = get_peft_model(model, config)
    if run.method == "lora_random":
        generator = torch.Generator().manual_seed(run.seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * RANDOM_LORA_STD)
    return model


def parameter_counts(model: nn.Module) -> dict:
    """Trainable and total parameters; peft's untouched copy of the head (``original_module``,
    kept beside the trained one by ``modules_to_save``) is not counted."""
    parameters = [(n, p) for n, p in model.named_parameters() if "original_module" not in n]
    return {"trainable_parameters": sum(p.numel() for _, p in parameters if p.requires_grad),
            "total_parameters": sum(p.numel() for _, p in parameters)}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable parameters (what training changes)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in names}


def save_weights(model: nn.Module, method: str, folder: Path) -> None:
    """Write what the run trained into ``folder`` (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    if method in LORA_METHODS:
        model.save_pretrained(folder)
    elif method == "frozen":
        from safetensors.torch import save_file

        head = {k: v.contiguous() for k, v in model.state_dict().items() if k.split(".")[0] in HEAD_MODULES}
        save_file(head, folder / "head.safetensors")
    else:
        model.save_pretrained(folder)


def load_trained(weights: str | Path, checkpoint: str | Path, classes: list[str], method: str) -> nn.Module:
    """The classifier a run trained, from its ``weights/`` folder and the base checkpoint."""
    weights = Path(weights)
    if method in LORA_METHODS:
        from peft import PeftModel

        return PeftModel.from_pretrained(load_classifier(checkpoint, classes), weights)
    if method == "frozen":
        from safetensors.torch import load_file

        model = load_classifier(checkpoint, classes)
        result = model.load_state_dict(load_file(weights / "head.safetensors"), strict=False)
        missing_head = [key for key in result.missing_keys if key.split(".")[0] in HEAD_MODULES]
        if result.unexpected_keys or missing_head:
            # Loading nothing would silently score the random head.
            raise InputError(f"{weights / 'head.safetensors'} does not fit the model: unexpected "
                             f"{result.unexpected_keys[:5]}, missing {missing_head[:5]}")
        return model
    return load_classifier(weights, classes)
