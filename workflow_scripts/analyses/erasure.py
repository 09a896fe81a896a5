"""Layer erasure (paper 3.3): how much the run's decisions on the test split depend on each encoder
block, and on the LoRA update at each block, measured by removing it and rerunning the model.

Conditions, each one pass over the whole test split (batched, cropped and masked as training
evaluates it), in this order:

* ``baseline`` (layer −1): the model as trained;
* ``skip_block`` l, l = 0..L−1: block l's output replaced by its input (the block is skipped);
* ``skip_first`` k, k = 1..L: blocks 0..k−1 skipped;
* runs with LoRA only -- ``lora_off`` l: the LoRA delta removed at block l (every LoRA B output
  of the block made zero, so each adapted module gives exactly its base output); and
  ``lora_off_from`` l: removed at blocks l..L−1.

Cost: 4L+1 passes (2L+1 without LoRA; the issue's "3L+1" undercounts). ``skip_first`` 1
repeats ``skip_block`` 0, and ``lora_off_from`` L−1 repeats ``lora_off`` L−1; both are kept so
that every series is whole. Float32 throughout, as the capture and the run's final scores
(``metrics.json``), so the baseline condition reproduces the run's test metrics. Nothing
in eval mode is random; the hooks that erase are removed after each pass, also when it fails.

Per condition, over the n test clips with p = softmax(logits) in float64 and y the true class:
acc (= WAR) and UAR of argmax p; conf = mean_i max_c p_ic; loss = mean_i −log p_iy. Against
the baseline (acc0, uar0, conf0, loss0): Δuar = uar0 − uar, Δwar = Δacc = acc0 − acc,
Δconf = conf0 − conf, Δloss = loss − loss0 (each positive when the erasure hurts), and

* ``score_paper`` = Δacc + 0.5·Δconf − 0.1·Δloss, the paper's importance score as written;
* ``score_corrected`` = Δacc + 0.5·Δconf + 0.1·Δloss: the paper's sign on Δloss counts an
  erasure that raises the loss as *less* important, which contradicts the other two terms.

Table: one row per condition x statistic (``condition``, ``layer``, ``statistic``, ``value``,
``clips``); the baseline's deltas are 0. Figure: ΔUAR per block for ``skip_block`` and
``lora_off``, and ΔUAR after skipping the first k blocks.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pandas as pd
import torch

from workflow_scripts.analyses.logit_lens import log_softmax
from workflow_scripts.analyses.settings import erasure_settings
from workflow_scripts.capture.hooks import Trace
from workflow_scripts.cli import entry_parser, resolve_spec, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.metrics import classification_report

log = logging.getLogger(__name__)

METRICS = ("uar", "war", "confidence", "loss")
STATISTICS = METRICS + ("delta_uar", "delta_war", "delta_confidence", "delta_loss", "score_paper",
                        "score_corrected")


def condition_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """UAR, WAR (accuracy), mean max-softmax confidence and mean cross-entropy of ``logits [n, C]``."""
    log_p = log_softmax(logits)
    labels = np.asarray(labels)
    report = classification_report(labels, np.argmax(log_p, axis=-1), classes)
    return {"uar": report["uar"], "war": report["war"], "confidence": float(np.exp(log_p.max(-1)).mean()),
            "loss": float(-log_p[np.arange(len(labels)), labels].mean())}


def deltas(baseline: dict, condition: dict) -> dict:
    """The changes from ``baseline`` to ``condition`` (positive = the erasure hurt) and both scores."""
    d_acc = baseline["war"] - condition["war"]
    d_conf = baseline["confidence"] - condition["confidence"]
    d_loss = condition["loss"] - baseline["loss"]
    return {"delta_uar": baseline["uar"] - condition["uar"], "delta_war": d_acc, "delta_confidence": d_conf,
            "delta_loss": d_loss, "score_paper": d_acc + 0.5 * d_conf - 0.1 * d_loss,
            "score_corrected": d_acc + 0.5 * d_conf + 0.1 * d_loss}


def conditions_for(n_blocks: int, has_lora: bool) -> list[tuple[str, int]]:
    """``(condition, layer)`` in the table's order."""
    conditions = [("baseline", -1)]
    conditions += [("skip_block", b) for b in range(n_blocks)]
    conditions += [("skip_first", k) for k in range(1, n_blocks + 1)]
    if has_lora:
        conditions += [("lora_off", b) for b in range(n_blocks)]
        conditions += [("lora_off_from", b) for b in range(n_blocks)]
    return conditions


def _skip(output, name, block_input):
    return block_input


def _zero(output, name, b_input):
    return torch.zeros_like(output)


@contextlib.contextmanager
def erasure_hooks(model, condition: str, layer: int):
    """Inside the ``with`` block, ``model`` runs with what ``(condition, layer)`` erases erased."""
    from workflow_scripts.capture.passes import lora_modules, lora_parts
    from workflow_scripts.models.encoder import classification_model

    blocks = classification_model(model).encoder.layers
    if condition == "baseline":
        targets, edit = [], None
    elif condition in ("skip_block", "skip_first"):
        targets, edit = [blocks[layer]] if condition == "skip_block" else list(blocks[:layer]), _skip
    elif condition in ("lora_off", "lora_off_from"):
        # An adapted module adds lora_B(lora_A(x)) * scaling to its base output: a zero B output
        # leaves exactly the base output.
        chosen = (lambda b: b == layer) if condition == "lora_off" else (lambda b: b >= layer)
        targets = [lora_parts(module)[1] for (b, _), module in lora_modules(model).items() if chosen(b)]
        edit = _zero
    else:
        raise ValueError(f"unknown erasure condition {condition!r}")
    with contextlib.ExitStack() as stack:  # every hook removed on leaving, also on an error
        for module in targets:
            stack.enter_context(Trace(module, retain_output=False, edit_output=edit))
        yield


