"""Capture one run's activation store: ``acts`` (forward, every clip) or ``grads`` (forward and
backward, a class-balanced training subset). The store layout is docs/activation-store.md.

``acts``: every clip of the run's fold table, tagged train/val/test; utterance-level pooled
arrays and contribution sums for all, frame-level arrays for the test clips.

``grads``: ``capture.grads_per_class`` clips of each class from the clips the models trained on
(:func:`capture.settings.gradient_pool`: the fold's training split in the fold table's order, or,
under ``training.select_on: test``, train + val in the manifest's order, as the original), chosen
by ``capture.grads_seed`` alone (:func:`capture.settings.balanced_subset`), so every run of a
fold -- trained or not, any method, rank or seed -- sees the same clips in the same order. The
model is in eval mode with only its LoRA weights requiring gradients, as in the paper.

``checkpoint`` (``workflow_scripts.dynamics.capture``): the run's model at a training checkpoint,
written as an acts store of every clip without frame-level rows, by the same code
(:func:`write_store`).

Batches are sorted by length (little padding) and streamed to the store, which is written to a
temporary folder and renamed into place only when complete.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workflow_scripts.capture.passes import (
    CapturePlan,
    capture_forward,
    capture_gradients,
    lora_modules,
    lora_parts,
    only_lora_requires_grad,
)
from workflow_scripts.capture.settings import (
    balanced_subset,
    capture_settings,
    gradient_pool,
    resolve_indices,
)
from workflow_scripts.capture.store import CaptureStoreWriter, StoreShape
from workflow_scripts.cli import entry_parser, resolve_spec, run_main
from workflow_scripts.cluster import check_gpu_allocation
from workflow_scripts.config import config_hash
from workflow_scripts.errors import InputError
from workflow_scripts.features import FeatureStore, collate, max_frames_of
from workflow_scripts.models.encoder import classification_model
from workflow_scripts.provenance import provenance
from workflow_scripts.runs import Run, add_run_arguments
from workflow_scripts.train.batches import evaluation_batches
from workflow_scripts.train.loop import pick_device
from workflow_scripts.train.methods import load_trained

log = logging.getLogger(__name__)


def fold_clips(run: Run, manifest: pd.DataFrame, folds: pd.DataFrame, store: FeatureStore,
               classes: list[str]) -> pd.DataFrame:
    """The run's clips in fold-table order: utt_id, split, speaker, label (index), length (mel frames)."""
    rows = folds[(folds["protocol"] == run.protocol) & (folds["fold"] == run.fold)][["utt_id", "split"]]
    if rows.empty:
        raise InputError(f"{run.id}: {run.dataset} has no fold {run.fold} under protocol {run.protocol!r}")
    table = rows.merge(manifest[["utt_id", "speaker", "label"]], on="utt_id", how="left", validate="1:1")
    missing = [u for u in table["utt_id"] if u not in store.index]
    if missing or table["label"].isna().any():
        raise InputError(f"{store.path} or the manifest lacks {len(missing) or int(table['label'].isna().sum())} "
                         f"clips of the fold table (e.g. {missing[:3]}): rebuild them")
    index = {c: i for i, c in enumerate(classes)}
    table["label"] = table["label"].map(index).astype(np.int64)
    table["length"] = [store.length(store.index[u]) for u in table["utt_id"]]
    return table.reset_index(drop=True)


def load_run_model(run: Run, checkpoint: Path, weights: Path, classes: list[str]) -> torch.nn.Module:
    """The classifier the run saved, in eval mode; weights that are missing or do not fit the
    model are an input error naming the run."""
    if not weights.is_dir() or not any(weights.iterdir()):
        raise InputError(f"{run.id}: no weights in {weights}; run its train job first")
    try:
        model = load_trained(weights, checkpoint, classes, run.method)
    except InputError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise InputError(f"{run.id}: the weights in {weights} do not fit {checkpoint}: "
                         f"{error.__class__.__name__}: {str(error)[:500]}") from error
    config = adapter_config(model)
    if config is not None:
        saved = (config.r, sorted(config.target_modules))
        if saved != (run.rank, sorted(run.target_modules)):
            raise InputError(f"{run.id}: {weights} holds a rank-{saved[0]} adapter on {saved[1]}, "
                             f"not rank {run.rank} on {run.target_modules}")
    return model.eval()


