"""Which checkpoints the training dynamics analyse (pure and light: the workflow plans with it).

``training.checkpoints`` says what each lora and full run keeps while it trains (changing it
retrains those runs); ``dynamics.checkpoints`` says which of those the analyses read (changing it
never retrains): ``all``, or a list of ids. The base (``epoch0``) and the final checkpoint (the
last epoch) are the references of the representation and weight changes, so they are always
analysed and must be kept. :func:`analysed_checkpoints` checks all that against the config alone,
while the workflow is planned, and names the keys of a mismatch.
"""

from __future__ import annotations

from workflow_scripts.errors import InputError
from workflow_scripts.train.checkpoints import CheckpointSettings, checkpoint_order, parse_checkpoint

BASE = "epoch0"


def final_checkpoint(config: dict) -> str:
    """The final checkpoint: after the last epoch (``training.epochs``)."""
    return f"epoch{config['training']['epochs']}"


def kept_checkpoints(config: dict) -> list[str]:
    """The ids ``training.checkpoints`` keeps, in training order."""
    return CheckpointSettings.from_mapping(config["training"]["checkpoints"]).ids()


def analysed_checkpoints(config: dict) -> tuple[str, ...]:
    """The checkpoints the dynamics analyse, in training order (empty: no dynamics planned)."""
    kept = kept_checkpoints(config)
    chosen = config["dynamics"]["checkpoints"]
    if chosen == "all":
        chosen = kept
    if not chosen:
        return ()
    for checkpoint in chosen:
        parse_checkpoint(checkpoint)
    wanted = sorted({*chosen, BASE, final_checkpoint(config)}, key=checkpoint_order)
    missing = [checkpoint for checkpoint in wanted if checkpoint not in kept]
    if missing:
        references = [c for c in missing if c in (BASE, final_checkpoint(config)) and c not in chosen]
        why = (f" ({', '.join(references)}: the base and the final checkpoint are the references of every "
               "change, so they are always analysed)") if references else ""
        raise InputError(f"dynamics.checkpoints: {missing} are not kept by training.checkpoints "
                         f"(it keeps {kept or 'none'}){why}; add them to training.checkpoints (that retrains "
                         "the lora and full runs) or leave them out of dynamics.checkpoints")
    return tuple(wanted)
