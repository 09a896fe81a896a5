"""The run grid: one training run per {dataset, protocol, model, method, targets, rank, seed, fold}.

A run's id is derived here and nowhere else, so every stage names its outputs the same way::

    demo/loso_speaker/whisper-base/lora/q_proj+v_proj/r8/seed0/fold1

Methods without LoRA (``frozen``, ``full``) have no targets or rank; their id says
``none/r0``. The grid is the product of the lists under ``training:`` in the config.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass

from workflow_scripts.errors import InputError
from workflow_scripts.stage_settings import StageSettings
from workflow_scripts.train.checkpoints import KEEPING_METHODS, CheckpointSettings

LORA_METHODS = ("lora", "lora_init", "lora_random")
TRAINED_METHODS = ("lora", "frozen", "full")
METHODS = TRAINED_METHODS + ("lora_init", "lora_random")
NO_TARGETS = "none"
# Whisper encoder modules LoRA can adapt (the leaf names peft matches).
WHISPER_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")

#: The path pattern of a run; its fields are the Snakemake wildcards of every per-run rule.
RUN_PATTERN = "{dataset}/{protocol}/{model}/{method}/{targets}/r{rank}/seed{seed}/fold{fold}"
RUN_ID = re.compile(
    r"^(?P<dataset>[^/]+)/(?P<protocol>[^/]+)/(?P<model>[^/]+)/(?P<method>[^/]+)/(?P<targets>[^/]+)"
    r"/r(?P<rank>\d+)/seed(?P<seed>\d+)/fold(?P<fold>\d+)$"
)


@dataclass(frozen=True)
class Run:
    dataset: str
    protocol: str
    model: str
    method: str
    targets: str  # "q_proj+v_proj", or "none" for methods without LoRA
    rank: int
    seed: int
    fold: int

    @property
    def id(self) -> str:
        return RUN_PATTERN.format(**asdict(self))

    @property
    def target_modules(self) -> list[str]:
        return [] if self.targets == NO_TARGETS else self.targets.split("+")

    @classmethod
    def from_id(cls, run_id: str) -> "Run":
        """The run whose id is ``run_id`` (``dataset/protocol/model/method/targets/rR/seedS/foldF``)."""
        match = RUN_ID.match(run_id)
        if match is None:
            raise InputError(f"{run_id!r} is not a run id like "
                             "'demo/loso_speaker/whisper-base/lora/q_proj+v_proj/r8/seed0/fold1'")
        return cls.from_wildcards(match.groupdict())

    @classmethod
    def from_wildcards(cls, wildcards) -> "Run":
        return cls(
            dataset=wildcards["dataset"], protocol=wildcards["protocol"], model=wildcards["model"],
            method=wildcards["method"], targets=wildcards["targets"], rank=int(wildcards["rank"]),
            seed=int(wildcards["seed"]), fold=int(wildcards["fold"]),
        )


def add_run_wildcards(parser) -> None:
    """A run's wildcards as arguments (``--dataset`` ... ``--fold``), for :meth:`Run.from_wildcards`."""
    for name in ("dataset", "protocol", "model", "method", "targets"):
        parser.add_argument(f"--{name}", required=True)
    for name in ("rank", "seed", "fold"):
        parser.add_argument(f"--{name}", required=True, type=int)


def add_run_arguments(parser) -> None:
    """The arguments of an entry point that runs one run's model (train, capture): the run's
    wildcards, the inputs every such step reads, and the GPUs its job asked for."""
    add_run_wildcards(parser)
    parser.add_argument("--checkpoint", required=True, help="results/models/{model}")
    parser.add_argument("--features", required=True, help="results/features/{dataset}/logmel{n}.zarr")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--folds", required=True)
    parser.add_argument("--gpus", type=int, default=0,
                        help="GPUs this job asked its scheduler for (resource gpu); under SLURM it stops "
                        "at once if CUDA sees fewer")


def targets_key(modules: list[str]) -> str:
    """``["q_proj", "v_proj"]`` -> ``"q_proj+v_proj"`` (sorted, so the order in the config does not matter)."""
    return "+".join(sorted(modules))


