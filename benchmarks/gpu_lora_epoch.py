"""Benchmark on a GPU: one LoRA training epoch of Whisper-base (bf16 autocast), cropped vs padded.

The GPU machine this project is sometimes lent carries at most 64 MiB of files and has no
zarr, so ``prepare`` (run where the workflow ran) packs what the epoch needs: the real
Whisper-base classifier in fp16 (the encoder's weights are fp16 in the release anyway) and the
log-mel frames and labels of the demo corpus' fold-1 training split. ``run`` (on the GPU)
trains two epochs each way with ``workflow_scripts.train.loop.train`` and reports utterances
per second of the second epoch (the first includes CUDA start-up)::

    .venv/bin/python benchmarks/gpu_lora_epoch.py prepare --out .gpu_carry
    python3 benchmarks/gpu_lora_epoch.py run --carry .gpu_carry --out benchmarks/results/gpu_lora_epoch.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

CLASSES = ["neutral", "happy", "angry", "sad"]


def prepare(args) -> None:
    import pandas as pd

    from workflow_scripts.features import FeatureStore
    from workflow_scripts.models.build import load_classifier

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_classifier(args.checkpoint, CLASSES, seed=0).half().save_pretrained(out / "model")
    folds = pd.read_parquet(Path(args.results) / "data/demo/folds/loso_speaker.parquet")
    manifest = pd.read_parquet(Path(args.results) / "data/demo/manifest.parquet").set_index("utt_id")
    train_ids = folds.query("fold == 1 and split == 'train'")["utt_id"].tolist()
    store = FeatureStore(str(Path(args.results) / "features/demo/logmel80.zarr"))
    clips = [store[store.index[u]] for u in train_ids]
    np.savez(out / "clips.npz", mel=np.concatenate(clips).astype(np.float16),
             offsets=np.cumsum([0] + [len(c) for c in clips]),
             labels=np.array([CLASSES.index(manifest.loc[u, "label"]) for u in train_ids]))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"packed {len(clips)} clips and the model into {out} ({size / 2**20:.1f} MiB)")


def run(args) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForAudioClassification

    from workflow_scripts.models.encoder import EmotionClassifier
    from workflow_scripts.train.loop import SplitData, train

    carry = Path(args.carry)
    packed = np.load(carry / "clips.npz")
    offsets = packed["offsets"]
    count = min(args.limit or len(offsets) - 1, len(offsets) - 1)
    clips = [packed["mel"][offsets[i]:offsets[i + 1]].astype(np.float32) for i in range(count)]
    labels = packed["labels"][:count]
    data = SplitData(clips, labels, [str(i) for i in range(len(clips))])
    small = SplitData(clips[:16], labels[:16], [str(i) for i in range(16)])
    cuda = args.device == "cuda"
    report = {"benchmark": "gpu_lora_epoch", "gpu": torch.cuda.get_device_name(0) if cuda else "none (cpu)",
              "torch": torch.__version__,
              "python": platform.python_version(), "utterances": len(clips),
              "mean_clip_seconds": float(np.mean([len(c) for c in clips]) / 100), "runs": {}}
    for name, legacy, batch in [("cropped_b8", False, 8), ("padded_30s_b8", True, 8), ("cropped_b32", False, 32)]:
        torch.manual_seed(0)
        model = WhisperForAudioClassification.from_pretrained(carry / "model", dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=["q_proj", "v_proj"],
                                                 modules_to_save=["projector", "classifier"]))
        settings = {"device": args.device, "lr": 5e-4, "weight_decay": 0.0, "batch_size": batch, "grad_accum": 1,
                    "epochs": 2, "warmup_ratio": 0.0, "max_grad_norm": 1.0, "class_weighted": False,
                    "max_seconds": 30, "legacy": legacy, "eval_batch_size": 16, "select_on": "val",
                    "select_metric": "uar"}
        with tempfile.TemporaryDirectory() as tmp:
            state = train(EmotionClassifier(model, legacy=legacy), data, small, CLASSES, settings, seed=0,
                          resume_file=Path(tmp) / "state.pt", run_key=name)
        seconds = [row["seconds"] for row in state.history]
        report["runs"][name] = {"epoch_seconds": seconds, "utterances_per_second": len(clips) / seconds[-1],
                                "train_loss": [row["train_loss"] for row in state.history],
                                "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        print(name, json.dumps(report["runs"][name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("prepare")
    pack.add_argument("--results", default="results")
    pack.add_argument("--checkpoint", default="results/models/whisper-base")
    pack.add_argument("--out", default=".gpu_carry")
    go = commands.add_parser("run")
    go.add_argument("--carry", default=".gpu_carry")
    go.add_argument("--out", default="benchmarks/results/gpu_lora_epoch.json")
    go.add_argument("--device", default="cuda", help="cpu only to smoke-test the script")
    go.add_argument("--limit", type=int, default=0, help="use only the first N clips (smoke tests)")
    args = parser.parse_args()
    prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()