def adapter_config(model):
    """The active LoRA adapter's ``LoraConfig``, or None for a model without LoRA."""
    return model.peft_config[model.active_adapter] if hasattr(model, "peft_config") else None


def store_attributes(run: Run, model, settings: dict) -> dict:
    peft = adapter_config(model)
    return {
        "run": run.id, **{k: getattr(run, k) for k in ("dataset", "protocol", "model", "method", "seed", "fold")},
        "targets": run.target_modules, "rank": run.rank,
        "alpha": float(peft.lora_alpha) if peft else None,
        "scaling": float(peft.lora_alpha) / peft.r if peft else None,
        "legacy": settings["legacy"], "max_seconds": settings["max_seconds"],
        "config_hash": config_hash(settings),
    }


def store_shape(kind: str, model, classes: list[str], settings: dict) -> StoreShape:
    """The arrays a store will hold, with ``capture.*`` layer choices resolved and checked.
    ``kind`` ``checkpoint`` is an acts store without frame-level arrays (no layer choices)."""
    config = classification_model(model).config
    n_layers, d_model = config.encoder_layers, config.d_model
    modules = {key: (lora_parts(m)[0].out_features, lora_parts(m)[1].out_features)
               for key, m in lora_modules(model).items()}
    if kind == "checkpoint":  # no frames are kept, so their dtype is moot
        return StoreShape("acts", n_layers, d_model, tuple(classes), modules, (), (), "float32")
    if kind == "grads":  # everything, frame by frame, in float32 (gradients underflow in fp16)
        return StoreShape(kind, n_layers, d_model, tuple(classes), modules, tuple(range(n_layers + 1)),
                          tuple(range(n_layers)), "float32")
    capture = settings["capture"]
    return StoreShape(
        kind, n_layers, d_model, tuple(classes), modules,
        resolve_indices(capture["resid_layers"], n_layers + 1, d_model, "capture.resid_layers"),
        resolve_indices(capture["lora_b_blocks"], n_layers, d_model, "capture.lora_b_blocks"),
        capture["frame_dtype"],
    )


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Give the memory freed by the last batch back to the system. Batches change shape, and
    glibc keeps freed blocks of every shape in its heap, so the resident size would creep up
    with the number of batches although nothing is held (benchmarks/capture_throughput.py)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def feature_batches(clips: pd.DataFrame, store: FeatureStore, settings: dict, batch_size: int,
                    device: torch.device):
    """Length-sorted batches of ``clips`` (a :func:`fold_clips` table): ``(rows of clips, features,
    mel mask)``, read from the log-mel cache batch by batch, cropped or padded as in training
    (``settings``: ``max_seconds``, ``legacy``)."""
    max_frames = max_frames_of(settings["max_seconds"])
    for batch in evaluation_batches(clips["length"].to_numpy(), batch_size):
        part = clips.iloc[batch]
        features, mask = collate([store[store.index[u]] for u in part["utt_id"]], max_frames, settings["legacy"])
        yield part, features.to(device), mask.to(device)


def _utterance_columns(part: pd.DataFrame) -> dict:
    return {"utterance": part["utt_id"].to_numpy(), "speaker": part["speaker"].astype(str).to_numpy(),
            "split": part["split"].to_numpy(), "label": part["label"].to_numpy()}


def capture_store(kind: str, run: Run, settings: dict, checkpoint: Path, weights: Path, features: Path,
                  manifest: Path, folds: Path, out: Path) -> dict:
    """Write ``out`` (an acts or grads store) for ``run`` with the model in its ``weights``;
    return a short summary."""
    model = load_run_model(run, checkpoint, weights, list(settings["classes"]))
    return write_store(kind, run, settings, model, features, manifest, folds, out)


