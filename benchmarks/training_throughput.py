"""Benchmark: one LoRA training epoch of Whisper-base on the CPU, loralens vs the paper's recipe.

Both train the same utterances (from the demo corpus the default workflow builds) with the
paper's LoRA (r 32, alpha 64, v_proj, dropout 0.1), AdamW at 5e-5, batch 8, and score the same
small evaluation set once at the end of the epoch, in one process on the same machine:

* ``paper``: the original train_lora.py recipe -- Hugging Face ``Trainer``, a collator that
  computes each clip's log-mel with ``WhisperFeatureExtractor`` on every batch of every epoch,
  every clip padded to 30 s, ``WhisperForAudioClassification``'s own forward;
* ``loralens``: ``workflow_scripts.train.loop.train`` -- log-mel read from the feature cache,
  length-bucketed batches cropped to their longest clip, masked attention and pooling.

Reports utterances per second of each, and the ratio, in
``benchmarks/results/training_throughput.json``. Run the default workflow first (it builds the
demo corpus, its features and the Whisper-base checkpoint)::

    .venv/bin/snakemake --cores all
    .venv/bin/python benchmarks/training_throughput.py
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workflow_scripts.config import validate_config
from workflow_scripts.data.audio_cache import AudioStore
from workflow_scripts.features import FeatureStore
from workflow_scripts.models.build import load_classifier
from workflow_scripts.models.encoder import EmotionClassifier
from workflow_scripts.runs import run_settings
from workflow_scripts.train.loop import SplitData, train

CLASSES = ["neutral", "happy", "angry", "sad"]
LORA = {"r": 32, "lora_alpha": 64, "lora_dropout": 0.1, "target_modules": ["v_proj"]}


def lora_model(checkpoint: Path):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(load_classifier(checkpoint, CLASSES, seed=0),
                          LoraConfig(**LORA, modules_to_save=["projector", "classifier"]))


def paper_recipe(checkpoint: Path, audio: list[np.ndarray], labels: np.ndarray, eval_idx: np.ndarray,
                 batch: int) -> float:
    """Seconds for one epoch with the Hugging Face Trainer, as train_lora.py does it."""
    from transformers import Trainer, TrainingArguments, WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(checkpoint)

    class Clips(torch.utils.data.Dataset):
        def __init__(self, indices):
            self.indices = list(indices)

        def __len__(self):
            return len(self.indices)

        def __getitem__(self, i):
            return {"audio": audio[self.indices[i]], "labels": int(labels[self.indices[i]])}

    def collate(items):  # the original's collator: log-mel per clip, every batch, 30-s padding
        features = [extractor(x["audio"], sampling_rate=16000).input_features[0] for x in items]
        return {"input_features": torch.tensor(np.stack(features)),
                "labels": torch.tensor([x["labels"] for x in items])}

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
            num_train_epochs=1, learning_rate=5e-5, eval_strategy="epoch", save_strategy="no",
            logging_steps=10, report_to="none", remove_unused_columns=False, dataloader_num_workers=0,
            label_names=["labels"], seed=42, use_cpu=True, disable_tqdm=True,
        )
        trainer = Trainer(model=lora_model(checkpoint), args=args, train_dataset=Clips(range(len(audio))),
                          eval_dataset=Clips(eval_idx), data_collator=collate)
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def loralens(checkpoint: Path, mels: list[np.ndarray], labels: np.ndarray, eval_idx: np.ndarray,
             batch: int) -> float:
    # A LoRA run's settings exactly as the workflow derives them (schema defaults filled in).
    config = validate_config({"training": {"device": "cpu", "lr": 5e-5, "batch_size": batch, "epochs": 1,
                                           "eval_batch_size": batch}})
    settings = run_settings(config, "demo", "lora")
    classifier = EmotionClassifier(lora_model(checkpoint))
    train_data = SplitData(mels, labels, [str(i) for i in range(len(mels))])
    eval_data = SplitData([mels[i] for i in eval_idx], labels[eval_idx], [str(i) for i in eval_idx])
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        train(classifier, train_data, eval_data, CLASSES, settings, seed=42,
              resume_file=Path(out) / "state.pt", run_key="benchmark")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results", help="the workflow's results folder")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--checkpoint", default="results/models/whisper-base")
    parser.add_argument("--utterances", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/training_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.results) / "data" / args.dataset
    manifest = pd.read_parquet(data / "manifest.parquet")
    audio_store = AudioStore(str(data / "audio.zarr"))
    feature_store = FeatureStore(str(Path(args.results) / "features" / args.dataset / "logmel80.zarr"))
    chosen = np.sort(np.random.default_rng(0).choice(len(manifest), args.utterances, replace=False))
    audio = [audio_store[int(i)] for i in chosen]
    mels = [feature_store[feature_store.index[manifest["utt_id"][i]]] for i in chosen]
    labels = np.array([CLASSES.index(manifest["label"][i]) for i in chosen])
    eval_idx = np.arange(args.batch)  # one batch scored at the epoch's end, by both
    checkpoint = Path(args.checkpoint)

    ours = loralens(checkpoint, mels, labels, eval_idx, args.batch)
    print(f"loralens: {ours:.1f} s", flush=True)
    paper = paper_recipe(checkpoint, audio, labels, eval_idx, args.batch)
    print(f"paper recipe: {paper:.1f} s", flush=True)
    report = {
        "benchmark": "training_throughput",
        "model": "whisper-base (offline)", "lora": LORA, "batch": args.batch, "utterances": args.utterances,
        "mean_clip_seconds": float(np.mean([len(a) / 16000 for a in audio])),
        "threads": args.threads, "device": "cpu",
        "machine": {"processor": platform.processor() or platform.machine(), "torch": torch.__version__},
        "seconds": {"loralens": ours, "paper_recipe": paper},
        "utterances_per_second": {"loralens": args.utterances / ours, "paper_recipe": args.utterances / paper},
        "speedup": paper / ours,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["utterances_per_second"]), f"speedup {report['speedup']:.1f}x")


if __name__ == "__main__":
    main()
