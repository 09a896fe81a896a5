"""The training loop: AdamW with warm-up and linear decay, epoch-wise selection, resumable.

Each epoch trains on length-bucketed batches, then scores the selection split (validation by
default; the test fold only under ``legacy``, as the original did) and keeps the parameters of
the epoch with the best ``select_metric`` (UAR by default; WAR, i.e. accuracy, as the original;
the earliest on ties). After every epoch the whole state --
parameters, optimizer, schedule, random-number state, best-so-far and history -- is saved to
``resume_file`` (atomically), so a killed job, rerun, continues after its last finished epoch
and ends where an uninterrupted run ends (on a CPU, bit for bit).

With ``training.checkpoints`` the loop also keeps the trainable parameters at the schedule's points
(``train.checkpoints``): ``epoch0`` before the first step, ``step<S>`` after optimiser step S of
the first epoch, ``epoch<N>`` after epoch N; into ``checkpoints/`` beside ``resume_file``, which a
killed job leaves in place, so a resumed run still has the early ones. Keeping one only reads
parameters (no random numbers, no state): a run's results are the same with and without.

The per-epoch scoring runs under the same bf16 autocast as training (on a GPU); the final scores
a run reports (``metrics.json``, ``predictions.parquet``) come from ``predict(...,
mixed_precision=False)``, in float32, as the activation stores are captured, so a run has one
number wherever it is read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from workflow_scripts.errors import InputError
from workflow_scripts.features import collate, max_frames_of
from workflow_scripts.metrics import classification_report
from workflow_scripts.models.encoder import EmotionClassifier
from workflow_scripts.train import checkpoints
from workflow_scripts.train.batches import evaluation_batches, training_batches
from workflow_scripts.train.methods import trainable_state

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """One split's clips (log-mel frames), labels and ids."""

    clips: list[np.ndarray]
    labels: np.ndarray
    utt_ids: list[str]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(c) for c in self.clips])


