"""What model-running jobs ask a cluster for, and the GPU check they make once running."""

import pytest
import torch

from workflow_scripts.cluster import (
    MODEL_JOB_RESOURCES,
    SIZES,
    check_gpu_allocation,
    model_job_resources,
    model_size,
)
from workflow_scripts.config import validate_config
from workflow_scripts.errors import InputError


@pytest.mark.parametrize("spec, size", [
    ({"source": "offline_whisper_base"}, "base"),
    ({"source": "tiny_random", "layers": 2}, "tiny"),
    ({"source": "hub", "id": "openai/whisper-large-v2"}, "large"),
    ({"source": "hub", "id": "openai/whisper-medium.en"}, "medium"),
    ({"source": "local", "path": "/models/whisper-small/"}, "small"),
    ({"source": "local", "path": "/models/my-finetune"}, "large"),  # unknown: never ask for too little
    ({"source": "hub", "id": "openai/whisper-large-v3", "size": "medium"}, "medium"),  # stated size wins
])
def test_model_size_from_the_spec(spec, size):
    assert model_size(spec) == size


def test_a_larger_model_asks_for_more():
    for smaller, larger in zip(SIZES, SIZES[1:]):
        assert MODEL_JOB_RESOURCES[smaller]["mem_mb"] < MODEL_JOB_RESOURCES[larger]["mem_mb"]
        assert MODEL_JOB_RESOURCES[smaller]["runtime"] < MODEL_JOB_RESOURCES[larger]["runtime"]
    base = model_job_resources({"source": "offline_whisper_base"}, gpus=1)
    large = model_job_resources({"source": "hub", "id": "openai/whisper-large-v2"}, gpus=1)
    assert large["mem_mb"] > base["mem_mb"] and large["runtime"] > base["runtime"]
    assert base["gpu"] == large["gpu"] == 1


def test_gpus_come_from_the_config_and_default_to_one():
    assert validate_config({})["gpus"] == 1
    assert model_job_resources({"source": "offline_whisper_base"}, gpus=0)["gpu"] == 0
    with pytest.raises(InputError, match=r"gpus: -1 is less than the minimum of 0"):
        validate_config({"gpus": -1})
    with pytest.raises(InputError, match=r"models\.m\.size: 'huge' is not one of"):
        validate_config({"models": {"m": {"source": "offline_whisper_base", "size": "huge"}}})


def test_a_slurm_job_that_asked_for_a_gpu_and_sees_none_stops(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    environ = {"SLURM_JOB_ID": "42", "SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0"}
    with pytest.raises(InputError, match=r"SLURM job 42 asked for 1 GPU\(s\).*torch sees 0.*CUDA_VISIBLE_DEVICES=0"
                       r".*--config gpus=0"):
        check_gpu_allocation(1, environ)


def test_no_check_off_slurm_or_without_a_gpu_request(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_gpu_allocation(1, {})  # a laptop: device auto may use the CPU
    check_gpu_allocation(0, {"SLURM_JOB_ID": "42"})  # a CPU job on the cluster (gpus: 0)
    # snakemake run locally inside a CPU allocation (salloc): SLURM gave the job no GPUs.
    check_gpu_allocation(1, {"SLURM_JOB_ID": "42"})


def test_enough_gpus_pass(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_gpu_allocation(2, {"SLURM_JOB_ID": "42", "SLURM_GPUS_ON_NODE": "2"})