def run_conditions(model, batches: list[tuple[torch.Tensor, torch.Tensor]], conditions: list[tuple[str, int]],
                   legacy: bool) -> dict[tuple[str, int], np.ndarray]:
    """Logits ``[n, C]`` (float32, in batch order) of every condition: one pass over ``batches``
    (``(features, mel mask)`` each) per condition, nothing left hooked afterwards."""
    from workflow_scripts.models.encoder import classify

    model.eval()
    results = {}
    with torch.no_grad():
        for condition, layer in conditions:
            with erasure_hooks(model, condition, layer):
                logits = [classify(model, features, mask, legacy).float().cpu() for features, mask in batches]
                results[(condition, layer)] = torch.cat(logits).numpy()
    return results


def erasure_table(logits: dict[tuple[str, int], np.ndarray], labels: np.ndarray,
                  classes: list[str]) -> pd.DataFrame:
    """Tidy: condition, layer, statistic, value, clips (``logits`` must hold the baseline)."""
    baseline = condition_metrics(logits[("baseline", -1)], labels, classes)
    rows = []
    for (condition, layer), values in logits.items():
        metrics = condition_metrics(values, labels, classes)
        for statistic, value in {**metrics, **deltas(baseline, metrics)}.items():
            rows.append((condition, layer, statistic, value))
    table = pd.DataFrame(rows, columns=["condition", "layer", "statistic", "value"])
    table["clips"] = len(labels)
    return table


def erasure_figure(table: pd.DataFrame, title: str):
    """ΔUAR per block (block skipped, LoRA delta removed) and after skipping the first k blocks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    delta = table[table["statistic"] == "delta_uar"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    sns.barplot(delta[delta["condition"].isin(["skip_block", "lora_off"])], x="layer", y="value",
                hue="condition", ax=axes[0])
    axes[0].set_xlabel("encoder block l erased")
    sns.lineplot(delta[delta["condition"] == "skip_first"], x="layer", y="value", marker="o", ax=axes[1])
    axes[1].set_xlabel("blocks 0..k−1 skipped (k)")
    axes[1].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for axis in axes:
        axis.set_ylabel("ΔUAR (baseline − erased)")
        axis.axhline(0, color="black", linewidth=0.8)
    figure.suptitle(title, fontsize=9)
    return figure


def run_erasure(run, settings: dict, checkpoint, weights, features, manifest, folds) -> pd.DataFrame:
    """The erasure table of ``run`` on its fold's test split."""
    from workflow_scripts.capture.passes import lora_modules
    from workflow_scripts.capture.run import feature_batches, fold_clips, load_run_model
    from workflow_scripts.features import FeatureStore
    from workflow_scripts.models.encoder import classification_model
    from workflow_scripts.train.loop import pick_device

    classes = list(settings["classes"])
    store = FeatureStore(str(features))
    clips = fold_clips(run, pd.read_parquet(manifest), pd.read_parquet(folds), store, classes)
    test = clips[clips["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise InputError(f"{run.id}: fold {run.fold} of {run.dataset} ({run.protocol}) has no test clips")
    model = load_run_model(run, checkpoint, weights, classes)
    device = pick_device(settings["device"])
    model.to(device)
    # Read once, reused by every condition (a test split is small).
    parts, batches = [], []
    for part, batch_features, mask in feature_batches(test, store, settings, settings["batch_size"], device):
        parts.append(part)
        batches.append((batch_features, mask))
    labels = np.concatenate([part["label"].to_numpy() for part in parts])
    conditions = conditions_for(len(classification_model(model).encoder.layers), bool(lora_modules(model)))
    logits = run_conditions(model, batches, conditions, settings["legacy"])
    return erasure_table(logits, labels, classes)


def main(argv: list[str] | None = None) -> None:
    import time
    from pathlib import Path

    from workflow_scripts.analyses.output import OUT_HELP, publish
    from workflow_scripts.cluster import check_gpu_allocation
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run, add_run_arguments

    parser = entry_parser("workflow_scripts.analyses.erasure", __doc__)
    add_run_arguments(parser)
    parser.add_argument("--weights", required=True, help="the run's weights/ folder")
    parser.add_argument("--out", required=True, help=OUT_HELP)
    args = parser.parse_args(argv)
    check_gpu_allocation(args.gpus)
    run = Run.from_wildcards(vars(args))
    settings = resolve_spec(args, lambda config: erasure_settings(config, run.dataset))
    started = time.perf_counter()
    table = run_erasure(run, settings, Path(args.checkpoint), Path(args.weights), Path(args.features),
                        Path(args.manifest), Path(args.folds))
    publish(table, run, args.out, provenance("erasure", settings, run=run.id, weights=args.weights), erasure_figure,
            "layer erasure, test clips")
    conditions = len(table[["condition", "layer"]].drop_duplicates())
    log.info("wrote %s (%d conditions, %.1f s)", args.out, conditions, time.perf_counter() - started)


if __name__ == "__main__":
    run_main(main)
