"""Readouts per checkpoint: how decodable the emotion is at each layer, and how much of the
run's decision each layer already holds, at one kept checkpoint of a run.

* ``probe``: the linear probes of ``analyses.probes`` on the checkpoint store's pooled residuals
  (fitted on train, C chosen on val, scored on test; :func:`analyses.probes.probe_table`):
  statistics uar, war, macro_f1, c, val_uar per layer.
* ``lens raw`` / ``lens normed``: the logit lens of ``analyses.logit_lens`` with the head (projector
  and classifier) the run had AT THAT CHECKPOINT, read from its checkpoint file, and the
  checkpoint store's own logits as the final decision, over the ``dynamics.split`` clips
  (:func:`analyses.logit_lens.store_lens`): kl_final_layer, kl_layer_final, js, agreement, uar.

Table: checkpoint, step, epoch (from the store's attributes), readout, layer, statistic, value,
clips (the probe's test clips; the lens's split clips). Reads numpy only (no torch): the
checkpoint through ``safetensors.numpy``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.cli import resolve_spec, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.train.checkpoints import KEEPING_METHODS

log = logging.getLogger(__name__)

ANALYSIS = "dynamics_readouts"
HEAD_MODULES = ("projector", "classifier")
COLUMNS = ["checkpoint", "step", "epoch", "readout", "layer", "statistic", "value", "clips"]


def head_parameter(method: str, module: str, parameter: str) -> str:
    """The name of a head parameter in a checkpoint of a ``method`` run: peft keeps the trained
    head of a LoRA run under ``modules_to_save`` (its untouched copy, ``original_module``, is not
    trainable and not kept); a full run's state has the classifier's own names."""
    if method == "lora":
        return f"base_model.model.{module}.modules_to_save.default.{parameter}"
    if method == "full":
        return f"{module}.{parameter}"
    raise InputError(f"method {method!r} keeps no checkpoints (only {list(KEEPING_METHODS)} do)")


def checkpoint_head(tensors: dict, method: str, source: str | Path) -> tuple[tuple, tuple]:
    """``(projector, classifier)``, each ``(weight [out, in], bias [out])`` as float64, from a
    checkpoint's tensors (``load_checkpoint_tensors(path, "np")``); ``source`` names the file."""
    names = {(module, parameter): head_parameter(method, module, parameter)
             for module in HEAD_MODULES for parameter in ("weight", "bias")}
    missing = sorted(name for name in names.values() if name not in tensors)
    if missing:
        raise InputError(f"{source}: a {method} checkpoint lacks the head parameters {missing}")
    return tuple(tuple(np.asarray(tensors[names[module, parameter]], dtype=np.float64)
                       for parameter in ("weight", "bias")) for module in HEAD_MODULES)


def check_checkpoint(store, checkpoint: str) -> None:
    """The store is a capture of ``checkpoint`` (the file's run and checkpoint are checked by
    :func:`workflow_scripts.train.checkpoints.run_checkpoint`)."""
    from workflow_scripts.dynamics.representation import checkpoint_attributes

    stored = checkpoint_attributes(store)["checkpoint"]
    if stored != checkpoint:
        raise InputError(f"{store.path} holds checkpoint {stored}, but --checkpoint-id is {checkpoint}")


def readouts(store, projector: tuple, classifier: tuple, settings) -> pd.DataFrame:
    """The dynamics_readouts table of a checkpoint store with the head it had at that checkpoint
    (see the module docstring); ``settings`` is a
    :class:`workflow_scripts.dynamics.settings.ReadoutSettings`."""
    from workflow_scripts.analyses.logit_lens import store_lens
    from workflow_scripts.analyses.probes import check_settings, probe_table
    from workflow_scripts.dynamics.representation import checkpoint_attributes

    attributes = checkpoint_attributes(store)
    probes = settings.probes.as_dict()
    check_settings(probes)
    utterances = store.utterances()
    probe = probe_table(store.pooled("resid"), utterances["label"].to_numpy(), utterances["split"].to_numpy(),
                        store.classes, probes, source=str(store.path))
    lens = store_lens(store, projector, classifier, settings.split, split_key="dynamics.split")
    lens.insert(0, "readout", "lens " + lens.pop("lens"))
    table = pd.concat([probe, lens], ignore_index=True)
    for key, value in attributes.items():
        table[key] = value
    return table[COLUMNS]


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import analysis_parser, with_run_columns, write_analysis
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.dynamics.settings import ReadoutSettings
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run
    from workflow_scripts.train.checkpoints import load_checkpoint_tensors, run_checkpoint

    parser = analysis_parser("workflow_scripts.dynamics.readouts", __doc__)
    parser.add_argument("--run-dir", required=True, help="results/runs/{run} (its checkpoints/ folder)")
    parser.add_argument("--checkpoint-id", required=True, help="the checkpoint: epoch<N> or step<S>")
    args = parser.parse_args(argv)
    run = Run.from_wildcards(vars(args))
    settings = ReadoutSettings.from_spec(
        resolve_spec(args, lambda config: ReadoutSettings.from_config(config).as_dict()))
    path, _ = run_checkpoint(run.id, args.run_dir, args.checkpoint_id)
    store = CaptureStore(args.acts, kind="acts", run=run.id)
    check_checkpoint(store, args.checkpoint_id)
    projector, classifier = checkpoint_head(load_checkpoint_tensors(path, "np"), run.method, path)
    table = with_run_columns(readouts(store, projector, classifier, settings), run)
    write_analysis(table, args.out, provenance(ANALYSIS, settings.as_dict(), run=run.id, acts=args.acts,
                                               checkpoint=str(path)))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
