"""Training checkpoints: what a LoRA (or full) run keeps of itself during training, and how to read it.

A run trained with ``training.checkpoints`` keeps, inside its folder, the trainable parameters
(LoRA's A and B and the head for ``lora``; every weight for ``full``) at chosen points:

* ``epoch<N>``: after N epochs; ``epoch0`` is the initialisation, before the first step;
* ``step<S>``: after S optimiser steps, within the first epoch (where most change happens;
  ``training.checkpoints.steps``, e.g. log-spaced ``[1, 3, 10, 30]``).

Files: ``results/runs/{run}/checkpoints/{checkpoint}.safetensors``, the run's
``trainable_state`` under its own parameter names (peft's for LoRA: ``...q_proj.lora_A.default.weight``,
the head under ``modules_to_save``), with string metadata :data:`METADATA_KEYS`. Loading one into
the model :func:`workflow_scripts.train.methods.build_model` builds for the run gives the run as
it was at that point. Keeping checkpoints reads parameters and writes files, nothing else: a run's
results are the same with and without them.

The order of checkpoints is known before training (the steps lie within the first epoch), so
the workflow can plan with ids alone: :func:`checkpoint_order`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.errors import InputError
from workflow_scripts.stage_settings import StageSettings

#: The methods that keep checkpoints (the untrained references and frozen runs keep none).
KEEPING_METHODS = ("lora", "full")
#: A checkpoint id (the workflow's ``{checkpoint}`` wildcard).
CHECKPOINT_ID = re.compile(r"(epoch|step)(\d+)")
CHECKPOINT_PATTERN = CHECKPOINT_ID.pattern
FORMAT = "loralens-checkpoint/1"
#: The metadata every checkpoint file carries (all strings, as safetensors stores them).
METADATA_KEYS = ("format", "run", "method", "checkpoint", "step", "epoch", "steps_per_epoch", "scaling")
FOLDER = "checkpoints"


@dataclass(frozen=True)
class CheckpointSettings(StageSettings):
    """``training.checkpoints``: the epochs and first-epoch optimiser steps a run keeps."""

    SECTION = "training.checkpoints"
    epochs: tuple[int, ...]
    steps: tuple[int, ...]

    def ids(self) -> list[str]:
        """Every checkpoint kept, in training order."""
        ids = [f"epoch{n}" for n in self.epochs] + [f"step{s}" for s in self.steps]
        return sorted(set(ids), key=checkpoint_order)

    def check(self, epochs: int, source: str = "training.checkpoints") -> None:
        """Refuse epochs past the end of training (known from the config alone)."""
        late = sorted(n for n in self.epochs if n > epochs)
        if late:
            raise InputError(f"{source}.epochs: {late} lie after the last epoch (training.epochs = {epochs})")


def parse_checkpoint(checkpoint: str) -> tuple[str, int]:
    """``"epoch2"`` -> ``("epoch", 2)``; anything else is an :class:`InputError`."""
    match = CHECKPOINT_ID.fullmatch(str(checkpoint))
    if not match:
        raise InputError(f"{checkpoint!r} is not a checkpoint id: epoch<N> (0 = the initialisation) "
                         "or step<S> (after S optimiser steps of the first epoch)")
    return match.group(1), int(match.group(2))


def checkpoint_order(checkpoint: str) -> tuple[int, int]:
    """A sort key in training order: ``epoch0`` < ``step1`` < ``step10`` < ``epoch1`` < ``epoch2``
    (steps lie within the first epoch)."""
    kind, number = parse_checkpoint(checkpoint)
    return (number, 0) if kind == "epoch" else (0, number)


def checkpoint_step(checkpoint: str, steps_per_epoch: int) -> int:
    """Optimiser steps done at ``checkpoint``."""
    kind, number = parse_checkpoint(checkpoint)
    return number * steps_per_epoch if kind == "epoch" else number


def checkpoint_file(run_dir: str | Path, checkpoint: str) -> Path:
    """Where a run keeps ``checkpoint``."""
    parse_checkpoint(checkpoint)
    return Path(run_dir) / FOLDER / f"{checkpoint}.safetensors"


def save_checkpoint(path: str | Path, state: dict, metadata: dict) -> None:
    """Write ``state`` (name -> CPU tensor) and ``metadata`` (:data:`METADATA_KEYS`) to ``path``,
    through a temporary file (a killed job leaves no partial checkpoint)."""
    import os

    from safetensors.torch import save_file

    missing = sorted(set(METADATA_KEYS) - {"format"} - set(metadata))
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}
    save_file(tensors, tmp, metadata={"format": FORMAT, **{key: str(value) for key, value in metadata.items()}})
    os.replace(tmp, path)


def checkpoint_metadata(path: str | Path) -> dict:
    """A checkpoint file's metadata, typed: step and steps_per_epoch int, epoch and scaling float
    (scaling is empty for a run without LoRA: None)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        raw = handle.metadata() or {}
    if raw.get("format") != FORMAT:
        raise InputError(f"{path}: not a loralens checkpoint (format {raw.get('format')!r}, expected {FORMAT!r})")
    typed = dict(raw)
    typed["step"], typed["steps_per_epoch"] = int(raw["step"]), int(raw["steps_per_epoch"])
    typed["epoch"] = float(raw["epoch"])
    typed["scaling"] = float(raw["scaling"]) if raw.get("scaling") not in (None, "", "None") else None
    return typed


