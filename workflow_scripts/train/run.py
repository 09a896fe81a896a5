"""Train (or, for the untrained references, just score) one run of the grid.

Reads the dataset's manifest, folds and log-mel cache and the model checkpoint; writes into
the run's folder:

``weights/``             what was trained (see ``workflow_scripts.train.methods``)
``metrics.json``         test (and validation) UAR, WAR, macro-F1, per-class recall, confusion
                         matrix, best epoch, the split and metric it was selected on, the splits
                         trained on, parameter counts, LoRA's alpha and its policy, wall time,
                         provenance
``predictions.parquet``  utt_id, split, label, prediction, logits (validation and test clips);
                         the provenance of metrics.json in its metadata
``history.csv``          one row per epoch
``checkpoints/``         the checkpoints ``training.checkpoints`` keeps (``train.checkpoints``;
                         lora and full runs only, empty for the other methods)

Selecting on the test fold (``legacy`` only) trains on train + val, as the original trained on
every non-test clip; validation then has no held-out score (``val`` is null, no val predictions).

``metrics.json`` is written last: a run without it is unfinished. While training, the run's
``.resume/`` folder holds the last finished epoch and the checkpoints kept so far; a rerun
continues from there.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workflow_scripts.atomic import atomic_path, write_json, write_table
from workflow_scripts.cli import entry_parser, resolve_spec, run_main
from workflow_scripts.cluster import check_gpu_allocation
from workflow_scripts.config import config_hash
from workflow_scripts.errors import InputError, describe_offenders
from workflow_scripts.features import FeatureStore, batch_frames, max_frames_of
from workflow_scripts.models.encoder import EmotionClassifier
from workflow_scripts.provenance import provenance
from workflow_scripts.runs import LORA_METHODS, TRAINED_METHODS, Run, add_run_arguments, run_settings
from workflow_scripts.train import checkpoints
from workflow_scripts.train.loop import SplitData, TrainingState, evaluate, pick_device, train
from workflow_scripts.train.methods import build_model, lora_alpha, parameter_counts, save_weights

log = logging.getLogger(__name__)


def load_splits(run: Run, manifest: pd.DataFrame, folds: pd.DataFrame, store: FeatureStore,
                classes: list[str]) -> dict[str, SplitData]:
    """The run's train, val and test clips; an empty split is an input error."""
    rows = folds[(folds["protocol"] == run.protocol) & (folds["fold"] == run.fold)]
    if rows.empty:
        available = sorted(folds.loc[folds["protocol"] == run.protocol, "fold"].unique().tolist())
        raise InputError(
            f"training.folds: {run.dataset} has no fold {run.fold} under protocol {run.protocol!r} "
            f"(folds: {available})"
        )
    label_of = dict(zip(manifest["utt_id"], manifest["label"]))
    index = {c: i for i, c in enumerate(classes)}
    all_clips = store.load_all()
    splits = {}
    for split in ("train", "val", "test"):
        ids = rows.loc[rows["split"] == split, "utt_id"].tolist()
        if not ids:
            raise InputError(f"{run.dataset}, protocol {run.protocol}, fold {run.fold}: the {split} split is empty")
        missing = [u for u in ids if u not in store.index]
        if missing:
            raise InputError(f"{store.path} lacks {len(missing)} utterances of the folds (e.g. {missing[:3]}): rebuild it")
        splits[split] = SplitData(
            clips=[all_clips[store.index[u]] for u in ids],
            labels=np.array([index[label_of[u]] for u in ids], dtype=np.int64),
            utt_ids=ids,
        )
    return splits


def training_data(splits: dict[str, SplitData], select_on: str) -> tuple[SplitData, list[str]]:
    """The clips a run trains on, and the names of the splits they come from.

    Selecting on the test fold (``legacy`` only) leaves no use for the validation split, and the
    original trained on every non-test clip: then train and val are trained on together.
    """
    names = ["train", "val"] if select_on == "test" else ["train"]
    parts = [splits[name] for name in names]
    return SplitData(
        clips=[clip for part in parts for clip in part.clips],
        labels=np.concatenate([part.labels for part in parts]),
        utt_ids=[utt for part in parts for utt in part.utt_ids],
    ), names


def cropped_clips(splits: dict[str, SplitData], settings: dict) -> list[str]:
    """Ids of the clips with more log-mel frames than a batch holds (``audio.max_seconds``, or
    Whisper's 30-s window under ``legacy``): the encoder sees only their beginning."""
    max_frames = max_frames_of(settings["max_seconds"])
    return [utt for data in splits.values() for utt, n in zip(data.utt_ids, data.lengths)
            if n > batch_frames(n, max_frames, settings["legacy"])]


def log_cropped_clips(splits: dict[str, SplitData], settings: dict) -> None:
    cropped = cropped_clips(splits, settings)
    if cropped:
        cap = ("Whisper's 30-s window (legacy)" if settings["legacy"]
               else f"audio.max_seconds = {settings['max_seconds']} s")
        log.warning(describe_offenders(
            f"{len(cropped)} clips of this run are longer than {cap}; the encoder sees only their beginning",
            cropped))


def input_fingerprint(paths: list[Path]) -> list:
    """Name, size and modification time of each input (the top level of a folder): any rebuild
    of an input changes it."""
    entries = []
    for path in paths:
        for item in sorted(path.iterdir()) if path.is_dir() else [path]:
            stat = item.stat()
            entries.append([str(item), stat.st_size, stat.st_mtime_ns])
    return entries


def predictions_table(split: str, data: SplitData, logits: np.ndarray, classes: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "utt_id": data.utt_ids,
        "split": split,
        "label": [classes[i] for i in data.labels],
        "prediction": [classes[i] for i in logits.argmax(1)],
        "logits": list(logits.astype(np.float32)),
    })