@dataclass
class TrainingState:
    epoch: int = 0  # epochs finished
    best_epoch: int = 0
    best_parameters: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def autocast(device: torch.device):
    """bf16 autocast on a GPU; plain fp32 on a CPU (bf16 matmuls there are slow and lossy)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def predict(classifier: EmotionClassifier, data: SplitData, settings: dict, device: torch.device,
            mixed_precision: bool = True) -> np.ndarray:
    """Logits ``[N, C]`` (float32) for every clip of ``data``, in ``data`` order; computed under
    :func:`autocast` unless ``mixed_precision`` is False (then in float32 throughout)."""
    classifier.eval()
    logits = [None] * len(data.clips)
    max_frames = max_frames_of(settings["max_seconds"])
    with torch.inference_mode():
        for batch in evaluation_batches(data.lengths, settings["eval_batch_size"]):
            features, mask = collate([data.clips[i] for i in batch], max_frames, settings["legacy"])
            with autocast(device) if mixed_precision else contextlib.nullcontext():
                out = classifier(features.to(device), mask.to(device)).float().cpu().numpy()
            for row, index in enumerate(batch):
                logits[index] = out[row]
    return np.stack(logits)


def evaluate(classifier, data: SplitData, classes: list[str], settings: dict, device,
             mixed_precision: bool = True) -> tuple[dict, np.ndarray]:
    logits = predict(classifier, data, settings, device, mixed_precision)
    return classification_report(data.labels, logits.argmax(1), classes), logits


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (``class_weighted: true``)."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = counts.sum() / (n_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def load_parameters(classifier: torch.nn.Module, parameters: dict) -> None:
    """Load saved trainable parameters; refuse names the model does not have (loading nothing
    silently would score untrained weights)."""
    result = classifier.load_state_dict(parameters, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"saved parameters do not fit the model: {result.unexpected_keys[:5]}")


def best_epoch(history: list[dict], column: str) -> int:
    """The earliest epoch of ``history`` (one row per epoch) with the highest ``column``."""
    best = max(row[column] for row in history)
    return next(row["epoch"] for row in history if row[column] == best)


@dataclass(frozen=True)
class CheckpointKeeper:
    """Which checkpoints a run keeps (``training.checkpoints``), where, and the metadata that
    names them (``tags``: run, method, scaling)."""

    folder: Path
    epochs: frozenset[int]
    steps: frozenset[int]
    steps_per_epoch: int
    tags: dict

    @classmethod
    def for_run(cls, settings: dict, epochs: int, steps_per_epoch: int, folder: Path,
                tags: dict | None) -> "CheckpointKeeper | None":
        """The keeper of ``settings['checkpoints']`` (None when it keeps nothing); epochs past
        training and steps outside the first epoch are an :class:`InputError` naming the key."""
        schedule = checkpoints.CheckpointSettings.from_mapping(
            settings.get("checkpoints") or {"epochs": [], "steps": []})
        if not schedule.ids():
            return None
        schedule.check(epochs)
        late = sorted(s for s in schedule.steps if s >= steps_per_epoch)
        if late:
            raise InputError(f"training.checkpoints.steps: {late} do not lie within the first epoch, which "
                             f"has {steps_per_epoch} optimiser steps (keep epoch1 for the end of it)")
        if tags is None:
            raise ValueError("training.checkpoints asks for checkpoints, but train() got no checkpoint tags")
        return cls(folder, frozenset(schedule.epochs), frozenset(schedule.steps), steps_per_epoch, dict(tags))

    def keep(self, model: torch.nn.Module, checkpoint: str) -> None:
        """Save ``model``'s trainable parameters (under the run's own names) as ``checkpoint``."""
        step = checkpoints.checkpoint_step(checkpoint, self.steps_per_epoch)
        metadata = {**self.tags, "checkpoint": checkpoint, "step": step, "epoch": step / self.steps_per_epoch,
                    "steps_per_epoch": self.steps_per_epoch}
        checkpoints.save_checkpoint(self.folder / f"{checkpoint}.safetensors", trainable_state(model), metadata)

    def after_step(self, model: torch.nn.Module, step: int) -> None:
        if step in self.steps:
            self.keep(model, f"step{step}")

    def after_epoch(self, model: torch.nn.Module, epoch: int) -> None:
        if epoch in self.epochs:
            self.keep(model, f"epoch{epoch}")


def _save_resume(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def train(
    classifier: EmotionClassifier,
    train_data: SplitData,
    select_data: SplitData,
    classes: list[str],
    settings: dict,
    seed: int,
    resume_file: Path,
    run_key: str,
    checkpoint_tags: dict | None = None,
) -> TrainingState:
    """Train for ``settings['epochs']`` epochs; return the state with the best parameters.

    ``checkpoint_tags`` (run, method, scaling) name the checkpoints ``settings['checkpoints']``
    asks for (:class:`CheckpointKeeper`); they are kept in ``resume_file.parent / "checkpoints"``."""
    batches_per_epoch = -(-len(train_data.clips) // settings["batch_size"])
    steps_per_epoch = -(-batches_per_epoch // settings["grad_accum"])
    # Checked before anything trains.
    keeper = CheckpointKeeper.for_run(settings, settings["epochs"], steps_per_epoch,
                                      resume_file.parent / checkpoints.FOLDER, checkpoint_tags)
    device = pick_device(settings["device"])
    classifier.to(device)
    parameters = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings["lr"], weight_decay=settings["weight_decay"])
    total_steps = max(1, settings["epochs"] * steps_per_epoch)
    warmup = int(settings["warmup_ratio"] * total_steps)
    # Linear warm-up from 0, then linear decay to 0: the Hugging Face Trainer's default
    # schedule (transformers.get_linear_schedule_with_warmup).
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: step / max(1, warmup) if step < warmup
        else max(0.0, (total_steps - step) / max(1, total_steps - warmup)),
    )
    weight = class_weights(train_data.labels, len(classes)).to(device) if settings["class_weighted"] else None
    state = TrainingState()
    torch.manual_seed(seed)

    if resume_file.is_file():
        saved = torch.load(resume_file, map_location="cpu", weights_only=False)
        if saved["run_key"] == run_key:
            load_parameters(classifier, saved["parameters"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            torch.set_rng_state(saved["torch_rng"])
            if device.type == "cuda" and saved.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(saved["cuda_rng"])
            state = saved["state"]
            log.info("resuming after epoch %d from %s", state.epoch, resume_file)
        else:
            log.info("ignoring %s: it was written for other settings", resume_file)

    if state.epoch == 0 and settings["epochs"] == 0:
        state.best_parameters = trainable_state(classifier)
    if keeper is not None and state.epoch == 0:
        # From scratch: checkpoints left by a run with other settings are not this run's.
        shutil.rmtree(keeper.folder, ignore_errors=True)
        if 0 in keeper.epochs:
            keeper.keep(classifier.model, "epoch0")
    optimizer_steps = state.epoch * steps_per_epoch
    max_frames = max_frames_of(settings["max_seconds"])
    select_column = f"{settings['select_on']}_{settings['select_metric']}"
    for epoch in range(state.epoch + 1, settings["epochs"] + 1):
        started = time.perf_counter()
        classifier.train()
        batches = training_batches(train_data.lengths, settings["batch_size"], seed, epoch)
        running, seen = 0.0, 0
        progress = tqdm(batches, desc=f"epoch {epoch}/{settings['epochs']}", unit="batch",
                        mininterval=1.0 if os.isatty(2) else 30.0)
        for step, batch in enumerate(progress):
            features, mask = collate([train_data.clips[i] for i in batch], max_frames, settings["legacy"])
            labels = torch.from_numpy(train_data.labels[batch]).to(device)
            with autocast(device):
                logits = classifier(features.to(device), mask.to(device))
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, weight=weight)
            (loss / settings["grad_accum"]).backward()
            if (step + 1) % settings["grad_accum"] == 0 or step + 1 == len(batches):
                torch.nn.utils.clip_grad_norm_(parameters, settings["max_grad_norm"])
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                optimizer_steps += 1
                if keeper is not None:
                    keeper.after_step(classifier.model, optimizer_steps)
            running += loss.item() * len(batch)
            seen += len(batch)
            progress.set_postfix(loss=f"{running / seen:.4f}", refresh=False)
        report, _ = evaluate(classifier, select_data, classes, settings, device)
        row = {"epoch": epoch, "train_loss": running / seen, "lr": schedule.get_last_lr()[0],
               f"{settings['select_on']}_uar": report["uar"], f"{settings['select_on']}_war": report["war"],
               f"{settings['select_on']}_macro_f1": report["macro_f1"],
               "seconds": time.perf_counter() - started}
        state.history.append(row)
        if best_epoch(state.history, select_column) == epoch:
            state.best_epoch = epoch
            state.best_parameters = trainable_state(classifier)
        state.epoch = epoch
        log.info("epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        if keeper is not None:
            # Before the resume state: an epoch whose checkpoint is missing is trained again.
            keeper.after_epoch(classifier.model, epoch)
        _save_resume(resume_file, {
            "run_key": run_key, "parameters": trainable_state(classifier), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None, "state": state,
        })
    load_parameters(classifier, state.best_parameters)
    return state
