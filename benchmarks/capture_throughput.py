"""Benchmark: activation capture of Whisper-base on the CPU, loralens vs the paper's approach.

Every variant sees the same synthetic clips (log-mel frames with IEMOCAP-like lengths: a
log-normal with IEMOCAP's mean 4.55 s and median 3.58 s, clipped to 0.6-30 s, fixed seed) and
the same model: Whisper-base with a rank-8 LoRA on q_proj and v_proj, saved as a ``lora_random``
run (A, B ~ N(0, 0.02): nonzero B outputs, so the store does not compress better than a trained
run's would). The fold table puts every clip in ``test``, so loralens keeps frame-level arrays
(residual stream at every layer, every LoRA A and B output) for every clip, not only the
pooled ones: the most it writes. Each variant runs in its own subprocess, so that its peak RSS
(``resource.getrusage``'s ``ru_maxrss``) is its own, and only the paper's imports nnsight
(which patches torch on import).

Variants:

* ``paper``: the original notebook's approach -- one utterance per forward pass, padded to
  Whisper's 30-s window (3000 mel frames, no masks), Hugging Face's own forward, traced with
  nnsight (``NNsight(model).trace``; plain ``register_forward_hook`` hooks if nnsight is not
  installed, or with ``--paper-hooks plain``), saving what loralens hooks -- the residual
  stream at every layer, every block's attention and MLP (fc2) outputs, every LoRA A and B
  output, the logits -- whole (1500 frames), float32, into a Python list kept in RAM. Run on
  an evenly spaced subset of the clips (``--paper-clips``; 30-s padding makes its cost per clip
  independent of the clip's length), and at a quarter of it for its memory. Timed: the loop over the
  utterances (not the model load), under ``torch.no_grad``, without torch's deterministic mode
  (which ``capture_store`` sets), nothing pooled or written to disk -- all in its favour.
* ``loralens_store``: the whole entry point, ``capture.run.capture_store("acts", ...)``:
  loading the run's weights, reading the log-mel store, length-sorted batches cropped to their
  longest clip with masks, ``capture_forward`` (hooks, pooled arrays, contribution sums,
  frame-level rows) and the Zarr writer, through to the finished ``acts.zarr``. Timed end to
  end, with a breakdown (model load, feature read and collate, forward capture, store appends,
  store finish), and each batch's capture time and RSS, taken by wrapping those functions with
  timers (microseconds of overhead). Run at ``--clips`` N and, for its memory, at ``--scale`` x
  N clips: by default the N clips' lengths repeated (``--scaled-lengths tiled``), so that the
  batches are as long as the N run's and only the number of clips differs; ``drawn`` draws the
  extra clips anew, and the longest clip -- which sets the longest batch, hence the peak --
  then tends to grow with the number of clips.
* ``batch_costs``: over the same batches as ``loralens_store`` (same length-sorted batching,
  same cropping, read beforehand), per batch: the bare forward (``models.encoder.classify``
  under ``torch.no_grad``, no hooks) and ``capture_forward``, alternating which goes first,
  ``--rounds`` times, each batch's minimum kept (the machine may be shared); on the first round
  also the store writes of the captured batch (the appends, and at the end the writer's finish,
  which flushes what the appends buffered). Both run under torch's deterministic mode, as in
  ``capture_store``. The capture/bare ratio is the cost of capture against its limit, the
  forward pass itself.

Memory, once more: ``loralens_store`` at N and scale x N clips with glibc's
``MALLOC_MMAP_THRESHOLD_`` fixed (``--malloc-mmap-threshold``, 1 MiB), which turns off glibc's
dynamic mmap threshold: large blocks are then mapped and unmapped rather than left in the heap,
so RSS counts what is held rather than what the allocator keeps after freeing.

Wall times are the measure; as the machine may be shared, ``paper`` and ``loralens_store`` at N
clips run ``--repeats`` times, alternating, and each keeps its fastest run (all are recorded),
CPU times (user + system) are reported beside wall times, and the 1-min load average before and
after each variant is recorded.

Ratios and goals: loralens' end-to-end utterances/s (``capture_store``'s whole wall time, model
load included) over the paper's utterances/s, goal >= 20; capture per batch over the bare
forward, goal <= 1.3 (reported without and with the store writes); peak RSS of loralens at N
and at scale x N clips (should not grow: it streams to disk) and of the paper's approach at its
two sizes (grows with the clips kept). Writes ``benchmarks/results/capture_throughput.json``.
Usage::

    .venv/bin/python benchmarks/capture_throughput.py [--checkpoint results/models/whisper-base]
        [--clips 96] [--scale 4] [--paper-clips 24] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

IEMOCAP_MEAN_S, IEMOCAP_MEDIAN_S = 4.55, 3.58
CLASSES = ["neutral", "happy", "angry", "sad"]
SPEAKERS = 8
RANK, TARGETS, METHOD = 8, "q_proj+v_proj", "lora_random"
THROUGHPUT_GOAL = 20.0  # loralens utterances/s over the paper's, at least
CAPTURE_COST_GOAL = 1.3  # capture seconds per batch over the bare forward's, at most


def settings(batch_size: int) -> dict:
    """The capture settings of an ``acts`` store, as ``capture.settings.capture_settings`` gives them."""
    return {"capture": {"batch_size": batch_size, "frame_dtype": "float32", "resid_layers": "auto",
                        "lora_b_blocks": "auto"},
            "legacy": False, "max_seconds": 30, "classes": CLASSES, "device": "cpu"}


def bench_run(dataset: str = "bench"):
    from workflow_scripts.runs import Run

    return Run(dataset, "loso_speaker", "whisper-base", METHOD, TARGETS, RANK, 0, 1)


def iemocap_like_lengths(n: int, seed: int) -> np.ndarray:
    """Clip lengths in seconds from a log-normal with IEMOCAP's mean and median."""
    sigma = np.sqrt(2 * np.log(IEMOCAP_MEAN_S / IEMOCAP_MEDIAN_S))
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(IEMOCAP_MEDIAN_S), sigma, n), 0.6, 30.0)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mib() -> float:
    """Current resident set size."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    """User and system CPU time of this process so far (less sensitive than wall time to other
    processes on the machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# --- inputs (parent process) -------------------------------------------------------------------


def clip_lengths(n_clips: int, scale: int, seed: int, scaled: str) -> np.ndarray:
    """Seconds of the ``scale * n_clips`` clips; the first ``n_clips`` are the benchmark's clips.
    ``tiled``: the rest repeat their lengths, so a scaled run's batches are as long as the N
    run's and only the number of clips differs; ``drawn``: the rest are new draws (so the
    longest clip, which sets the longest batch, tends to grow with the number of clips)."""
    if scaled == "tiled":
        return np.tile(iemocap_like_lengths(n_clips, seed), scale)
    return iemocap_like_lengths(n_clips * scale, seed)  # its first n_clips are the same draws


def build_inputs(root: Path, checkpoint: Path, lengths: np.ndarray, n_clips: int, seed: int) -> dict:
    """A log-mel store of the clips (random frames of the given lengths), their manifest, two fold
    tables (the first ``n_clips`` clips, and all), every clip in ``test``; and the run's saved
    LoRA weights."""
    import pandas as pd
    import torch

    from workflow_scripts.features import FeatureStoreWriter
    from workflow_scripts.train.methods import build_model, save_weights

    rng = np.random.default_rng(seed)
    rows = []
    with FeatureStoreWriter(str(root / "logmel80.zarr"), 80) as writer:
        for i, seconds in enumerate(lengths):
            utt = f"utt{i:05d}"
            writer.append(utt, rng.uniform(-1.0, 1.0, (int(seconds * 100), 80)).astype(np.float32))
            rows.append({"utt_id": utt, "label": CLASSES[i % len(CLASSES)], "speaker": f"s{i % SPEAKERS}",
                         "gender": "F"})
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(root / "manifest.parquet")
    # The columns of a fold table (data/folds.py); one fold, every clip in test, so that the
    # capture keeps frame-level arrays for all of them (the most it writes).
    folds = pd.DataFrame({"protocol": "loso_speaker", "fold": 1, "utt_id": manifest["utt_id"],
                          "split": "test"})
    folds.to_parquet(root / "folds_all.parquet")
    folds.iloc[:n_clips].to_parquet(root / "folds_n.parquet")
    run = bench_run()
    torch.manual_seed(seed)
    save_weights(build_model(checkpoint, CLASSES, run, {"alpha": 2, "alpha_policy": "ratio", "dropout": 0.1}),
                 run.method, root / "weights")
    return {"features": root / "logmel80.zarr", "manifest": root / "manifest.parquet",
            "folds_n": root / "folds_n.parquet", "folds_all": root / "folds_all.parquet",
            "weights": root / "weights"}


# --- workers (one subprocess each) -------------------------------------------------------------


def _timed(timers: dict, name: str, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            timers[name] += time.perf_counter() - start

    return wrapper


def worker_loralens_store(args) -> dict:
    """``capture_store("acts", ...)`` end to end, with a breakdown of where its time goes."""
    import workflow_scripts.capture.run as capture_run
    from workflow_scripts.capture.store import CaptureStoreWriter

    timers: dict[str, float] = defaultdict(float)
    after_load = {}
    load = capture_run.load_run_model

    def load_run_model(*a, **k):
        start = time.perf_counter()
        model = load(*a, **k)
        timers["load_model"] += time.perf_counter() - start
        after_load["rss_mib"] = rss_mib()
        return model

    batches = capture_run._batches

    def timed_batches(*a, **k):
        iterator = batches(*a, **k)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                timers["read_and_collate"] += time.perf_counter() - start
            yield item

    per_batch = {"mel_frames": [], "capture_forward_s": [], "rss_mib": []}
    forward = capture_run.capture_forward

    def capture_forward(model, features, *a, **k):
        start = time.perf_counter()
        result = forward(model, features, *a, **k)
        seconds = time.perf_counter() - start
        timers["capture_forward"] += seconds
        per_batch["mel_frames"].append(int(features.shape[-1]))
        per_batch["capture_forward_s"].append(round(seconds, 4))
        per_batch["rss_mib"].append(round(rss_mib()))  # after the forward, before the batch's appends
        return result

    capture_run.load_run_model = load_run_model
    capture_run._batches = timed_batches
    capture_run.capture_forward = capture_forward
    for method, name in (("append_utterances", "store_appends"), ("append_frames", "store_appends"),
                         ("_finish", "store_finish"), ("__enter__", "store_create")):
        setattr(CaptureStoreWriter, method, _timed(timers, name, getattr(CaptureStoreWriter, method)))
    out = Path(args.workdir) / f"acts_{Path(args.folds).stem}.zarr"
    start, cpu_start = time.perf_counter(), cpu_seconds()
    summary = capture_run.capture_store("acts", bench_run(), settings(args.batch_size), Path(args.checkpoint),
                                        Path(args.weights), Path(args.features), Path(args.manifest),
                                        Path(args.folds), out)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    accounted = sum(timers.values())
    return {
        "utterances": summary["utterances"], "frame_items": summary["frame_items"], "seconds": seconds,
        "cpu_seconds": cpu, "utterances_per_cpu_s": summary["utterances"] / cpu,
        "utterances_per_s": summary["utterances"] / seconds,
        "utterances_per_s_without_model_load": summary["utterances"] / (seconds - timers["load_model"]),
        "breakdown_s": {**dict(timers), "other": seconds - accounted},
        "store_mib": folder_mib(out), "rss_after_model_load_mib": after_load.get("rss_mib"),
        "peak_rss_mib": peak_rss_mib(), "per_batch": per_batch,
    }


def worker_batch_costs(args) -> dict:
    """Bare forward vs ``capture_forward`` on the same batches, alternating, minimum of the rounds."""
    import pandas as pd
    import torch

    import workflow_scripts.capture.run as capture_run
    from workflow_scripts.capture.passes import CapturePlan, capture_forward
    from workflow_scripts.capture.store import CaptureStoreWriter
    from workflow_scripts.features import FeatureStore
    from workflow_scripts.models.encoder import classify

    torch.use_deterministic_algorithms(True, warn_only=True)  # as capture_store sets it
    spec, run = settings(args.batch_size), bench_run()
    store = FeatureStore(str(args.features))
    clips = capture_run.fold_clips(run, pd.read_parquet(args.manifest), pd.read_parquet(args.folds), store,
                                   CLASSES)
    model = capture_run.load_run_model(run, Path(args.checkpoint), Path(args.weights), CLASSES)
    shape = capture_run.store_shape("acts", model, CLASSES, spec)
    plan = CapturePlan(spec["legacy"], shape.resid_layers, shape.lora_b_blocks)
    device = torch.device("cpu")
    batches = list(capture_run._batches(clips, store, spec, device))

    def bare(features, mask):
        with torch.no_grad():
            classify(model, features, mask, spec["legacy"])

    def capture(part, features, mask):
        return capture_forward(model, features, mask, plan, (part["split"] == "test").tolist())

    _, first_features, first_mask = batches[0]
    bare(first_features, first_mask)  # warm-up (first-call costs)
    capture(*batches[0])
    times = {"bare_forward": np.full((args.rounds, len(batches)), np.inf),
             "capture_forward": np.full((args.rounds, len(batches)), np.inf)}
    appends = []
    writer = CaptureStoreWriter(Path(args.workdir) / "acts_batch_costs.zarr", shape, {"run": run.id})
    writer.__enter__()
    try:
        for round_ in range(args.rounds):
            for b, (part, features, mask) in enumerate(batches):
                order = ["bare_forward", "capture_forward"]
                if (round_ + b) % 2:
                    order.reverse()
                for name in order:
                    start = time.perf_counter()
                    if name == "bare_forward":
                        bare(features, mask)
                    else:
                        utterance, rows = capture(part, features, mask)
                    times[name][round_, b] = time.perf_counter() - start
                if round_ == 0:  # the store appends of this batch, as capture_store makes them
                    start = time.perf_counter()
                    writer.append_utterances({**capture_run._utterance_columns(part), **utterance})
                    for utt_id, frame_rows in zip(part["utt_id"], rows):
                        if frame_rows is not None:
                            writer.append_frames(utt_id, frame_rows)
                    appends.append(time.perf_counter() - start)
                del utterance, rows
    except BaseException:
        writer.__exit__(*sys.exc_info())
        raise
    start = time.perf_counter()
    writer.__exit__(None, None, None)  # flushes what the appends buffered, as capture_store's writer does
    finish_s = time.perf_counter() - start
    best = {name: value.min(0) for name, value in times.items()}
    n = len(clips)
    bare_s, capture_s = float(best["bare_forward"].sum()), float(best["capture_forward"].sum())
    write_s = sum(appends) + finish_s
    return {
        "utterances": n, "batches": len(batches), "rounds": args.rounds,
        "mel_frames_per_batch": [int(features.shape[-1]) for _, features, _ in batches],
        "bare_forward_s_per_batch": best["bare_forward"].round(4).tolist(),
        "capture_forward_s_per_batch": best["capture_forward"].round(4).tolist(),
        "store_appends_s_per_batch": np.round(appends, 4).tolist(),
        "store_finish_s": finish_s,
        "bare_forward_s": bare_s, "capture_forward_s": capture_s, "store_write_s": write_s,
        "bare_forward_utterances_per_s": n / bare_s, "capture_forward_utterances_per_s": n / capture_s,
        "capture_over_bare": capture_s / bare_s,
        "capture_with_store_write_over_bare": (capture_s + write_s) / bare_s,
        "capture_over_bare_per_batch": (best["capture_forward"] / best["bare_forward"]).round(3).tolist(),
        "all_rounds_s": {name: value.round(4).tolist() for name, value in times.items()},
        "peak_rss_mib": peak_rss_mib(),
    }


def paper_nnsight(hf):
    """A function ``features -> {name: tensor}`` tracing Hugging Face's forward with nnsight."""
    from nnsight import NNsight

    net = NNsight(hf)

    def trace(features):
        saved = {}
        with net.trace(input_features=features):  # nnsight needs the saves in execution order
            layers = net.encoder.layers
            saved["resid/0"] = layers[0].input.save()
            for b, layer in enumerate(layers):
                for module in ("q_proj", "v_proj"):
                    proj = getattr(layer.self_attn, module)
                    saved[f"lora/{b}/{module}/a_out"] = proj.lora_A["default"].output.save()
                    saved[f"lora/{b}/{module}/b_out"] = proj.lora_B["default"].output.save()
                saved[f"attn/{b}"] = layer.self_attn.output[0].save()
                saved[f"mlp/{b}"] = layer.fc2.output.save()
                saved[f"resid/{b + 1}"] = layer.output.save()
            saved["logits"] = net.output.logits.save()
        return saved

    return trace


def paper_plain_hooks(hf):
    """The same with plain ``register_forward_hook`` hooks (the fallback without nnsight)."""
    targets = {}
    for b, layer in enumerate(hf.encoder.layers):
        targets[f"resid/{b + 1}"] = layer
        targets[f"attn/{b}"] = layer.self_attn
        targets[f"mlp/{b}"] = layer.fc2
        for module in ("q_proj", "v_proj"):
            proj = getattr(layer.self_attn, module)
            targets[f"lora/{b}/{module}/a_out"] = proj.lora_A["default"]
            targets[f"lora/{b}/{module}/b_out"] = proj.lora_B["default"]

    def trace(features):
        saved = {}

        def keep(name):
            def hook(module, inputs, output):
                saved[name] = output[0] if isinstance(output, tuple) else output
            return hook

        def keep_input(module, inputs):
            saved["resid/0"] = inputs[0]

        handles = [module.register_forward_hook(keep(name)) for name, module in targets.items()]
        handles.append(hf.encoder.layers[0].register_forward_pre_hook(keep_input))
        try:
            saved["logits"] = hf(input_features=features).logits
        finally:
            for handle in handles:
                handle.remove()
        return saved

    return trace


def worker_paper(args) -> dict:
    """One utterance per forward pass, 30-s window, everything traced kept in a list in RAM."""
    import pandas as pd
    import torch

    import workflow_scripts.capture.run as capture_run
    from workflow_scripts.features import FeatureStore, collate, max_frames_of
    from workflow_scripts.models.encoder import classification_model

    run = bench_run()  # no torch.use_deterministic_algorithms: the original did not set it
    store = FeatureStore(str(args.features))
    clips = capture_run.fold_clips(run, pd.read_parquet(args.manifest), pd.read_parquet(args.folds), store,
                                   CLASSES)
    subset = np.linspace(0, len(clips) - 1, args.paper_clips).round().astype(int)
    model = capture_run.load_run_model(run, Path(args.checkpoint), Path(args.weights), CLASSES)
    hf = classification_model(model)
    tracer, hooks = None, args.paper_hooks
    if hooks in ("auto", "nnsight"):
        try:
            import nnsight

            tracer, hooks = paper_nnsight(hf), f"nnsight {nnsight.__version__}"
        except ImportError:
            if args.paper_hooks == "nnsight":
                raise
    if tracer is None:
        tracer, hooks = paper_plain_hooks(hf), "plain hooks (torch register_forward_hook)"
    rss_before = rss_mib()
    kept, times = [], []
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for i in subset:
        clip_start = time.perf_counter()
        features, _ = collate([store[store.index[clips["utt_id"][i]]]], max_frames_of(30), legacy=True)
        with torch.no_grad():
            kept.append({name: tensor.detach() for name, tensor in tracer(features).items()})
        times.append(time.perf_counter() - clip_start)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for saved in kept for t in saved.values()}  # each storage once
    retained = sum(storages.values()) / 2**20
    return {
        "hooks": hooks, "utterances": len(kept),
        "clip_seconds": [round(int(clips["length"][i]) / 100, 2) for i in subset],
        "mel_frames_per_utterance": int(features.shape[-1]), "tensors_per_utterance": len(kept[0]),
        "seconds": seconds, "utterances_per_s": len(kept) / seconds,
        "cpu_seconds": cpu, "utterances_per_cpu_s": len(kept) / cpu,
        "seconds_per_utterance": {"mean": statistics.fmean(times), "median": statistics.median(times),
                                  "min": min(times), "max": max(times)},
        "retained_tensors_mib": retained, "retained_mib_per_utterance": retained / len(kept),
        "rss_before_loop_mib": rss_before, "rss_after_loop_mib": rss_mib(), "peak_rss_mib": peak_rss_mib(),
    }


WORKERS = {"loralens_store": worker_loralens_store, "batch_costs": worker_batch_costs, "paper": worker_paper}


def spawn(name: str, args, inputs: dict, folds: Path, tag: str = "", env: dict | None = None,
          **extra) -> dict:
    """Run one worker in its own Python process (``env``: extra environment variables); return
    its JSON result."""
    result = Path(args.workdir) / f"{'_'.join([name, folds.stem, *map(str, extra.values()), tag])}.json"
    command = [sys.executable, __file__, "--worker", name, "--result", str(result), "--workdir", args.workdir,
               "--checkpoint", str(args.checkpoint), "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--rounds", str(args.rounds),
               "--paper-hooks", args.paper_hooks, "--folds", str(folds)]
    command += [arg for key in ("features", "manifest", "weights") for arg in (f"--{key}", str(inputs[key]))]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    print(f"[{time.strftime('%H:%M:%S')}] {name} {folds.stem} {extra or ''} {tag}", flush=True)
    load_before = os.getloadavg()[0]
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(Path.cwd()), **(env or {})})
    data = {**json.loads(result.read_text()), "load_average_1min": [load_before, os.getloadavg()[0]]}
    if env:
        data["environment"] = env
    print("   ", json.dumps({k: v for k, v in data.items() if not isinstance(v, (list, dict))}), flush=True)
    return data


