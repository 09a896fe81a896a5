"""Benchmark: Whisper-base encoder forward and LoRA training step, 30-s padding vs cropping.

Batches of 8 clips with IEMOCAP-like lengths (log-normal with IEMOCAP's mean 4.55 s and median
3.58 s, clipped to 0.6-30 s), drawn with a fixed seed, on the CPU threads given. The time per
batch is averaged over the batches, after one warm-up batch. Compares

* ``padded``: the original recipe -- every clip padded to Whisper's 30-s window (3000 frames),
  no masks, Hugging Face's mean pooling;
* ``cropped_random``: loralens' cropping -- each batch cropped to its longest clip, masked --
  with clips batched in random order;
* ``cropped_bucketed``: the same with length-bucketed batches (clips sorted by length), as
  loralens' training batches them.

Writes ``benchmarks/results/encoder_padding.json``. Usage::

    .venv/bin/python benchmarks/encoder_padding.py [--checkpoint results/models/whisper-base]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from workflow_scripts.features import collate
from workflow_scripts.models.build import build_checkpoint, load_classifier
from workflow_scripts.models.encoder import classify, encode

IEMOCAP_MEAN_S, IEMOCAP_MEDIAN_S = 4.55, 3.58
CLASSES = ["neutral", "happy", "angry", "sad"]


def iemocap_like_lengths(n: int, seed: int) -> np.ndarray:
    """Clip lengths in seconds from a log-normal with IEMOCAP's mean and median."""
    sigma = np.sqrt(2 * np.log(IEMOCAP_MEAN_S / IEMOCAP_MEDIAN_S))
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(IEMOCAP_MEDIAN_S), sigma, n), 0.6, 30.0)


def fake_clips(lengths_s: np.ndarray, seed: int) -> list[np.ndarray]:
    """Log-mel-like frames (timing does not depend on the values)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, (int(s * 100), 80)).astype(np.float32) for s in lengths_s]


def seconds_per_batch(step, batches: list) -> dict:
    """Mean and spread of ``step(batch)`` over the batches, after one warm-up call."""
    step(*batches[0])
    times = []
    for batch in batches:
        start = time.perf_counter()
        step(*batch)
        times.append(time.perf_counter() - start)
    return {"mean": statistics.fmean(times), "min": min(times), "max": max(times)}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def lora_step_fn(checkpoint: Path, legacy: bool):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        load_classifier(checkpoint, CLASSES, seed=0),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                   modules_to_save=["projector", "classifier"]),
    )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(features, mask):
        labels = torch.arange(features.shape[0]) % len(CLASSES)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(classify(model, features, mask, legacy=legacy), labels)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="results/models/whisper-base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/encoder_padding.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "config.json").is_file():
        build_checkpoint("whisper-base", {"source": "offline_whisper_base", "num_mel_bins": 80}, checkpoint)
    n = args.batch * args.batches
    lengths = iemocap_like_lengths(n, args.seed)
    clips = fake_clips(lengths, args.seed)
    by_length = sorted(range(n), key=lambda i: lengths[i])
    # Cropped modes first: peak RSS only grows, so "so far" is then each mode's own peak.
    orders = {"cropped_bucketed": by_length, "cropped_random": list(range(n)), "padded": list(range(n))}
    model = load_classifier(checkpoint, CLASSES, seed=0).eval()
    results = {}
    for mode, order in orders.items():
        legacy = mode == "padded"
        batches = [
            collate([clips[i] for i in order[k : k + args.batch]], max_frames=3000, legacy=legacy)
            for k in range(0, n, args.batch)
        ]

        def forward(features, mask):
            with torch.inference_mode():
                encode(model.encoder, features, None if legacy else mask)

        results[mode] = {
            "mel_frames_per_batch": [int(features.shape[-1]) for features, _ in batches],
            "encoder_forward_s": seconds_per_batch(forward, batches),
            "lora_train_step_s": seconds_per_batch(lora_step_fn(checkpoint, legacy), batches),
            "peak_rss_gb_so_far": peak_rss_gb(),
        }
        print(mode, json.dumps(results[mode]), flush=True)
    report = {
        "benchmark": "encoder_padding",
        "model": "whisper-base (offline, converted from CTranslate2)",
        "batch": args.batch,
        "batches": args.batches,
        "clip_seconds": [round(float(s), 2) for s in lengths],
        "mean_clip_seconds": float(lengths.mean()),
        "threads": args.threads,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
                    "torch": torch.__version__},
        "results": results,
        "speedup_over_padded": {
            mode: {
                metric: results["padded"][metric]["mean"] / results[mode][metric]["mean"]
                for metric in ("encoder_forward_s", "lora_train_step_s")
            }
            for mode in ("cropped_random", "cropped_bucketed")
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["speedup_over_padded"], indent=2))


if __name__ == "__main__":
    main()
