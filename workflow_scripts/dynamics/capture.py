"""Capture one run's model at one of its training checkpoints: a checkpoint store.

``results/acts/{run}/checkpoints/{checkpoint}.zarr`` is an acts store (the same writer, reader and
spec, docs/activation-store.md) of the run's model with the trainable parameters it had at the
checkpoint (``results/runs/{run}/checkpoints/{checkpoint}.safetensors``, see
``workflow_scripts.train.checkpoints``): every clip of the run's fold in the acts store's order,
the utterance-level arrays (pooled residuals, their normed form, logits, ...) and no frame-level
rows. Its attributes add ``checkpoint``, ``step`` (optimiser steps done) and ``epoch``
(step / steps per epoch). The capture itself is ``capture.run.write_store``'s, the acts store's
code path; its settings are ``capture_settings(config, dataset, "checkpoint")``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from workflow_scripts.capture.run import load_run_model, write_store
from workflow_scripts.capture.settings import capture_settings
from workflow_scripts.cli import entry_parser, resolve_spec, run_main
from workflow_scripts.cluster import check_gpu_allocation
from workflow_scripts.errors import InputError
from workflow_scripts.runs import Run, add_run_arguments
from workflow_scripts.train.checkpoints import load_checkpoint_tensors, parse_checkpoint, run_checkpoint
from workflow_scripts.train.loop import load_parameters

log = logging.getLogger(__name__)


def load_checkpoint_model(run: Run, checkpoint_id: str, run_dir: Path, checkpoint: Path,
                          classes: list[str]) -> tuple[torch.nn.Module, dict]:
    """The run's model (from its ``weights/``) with the trainable parameters of ``checkpoint_id``,
    in eval mode, and the checkpoint's metadata. A checkpoint the run did not keep is an
    :class:`InputError` naming the run, the checkpoint and ``training.checkpoints``."""
    parse_checkpoint(checkpoint_id)
    path, metadata = run_checkpoint(run.id, run_dir, checkpoint_id)
    model = load_run_model(run, checkpoint, Path(run_dir) / "weights", classes)
    try:
        load_parameters(model, load_checkpoint_tensors(path, "pt"))
    except RuntimeError as error:  # names or shapes the run's model does not have
        raise InputError(f"{run.id}: {path} does not fit the run's model in {Path(run_dir) / 'weights'}: "
                         f"{str(error)[:500]}") from error
    return model.eval(), metadata


def capture_checkpoint(run: Run, settings: dict, checkpoint_id: str, run_dir: Path, checkpoint: Path,
                       features: Path, manifest: Path, folds: Path, out: Path) -> dict:
    """Write ``out``, the checkpoint store of ``run`` at ``checkpoint_id``; return a short summary."""
    model, metadata = load_checkpoint_model(run, checkpoint_id, Path(run_dir), Path(checkpoint),
                                            list(settings["classes"]))
    attrs = {"checkpoint": checkpoint_id, "step": metadata["step"], "epoch": metadata["epoch"]}
    return write_store("checkpoint", run, settings, model, features, manifest, folds, out, extra_attrs=attrs)


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.dynamics.capture", __doc__)
    add_run_arguments(parser)
    parser.add_argument("--checkpoint-id", required=True,
                        help="the training checkpoint: epoch<N> (0 = the initialisation) or step<S>")
    parser.add_argument("--run-dir", required=True, help="the run's folder, results/runs/{run}")
    parser.add_argument("--out", required=True, help="the store to write, results/acts/{run}/checkpoints/{id}.zarr")
    args = parser.parse_args(argv)
    check_gpu_allocation(args.gpus)
    run = Run.from_wildcards(vars(args))
    settings = resolve_spec(args, lambda config: capture_settings(config, run.dataset, "checkpoint"))
    capture_checkpoint(run, settings, args.checkpoint_id, Path(args.run_dir), Path(args.checkpoint),
                       Path(args.features), Path(args.manifest), Path(args.folds), Path(args.out))


if __name__ == "__main__":
    run_main(main)