def machine_info(threads: int) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    versions = {}
    for package in ("torch", "transformers", "peft", "zarr", "numpy", "nnsight"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"device": f"CPU: {model}", "cpus_visible": os.cpu_count(), "torch_threads": threads,
            "python": platform.python_version(), "load_average_at_start": os.getloadavg(),
            "versions": versions}


def summarise(args, results: dict) -> dict:
    """The headline numbers: utterances/s, the two ratios against their goals, peak RSS."""
    paper, paper_small = results["paper"], results["paper_small"]
    store, scaled, costs = results["loralens_store"], results["loralens_scaled"], results["batch_costs"]
    n, big, small = args.clips, args.clips * args.scale, paper_small["utterances"]
    paper_rate = paper["utterances_per_s"]
    throughput = store["utterances_per_s"] / paper_rate
    cost = costs["capture_over_bare"]
    summary = {
        "utterances_per_s": {
            "paper (30-s window, one per pass, in RAM)": paper_rate,
            "loralens capture_store end to end": store["utterances_per_s"],
            "loralens capture_store without model load": store["utterances_per_s_without_model_load"],
            f"loralens capture_store end to end, {big} clips": scaled["utterances_per_s"],
            "loralens capture_forward per batch": costs["capture_forward_utterances_per_s"],
            "bare batched forward (the limit)": costs["bare_forward_utterances_per_s"],
        },
        "throughput_loralens_over_paper": {
            "ratio": throughput, "goal": f">= {THROUGHPUT_GOAL}", "met": throughput >= THROUGHPUT_GOAL,
            "measured_as": "capture_store's whole wall time (model load, reading, writing acts.zarr "
                           "included) vs the paper's loop over utterances (model load excluded, nothing "
                           "written)",
            "without_model_load": store["utterances_per_s_without_model_load"] / paper_rate,
            "by_cpu_time": store["utterances_per_cpu_s"] / paper["utterances_per_cpu_s"],
            "at_scaled_n": scaled["utterances_per_s"] / paper_rate,
            "bare_batched_forward_over_paper": costs["bare_forward_utterances_per_s"] / paper_rate,
        },
        "capture_cost_over_bare_forward": {
            "ratio": cost, "goal": f"<= {CAPTURE_COST_GOAL}", "met": cost <= CAPTURE_COST_GOAL,
            "measured_as": "capture_forward vs classify under no_grad, same batches, per-batch minimum "
                           f"of {args.rounds} alternating rounds, summed",
            "with_store_write": costs["capture_with_store_write_over_bare"],
            "capture_store_end_to_end_over_bare": store["seconds"] / costs["bare_forward_s"],
            "capture_forward_inside_capture_store_over_bare":
                store["breakdown_s"]["capture_forward"] / costs["bare_forward_s"],
        },
        "peak_rss_mib": {
            f"loralens capture_store, {n} clips": store["peak_rss_mib"],
            f"loralens capture_store, {big} clips": scaled["peak_rss_mib"],
            f"loralens batch_costs, {n} clips": costs["peak_rss_mib"],
            f"paper, {small} clips": paper_small["peak_rss_mib"],
            f"paper, {args.paper_clips} clips": paper["peak_rss_mib"],
            "paper, retained MiB per utterance": paper["retained_mib_per_utterance"],
            f"paper, extrapolated to {n} clips": paper["rss_before_loop_mib"]
            + n * paper["retained_mib_per_utterance"],
            "loralens growth, scaled over N clips": scaled["peak_rss_mib"] / store["peak_rss_mib"],
            "paper growth, larger over smaller run": paper["peak_rss_mib"] / paper_small["peak_rss_mib"],
        },
    }
    if "malloc_n" in results:
        fixed = f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}"
        malloc_n = results["malloc_n"]["peak_rss_mib"]
        malloc_scaled = results["malloc_scaled"]["peak_rss_mib"]
        summary["peak_rss_mib"].update({
            f"loralens capture_store, {n} clips, {fixed}": malloc_n,
            f"loralens capture_store, {big} clips, {fixed}": malloc_scaled,
            "loralens growth, scaled over N clips, fixed mmap threshold": malloc_scaled / malloc_n,
        })
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="results/models/whisper-base",
                        help="a Whisper-base Hugging Face folder; built offline into a temporary folder "
                             "if missing")
    parser.add_argument("--clips", type=int, default=96, help="N: clips of the throughput comparison")
    parser.add_argument("--scale", type=int, default=4,
                        help="loralens' memory is also measured at scale x N clips")
    parser.add_argument("--paper-clips", type=int, default=24,
                        help="clips of the paper's approach (a subset of the N; also run at a quarter "
                             "of this)")
    parser.add_argument("--batch-size", type=int, default=16, help="capture.batch_size")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the per-batch comparison")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of loralens_store (N clips) and of the paper's approach, alternating; "
                             "the fastest of each is kept")
    parser.add_argument("--scaled-lengths", choices=["tiled", "drawn"], default="tiled",
                        help="the scale x N clips: the N clips' lengths repeated (only the count "
                             "differs), or new draws")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=1 << 20,
                        help="also run loralens_store at N and scale x N clips with glibc's "
                             "MALLOC_MMAP_THRESHOLD_ set to this (bytes; fixing it turns off glibc's "
                             "dynamic threshold); 0: skip")
    parser.add_argument("--paper-hooks", choices=["auto", "nnsight", "plain"], default="auto",
                        help="how the paper's approach traces (auto: nnsight if installed)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/capture_throughput.json")
    # Internal: a worker subprocess.
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    for name in ("result", "workdir", "features", "manifest", "folds", "weights"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.worker:
        import logging

        logging.basicConfig(level=logging.WARNING)
        Path(args.result).write_text(json.dumps(WORKERS[args.worker](args)))
        return

    info = machine_info(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="capture_throughput_") as workdir:
        args.workdir = workdir
        checkpoint = Path(args.checkpoint)
        if not (checkpoint / "config.json").is_file():
            from workflow_scripts.models.build import build_checkpoint

            checkpoint = Path(workdir) / "whisper-base"
            build_checkpoint("whisper-base", {"source": "offline_whisper_base", "num_mel_bins": 80},
                             checkpoint)
        args.checkpoint = checkpoint
        all_lengths = clip_lengths(args.clips, args.scale, args.seed, args.scaled_lengths)
        inputs = build_inputs(Path(workdir), checkpoint, all_lengths, args.clips, args.seed)
        n_folds, all_folds = inputs["folds_n"], inputs["folds_all"]
        small_paper = max(1, args.paper_clips // 4)
        # The throughput pair, alternating, `repeats` times; each variant's fastest run is kept.
        repeats = defaultdict(list)
        for repeat in range(args.repeats):
            tag = f"repeat{repeat}"
            repeats["loralens_store"].append(spawn("loralens_store", args, inputs, n_folds, tag))
            repeats["paper"].append(spawn("paper", args, inputs, n_folds, tag, paper_clips=args.paper_clips))
        results = {}
        for name, runs in repeats.items():
            results[name] = {**min(runs, key=lambda run: run["seconds"]),
                             "repeat_seconds": [run["seconds"] for run in runs]}
        results["batch_costs"] = spawn("batch_costs", args, inputs, n_folds)
        results["loralens_scaled"] = spawn("loralens_store", args, inputs, all_folds)
        results["paper_small"] = spawn("paper", args, inputs, n_folds, paper_clips=small_paper)
        if args.malloc_mmap_threshold:
            env = {"MALLOC_MMAP_THRESHOLD_": str(args.malloc_mmap_threshold)}
            results["malloc_n"] = spawn("loralens_store", args, inputs, n_folds, "malloc", env)
            results["malloc_scaled"] = spawn("loralens_store", args, inputs, all_folds, "malloc", env)
    lengths = all_lengths[: args.clips]
    big = args.clips * args.scale
    fixed = f"malloc_mmap_threshold_{args.malloc_mmap_threshold}"
    names = {"paper": "paper", "paper_small": f"paper_{small_paper}_clips",
             "loralens_store": "loralens_store", "loralens_scaled": f"loralens_store_{big}_clips",
             "batch_costs": "batch_costs",
             "malloc_n": f"loralens_store_{fixed}", "malloc_scaled": f"loralens_store_{big}_clips_{fixed}"}
    report = {
        "benchmark": "capture_throughput",
        "model": "whisper-base (offline, converted from CTranslate2) + LoRA r8 on q_proj, v_proj "
                 "(lora_random)",
        "machine": {**info, "load_average_at_end": os.getloadavg()},
        "clips": {
            "n": args.clips, "scaled_n": big, "paper_n": [small_paper, args.paper_clips],
            "paper_subset": "evenly spaced over the N clips in fold-table order",
            "split": "every clip in test: frame-level arrays kept for all",
            "seconds": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                        "min": float(lengths.min()), "max": float(lengths.max()),
                        "total": float(lengths.sum())},
            "scaled_lengths": {"tiled": "tiled: the N clips' lengths, repeated",
                               "drawn": "drawn: new draws after the N clips"}[args.scaled_lengths],
            "scaled_seconds": {"mean": float(all_lengths.mean()), "median": float(np.median(all_lengths)),
                               "max": float(all_lengths.max())},
            "length_model": f"log-normal, IEMOCAP mean {IEMOCAP_MEAN_S} s, median {IEMOCAP_MEDIAN_S} s, "
                            "0.6-30 s",
        },
        "capture_settings": settings(args.batch_size),
        "paper_hooks": results["paper"]["hooks"],
        "summary": summarise(args, results),
        "variants": {names[key]: value for key, value in results.items()},
        "wall_seconds": time.perf_counter() - started,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