def check_training_config(config: dict) -> None:
    """Cross-key checks the schema cannot express, with the key named."""
    training = config["training"]
    for name in training["datasets"] or []:
        if name not in config["datasets"]:
            raise InputError(f"training.datasets: {name!r} is not a dataset under 'datasets:'")
    for name in training["models"] or []:
        if name not in config["models"]:
            raise InputError(f"training.models: {name!r} is not a model under 'models:'")
    for dataset in training["datasets"] or config["datasets"]:
        available = config["datasets"][dataset]["folds"]["protocols"]
        for protocol in training["protocols"]:
            if protocol not in available:
                raise InputError(
                    f"training.protocols: {protocol!r} is not among datasets.{dataset}.folds.protocols {available}"
                )
    for modules in training["targets"]:
        unknown = sorted(set(modules) - set(WHISPER_ENCODER_TARGETS))
        if unknown:
            raise InputError(
                f"training.targets: {unknown} match no Whisper encoder module; "
                f"choose from {list(WHISPER_ENCODER_TARGETS)}"
            )
    CheckpointSettings.from_mapping(training["checkpoints"]).check(training["epochs"])
    if training["select_on"] == "test" and not config["legacy"]:
        raise InputError(
            "training.select_on: 'test' picks the best epoch on the test fold (the original's flaw); "
            "it is allowed only with legacy: true"
        )


def expand_grid(config: dict, folds_of) -> list[Run]:
    """Every run of the config. ``folds_of(dataset, protocol)`` lists a protocol's fold numbers."""
    training = config["training"]
    runs = []
    for dataset, protocol, model, method, seed in itertools.product(
        training["datasets"] or sorted(config["datasets"]), training["protocols"],
        training["models"] or sorted(config["models"]), training["methods"], training["seeds"],
    ):
        folds = folds_of(dataset, protocol) if training["folds"] == "all" else training["folds"]
        if method in LORA_METHODS:
            variants = [(targets_key(t), r) for t in training["targets"] for r in training["ranks"]]
        else:
            variants = [(NO_TARGETS, 0)]
        for (targets, rank), fold in itertools.product(variants, folds):
            runs.append(Run(dataset, protocol, model, method, targets, rank, seed, int(fold)))
    return sorted(set(runs), key=lambda run: run.id)


GRID_KEYS = ("datasets", "models", "protocols", "folds", "methods", "targets", "ranks", "seeds")
# Settings of the optimisation and of epoch selection: the untrained references use none of them.
OPTIMISATION_KEYS = (
    "epochs", "lr", "batch_size", "grad_accum", "weight_decay", "warmup_ratio", "max_grad_norm",
    "class_weighted", "select_on", "select_metric",
)


@dataclass(frozen=True)
class LoraSettings(StageSettings):
    SECTION = "training.lora"
    alpha_policy: str
    alpha: float
    dropout: float


@dataclass(frozen=True)
class TrainingRunSettings(StageSettings):
    """What a training run reads from the config besides its wildcards. The settings its method
    does not use are None (left out of its params): editing a grid list, another dataset, the
    learning rate of a reference that trains nothing, or LoRA's settings for a run without LoRA
    does not rerun it; nor does changing training.checkpoints rerun a method that keeps none."""

    SECTION = "training"
    eval_batch_size: int
    device: str
    legacy: bool
    max_seconds: float
    classes: tuple[str, ...]
    lora: LoraSettings | None = None
    # training.checkpoints: the methods that keep checkpoints only (checkpoints.KEEPING_METHODS).
    checkpoints: CheckpointSettings | None = None
    # The optimisation and epoch selection (OPTIMISATION_KEYS): the trained methods only.
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    grad_accum: int | None = None
    weight_decay: float | None = None
    warmup_ratio: float | None = None
    max_grad_norm: float | None = None
    class_weighted: bool | None = None
    select_on: str | None = None
    select_metric: str | None = None

    @classmethod
    def from_config(cls, config: dict, dataset: str, method: str) -> "TrainingRunSettings":
        if method not in METHODS:
            raise InputError(f"training.methods: unknown method {method!r}; choose from {list(METHODS)}")
        unused = set(GRID_KEYS)
        if method not in TRAINED_METHODS:
            unused |= set(OPTIMISATION_KEYS)
        if method not in LORA_METHODS:
            unused.add("lora")
        if method not in KEEPING_METHODS:
            unused.add("checkpoints")
        training = {key: value for key, value in config["training"].items() if key not in unused}
        if "lora" in training:
            training["lora"] = LoraSettings.from_mapping(training["lora"])
        if "checkpoints" in training:
            training["checkpoints"] = CheckpointSettings.from_mapping(training["checkpoints"])
        return cls.from_mapping({**training, "legacy": config["legacy"], "max_seconds": config["audio"]["max_seconds"],
                                 "classes": config["datasets"][dataset]["classes"]})


def run_settings(config: dict, dataset: str, method: str) -> dict:
    """What a training run needs from the config besides its wildcards (:class:`TrainingRunSettings`)."""
    return TrainingRunSettings.from_config(config, dataset, method).as_dict()
