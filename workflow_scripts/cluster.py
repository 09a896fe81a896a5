"""What a job asks a scheduler for, and what it checks once it runs there.

Rules that run a Whisper model (``train``, ``capture_acts``, ``capture_grads``; erasure later)
declare their needs as Snakemake resources, which the SLURM executor plugin turns into sbatch
flags (``gpu`` -> ``--gpus``, ``cpus_per_gpu`` -> ``--cpus-per-gpu``, ``mem_mb`` -> ``--mem``,
``runtime`` -> ``-t``). Locally the same ``gpu`` resource lets ``--resources gpu=N`` keep several large runs
from sharing one GPU. The numbers scale with the model's size class (:func:`model_size`), so
that Whisper-large-v2 asks for more than Whisper-base; a site overrides any of them in its
profile (``set-resources``).

A job that asked for GPUs under SLURM and sees none stops at once (:func:`check_gpu_allocation`)
instead of letting ``device: auto`` fall back to hours on a few CPU threads.
"""

from __future__ import annotations

import os
import re

from workflow_scripts.errors import InputError

SIZES = ("tiny", "base", "small", "medium", "large")

#: What one job that runs a model of each size needs, for the paper's recipe (20 epochs over an
#: IEMOCAP-sized corpus, batch 8, bf16 on one data-centre GPU). Host memory holds the checkpoint
#: in float32 and the log-mel cache; the runtime has a wide margin, since a job killed at its
#: limit loses its current epoch (it resumes from the last finished one when rerun).
MODEL_JOB_RESOURCES = {
    "tiny": {"mem_mb": 4000, "runtime": 60},
    "base": {"mem_mb": 8000, "runtime": 120},
    "small": {"mem_mb": 16000, "runtime": 240},
    "medium": {"mem_mb": 32000, "runtime": 480},
    "large": {"mem_mb": 48000, "runtime": 720},
}
CPUS_PER_GPU = 4  # feeding one GPU: batch collation and evaluation run on the CPU

_SIZE_IN_NAME = re.compile(r"(?:^|[-_/.])(tiny|base|small|medium|large)(?:$|[-_/.])", re.IGNORECASE)


def model_size(spec: dict) -> str:
    """The size class of a model spec: its ``size`` key, or what its source implies.

    ``offline_whisper_base`` is base, ``tiny_random`` tiny; a hub id or local folder named like
    OpenAI's (``openai/whisper-large-v2``, ``/models/whisper-small``) gives its size. Anything
    else counts as ``large``, so that an unknown model never asks for too little.
    """
    if spec.get("size"):
        return spec["size"]
    source = spec.get("source")
    if source == "offline_whisper_base":
        return "base"
    if source == "tiny_random":
        return "tiny"
    name = spec.get("id") or spec.get("path") or ""
    match = _SIZE_IN_NAME.search(name.rstrip("/"))
    return match.group(1).lower() if match else "large"


def model_job_resources(spec: dict, gpus: int) -> dict:
    """Snakemake resources of one job that runs the model ``spec`` on ``gpus`` GPUs (0: CPUs)."""
    # cpus_per_gpu is read only for a job with GPUs; with gpus 0 the job's threads set its CPUs.
    return {**MODEL_JOB_RESOURCES[model_size(spec)], "gpu": gpus, "cpus_per_gpu": CPUS_PER_GPU}


#: Set by SLURM in a job (or step) it allocated GPUs to.
SLURM_GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


def check_gpu_allocation(gpus_requested: int, environ=os.environ) -> None:
    """Stop when a SLURM job that was given GPUs for its request sees fewer through CUDA.

    Only in a SLURM job with GPUs allocated (``SLURM_JOB_ID`` and one of
    :data:`SLURM_GPU_VARIABLES` set): on a laptop, or in a CPU allocation where someone runs
    snakemake locally, the declared ``gpu`` resource only limits concurrency and ``device: auto``
    may use the CPU. A job that asked for a GPU and got none usable (a node without the driver, a
    CPU-only torch in the job's environment) would otherwise train on the CPU for hours.
    """
    if gpus_requested <= 0 or "SLURM_JOB_ID" not in environ:
        return
    if not any(environ.get(name) for name in SLURM_GPU_VARIABLES):
        return
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < gpus_requested:
        raise InputError(
            f"SLURM job {environ['SLURM_JOB_ID']} asked for {gpus_requested} GPU(s) (resource gpu, from the "
            f"config key 'gpus') but torch sees {visible}: CUDA_VISIBLE_DEVICES="
            f"{environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}, torch {torch.__version__} built for CUDA "
            f"{torch.version.cuda or '(none: a CPU-only build)'}. Check the node's GPU driver and the torch "
            "build in the job's environment, or run on CPUs with --config gpus=0."
        )