def checkpoint_tags(run: Run, settings: dict) -> dict:
    """The metadata that names a run's checkpoints (``train.checkpoints.METADATA_KEYS`` but those
    of the checkpoint itself): LoRA's scaling alpha / r, empty for a run without LoRA."""
    scaling = lora_alpha(run.rank, settings["lora"]) / run.rank if run.method in LORA_METHODS else ""
    return {"run": run.id, "method": run.method, "scaling": scaling}


def move_checkpoints(kept: Path, out: Path) -> None:
    """Put the checkpoints the loop kept (``kept``, in ``.resume/``) into ``out/checkpoints/`` in
    one step; a run that kept none gets an empty folder (an output of the train rule). They are
    linked (or copied), not moved: until the run finishes, ``.resume/`` must still hold them."""
    with atomic_path(out / checkpoints.FOLDER, directory=True) as tmp:
        for path in sorted(kept.glob("*.safetensors")) if kept.is_dir() else []:
            try:
                os.link(path, tmp / path.name)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, tmp / path.name)


def run_training(run: Run, settings: dict, checkpoint: Path, features: Path, manifest: Path, folds: Path,
                 out: Path) -> dict:
    started = time.perf_counter()
    classes = list(settings["classes"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    store = FeatureStore(str(features))
    splits = load_splits(run, pd.read_parquet(manifest), pd.read_parquet(folds), store, classes)
    log_cropped_clips(splits, settings)
    model = build_model(checkpoint, classes, run, settings["lora"] if run.method in LORA_METHODS else None)
    classifier = EmotionClassifier(model, legacy=settings["legacy"])
    counts = parameter_counts(model)
    device = pick_device(settings["device"])
    if run.method in TRAINED_METHODS:
        select_on, epochs = settings["select_on"], settings["epochs"]
        # A leftover resume state is used only if neither the settings nor any input changed.
        run_key = config_hash({"run": run.id, "settings": settings,
                               "inputs": input_fingerprint([checkpoint, features, manifest, folds])})
        resume_file = out / ".resume" / "state.pt"
        fit_data, trained_on = training_data(splits, select_on)
        state = train(classifier, fit_data, splits[select_on], classes, settings, run.seed, resume_file, run_key,
                      checkpoint_tags(run, settings))
    else:
        # The untrained references are scored as initialised (their settings hold no optimisation keys).
        select_on, epochs, trained_on, fit_data = None, 0, [], None
        classifier.to(device)
        state = TrainingState()

    # The reported scores in float32 (no autocast), as the activation stores are captured: the
    # run's metrics.json, its acts store's logits and the probes' head row agree.
    test_report, test_logits = evaluate(classifier, splits["test"], classes, settings, device,
                                        mixed_precision=False)
    tables = [predictions_table("test", splits["test"], test_logits, classes)]
    val_report = None  # a split the model trained on has no held-out score
    if "val" not in trained_on:
        val_report, val_logits = evaluate(classifier, splits["val"], classes, settings, device,
                                          mixed_precision=False)
        tables.insert(0, predictions_table("val", splits["val"], val_logits, classes))
    classifier.to("cpu")
    record = provenance("train", settings, run=run.id)
    with atomic_path(out / "weights", directory=True) as tmp:
        save_weights(model, run.method, tmp)
    write_table(out / "predictions.parquet", pd.concat(tables, ignore_index=True), provenance=record)
    scores = [f"{select_on}_{name}" for name in ("uar", "war", "macro_f1")] if select_on else []
    history = pd.DataFrame(state.history, columns=["epoch", "train_loss", "lr", *scores, "seconds"])
    write_table(out / "history.csv", history)
    move_checkpoints(out / ".resume" / checkpoints.FOLDER, out)
    metrics = {
        "run": run.id,
        **{k: getattr(run, k) for k in ("dataset", "protocol", "model", "method", "targets", "rank", "seed", "fold")},
        "test": test_report,
        "val": val_report,
        "best_epoch": state.best_epoch,
        "epochs": epochs,
        "selected_on": select_on,
        "selected_on_test": select_on == "test",
        "select_metric": settings["select_metric"] if select_on else None,
        **counts,
        # LoRA's alpha as built, and the policy that gave it (the performance table prints them).
        "lora_alpha": lora_alpha(run.rank, settings["lora"]) if run.method in LORA_METHODS else None,
        "lora_alpha_policy": settings["lora"]["alpha_policy"] if run.method in LORA_METHODS else None,
        "trained_on": trained_on,
        "n_train": len(fit_data.clips) if fit_data else 0,
        "wall_seconds": time.perf_counter() - started,
        "device": str(device),
        "provenance": record,
    }
    write_json(out / "metrics.json", metrics)
    shutil.rmtree(out / ".resume", ignore_errors=True)
    selection = f"on {select_on} by {settings['select_metric']}" if select_on else "none: untrained"
    log.info("%s: test UAR %.4f WAR %.4f F1 %.4f (best epoch %d; selection %s)", run.id, test_report["uar"],
             test_report["war"], test_report["macro_f1"], state.best_epoch, selection)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.train.run", __doc__)
    add_run_arguments(parser)
    parser.add_argument("--out", required=True, help="the run's folder")
    args = parser.parse_args(argv)
    check_gpu_allocation(args.gpus)
    run = Run.from_wildcards(vars(args))
    settings = resolve_spec(args, lambda config: run_settings(config, run.dataset, run.method))
    run_training(run, settings, Path(args.checkpoint), Path(args.features), Path(args.manifest),
                 Path(args.folds), Path(args.out))


if __name__ == "__main__":
    run_main(main)