def load_checkpoint_tensors(path: str | Path, framework: str = "pt") -> dict:
    """A checkpoint's tensors (``framework`` "pt" for torch, "np" for numpy, which needs no torch)."""
    if framework == "np":
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file
    return load_file(str(path))


def require_checkpoint(run_id: str, run_dir: str | Path, checkpoint: str, kept: list[str] | None = None) -> Path:
    """The file of ``checkpoint`` in a run's folder, or an :class:`InputError` that names the run,
    the checkpoint and ``training.checkpoints``, and says how to get it (rerun that run only)."""
    path = checkpoint_file(run_dir, checkpoint)
    if path.is_file():
        return path
    folder = Path(run_dir) / FOLDER
    rerun = (f"rerun that run only: snakemake --forcerun {Path(run_dir) / 'metrics.json'} "
             "(the jobs that read it follow)")
    if not folder.is_dir():
        raise InputError(f"{run_id}: the run keeps no checkpoints ({folder} does not exist): it was trained "
                         f"before loralens kept them, or without training.checkpoints; {checkpoint} is asked for. "
                         f"To add it, set training.checkpoints to keep {checkpoint} and {rerun}")
    found = sorted((p.name.removesuffix(".safetensors") for p in folder.glob("*.safetensors")), key=checkpoint_order)
    wanted = f" (training.checkpoints now keeps {kept})" if kept is not None else ""
    raise InputError(f"{run_id}: checkpoint {checkpoint} was not kept: {folder} holds {found or 'none'}, "
                     f"as training.checkpoints was when the run trained{wanted}. To add it, keep {checkpoint} in "
                     f"training.checkpoints and {rerun}")


def run_checkpoint(run_id: str, run_dir: str | Path, checkpoint: str, kept: list[str] | None = None) -> tuple[Path, dict]:
    """The file of ``checkpoint`` in a run's folder (:func:`require_checkpoint`) and its metadata,
    which must name that run and checkpoint (a file copied from another run is refused)."""
    path = require_checkpoint(run_id, run_dir, checkpoint, kept)
    metadata = checkpoint_metadata(path)
    if (metadata["run"], metadata["checkpoint"]) != (run_id, checkpoint):
        raise InputError(f"{path}: holds run {metadata['run']} at {metadata['checkpoint']}, "
                         f"not run {run_id} at {checkpoint}")
    return path, metadata