def write_store(kind: str, run: Run, settings: dict, model, features: Path, manifest: Path, folds: Path,
                out: Path, extra_attrs: dict | None = None) -> dict:
    """Write ``out``, a ``kind`` store of ``run`` captured from ``model`` (loaded, in eval mode);
    return a short summary. ``kind`` ``checkpoint`` writes an acts store of every clip without
    frame-level arrays (:func:`store_shape`; the model at a training checkpoint,
    ``workflow_scripts.dynamics.capture``); ``extra_attrs`` join the store's attributes."""
    started = time.perf_counter()
    torch.use_deterministic_algorithms(True, warn_only=True)
    classes = list(settings["classes"])
    store = FeatureStore(str(features))
    manifest_table = pd.read_parquet(manifest)
    clips = fold_clips(run, manifest_table, pd.read_parquet(folds), store, classes)
    shape = store_shape(kind, model, classes, settings)  # checks the layer settings before writing
    device = pick_device(settings["device"])
    model.to(device)
    if kind == "grads":
        pool = gradient_pool(clips, settings.get("grads_pool"), manifest_table["utt_id"])
        capture = settings["capture"]
        clips = pool.iloc[balanced_subset(pool["label"].to_numpy(), capture["grads_per_class"],
                                          capture["grads_seed"])].reset_index(drop=True)
        only_lora_requires_grad(model)
    attrs = {**store_attributes(run, model, settings), "classes": classes,
             "provenance": provenance(f"capture_{kind}", settings, run=run.id), **(extra_attrs or {})}
    if kind == "grads":
        attrs.update(grads_per_class=settings["capture"]["grads_per_class"],
                     grads_seed=settings["capture"]["grads_seed"],
                     grads_pool=list(settings.get("grads_pool") or ["train"]))
    plan = CapturePlan(settings["legacy"], shape.resid_layers, shape.lora_b_blocks)
    # The acts store keeps the test clips' frames; a checkpoint store keeps none (its modules'
    # A outputs, which every acts store keeps, included).
    frame_splits = {"acts": ("test",), "checkpoint": ()}.get(kind)
    with CaptureStoreWriter(out, shape, attrs) as writer:
        for part, batch_features, mask in feature_batches(clips, store, settings, settings["capture"]["batch_size"],
                                                          device):
            if kind == "grads":
                labels = torch.tensor(part["label"].to_numpy(), device=device)
                utterance, rows = capture_gradients(model, batch_features, mask, labels, settings["legacy"])
                model.zero_grad(set_to_none=True)
            else:
                keep = part["split"].isin(frame_splits).tolist()
                utterance, rows = capture_forward(model, batch_features, mask, plan, keep)
            writer.append_utterances({**_utterance_columns(part), **utterance})
            for utt_id, frame_rows in zip(part["utt_id"], rows):
                if frame_rows is not None:
                    writer.append_frames(utt_id, frame_rows)
            del utterance, rows
            release_freed_memory()
    summary = {"store": str(out), "utterances": len(clips), "frame_items": len(writer.frame_items),
               "seconds": round(time.perf_counter() - started, 1)}
    log.info("%s: %s", run.id, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.capture.run", __doc__)
    parser.add_argument("--store", required=True, choices=["acts", "grads"], help="which store to write")
    add_run_arguments(parser)
    parser.add_argument("--weights", required=True, help="the run's weights/ folder")
    parser.add_argument("--out", required=True, help="the store to write (acts.zarr or grads.zarr)")
    args = parser.parse_args(argv)
    check_gpu_allocation(args.gpus)
    run = Run.from_wildcards(vars(args))
    settings = resolve_spec(args, lambda config: capture_settings(config, run.dataset, args.store))
    capture_store(args.store, run, settings, Path(args.checkpoint), Path(args.weights), Path(args.features),
                  Path(args.manifest), Path(args.folds), Path(args.out))


if __name__ == "__main__":
    run_main(main)
