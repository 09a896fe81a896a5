"""The run grid of one config, built once: its runs and every relation between them.

The workflow's input functions are called once per job (and again whenever a checkpoint
completes), so they must be lookups, not computations: a grid of a few hundred runs has
thousands of jobs. :class:`Grid` expands the config once (per set of fold tables) and holds
what every rule asks about the runs:

* the runs, and each run by id;
* each LoRA run's frozen counterpart and its untrained references (lora_random, lora_init);
* the seed pairs of the seed-to-seed comparisons (a later seed against the grid's first);
* the comparison groups across ranks, seeds and folds (principal angles) and across ranks
  (embeddings);
* the runs or groups each analysis is computed for (:data:`RUN_SETS`, named by the analysis
  registry), with their ids and table paths.

Pure (no Snakemake): ``rules/common.smk`` builds it through :class:`GridCache`, and tests and
benchmarks build it directly::

    grid = Grid.from_config(config, folds_of)
    grid.frozen_counterpart(run), grid.units("cka"), grid.tables("subspaces")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from functools import cached_property

from workflow_scripts.analyses.registry import analysis_spec
from workflow_scripts.runs import LORA_METHODS, NO_TARGETS, RUN_PATTERN, TRAINED_METHODS, Run, expand_grid
from workflow_scripts.train.checkpoints import KEEPING_METHODS

#: The untrained LoRA references of a trained LoRA run: the same run but for the method.
UNTRAINED_REFERENCES = ("lora_random", "lora_init")
#: A comparison group of trained LoRA runs across ranks, seeds and folds (principal angles).
SUBSPACE_GROUP = "{dataset}/{protocol}/{model}/{method}/{targets}"
#: A comparison group of trained LoRA runs across ranks (embeddings).
EMBEDDING_GROUP = "{dataset}/{protocol}/{model}/{method}/{targets}/seed{seed}/fold{fold}"


def path_of(pattern: str, run) -> str:
    """``pattern`` filled in with a run's (or a job's wildcards') fields."""
    return pattern.format(**(asdict(run) if isinstance(run, Run) else dict(run.items())))


def analysis_output(name: str, suffix: str) -> str:
    """Where analysis ``name`` writes its table (parquet) or figure (png, svg) for a run."""
    return f"results/analyses/{name}/{RUN_PATTERN}.{suffix}"


def frozen_run(run: Run) -> Run:
    """The frozen run that shares ``run``'s dataset, protocol, model, seed and fold."""
    return replace(run, method="frozen", targets=NO_TARGETS, rank=0)


class Grid:
    """Every run of a config and the relations the rules look up (see the module docstring)."""

    def __init__(self, runs, reference_readouts: bool = False, erasure_references: bool = False,
                 dynamics_checkpoints: tuple[str, ...] = ()):
        self.runs: tuple[Run, ...] = tuple(sorted(set(runs), key=lambda run: run.id))
        #: The checkpoints the training dynamics analyse (``workflow_scripts.dynamics.plan``).
        self.dynamics_checkpoints = tuple(dynamics_checkpoints)
        self.by_id: dict[str, Run] = {run.id: run for run in self.runs}
        self.reference_readouts = reference_readouts
        self.erasure_references = erasure_references
        self._units: dict[str, tuple[str, ...]] = {}
        self._tables: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_config(cls, config: dict, folds_of: Callable[[str, str], list[int]]) -> "Grid":
        """The grid of a validated config; ``folds_of(dataset, protocol)`` lists a protocol's
        folds (read only where ``training.folds`` is ``all``)."""
        from workflow_scripts.dynamics.plan import analysed_checkpoints

        return cls(expand_grid(config, folds_of),
                   reference_readouts=config["analyses"]["reference_readouts"],
                   erasure_references=config["analyses"]["erasure"]["references"],
                   dynamics_checkpoints=analysed_checkpoints(config))

    def __contains__(self, run: Run) -> bool:
        return run.id in self.by_id

    def __len__(self) -> int:
        return len(self.runs)

    # --- one run's relations ----------------------------------------------------------------

    def frozen_counterpart(self, run: Run) -> Run | None:
        """The frozen run with ``run``'s dataset, protocol, model, seed and fold, if in the grid."""
        frozen = frozen_run(run)
        return frozen if frozen in self else None

    def untrained_references(self, run: Run) -> dict[str, Run]:
        """{method: run} of a trained LoRA run's untrained references that are in the grid."""
        return self._references.get(run.id, {})

    @cached_property
    def _references(self) -> dict[str, dict[str, Run]]:
        references = {}
        for run in self.runs:
            if run.method == "lora":
                found = {method: replace(run, method=method) for method in UNTRAINED_REFERENCES}
                found = {method: other for method, other in found.items() if other in self}
                if found:
                    references[run.id] = found
        return references

    @cached_property
    def first_seed(self) -> int | None:
        return min((run.seed for run in self.runs), default=None)

    def first_seed_run(self, run: Run) -> Run:
        """``run`` at the grid's first seed (the reference of a seed pair)."""
        return replace(run, seed=self.first_seed)

    @cached_property
    def seed_pairs(self) -> tuple[tuple[Run, Run], ...]:
        """(run, the same configuration at the grid's first seed) for each trained run of a
        later seed whose first-seed run is in the grid: the seed-to-seed noise floor."""
        pairs = ((run, self.first_seed_run(run)) for run in self.runs
                 if run.method in TRAINED_METHODS and run.seed != self.first_seed)
        return tuple((run, reference) for run, reference in pairs if reference in self)

    # --- comparison groups --------------------------------------------------------------------

    @cached_property
    def subspace_groups(self) -> dict[str, tuple[Run, ...]]:
        """{group id: its trained LoRA runs} of the groups with at least two runs."""
        groups: dict[str, list[Run]] = {}
        for run in self.runs:
            if run.method == "lora":
                groups.setdefault(path_of(SUBSPACE_GROUP, run), []).append(run)
        return {group: tuple(runs) for group, runs in sorted(groups.items()) if len(runs) >= 2}

    @cached_property
    def embedding_groups(self) -> dict[str, dict[int, Run]]:
        """{group id: {rank: run}} of trained LoRA runs, one group per configuration across ranks."""
        groups: dict[str, dict[int, Run]] = {}
        for run in self.runs:
            if run.method == "lora":
                groups.setdefault(path_of(EMBEDDING_GROUP, run), {})[run.rank] = run
        return dict(sorted(groups.items()))

    # --- the run sets the analyses are computed for ---------------------------------------------

    @cached_property
    def run_sets(self) -> dict[str, tuple[Run, ...]]:
        """{name: runs}: the sets of runs that per-run analyses apply to (the registry names one
        per analysis). Each set holds only runs whose comparisons are in the grid."""
        runs = self.runs
        lora_with_frozen = tuple(run for run in runs if run.method == "lora" and self.frozen_counterpart(run))
        return {
            # contribution, logit lens, probes: the trained runs (and the untrained references
            # with analyses.reference_readouts); they are also the runs with an acts.zarr.
            "readouts": tuple(run for run in runs if run.method in TRAINED_METHODS or self.reference_readouts),
            "erasure": tuple(run for run in runs if run.method in TRAINED_METHODS or self.erasure_references),
            "adapted": tuple(run for run in runs if run.method in LORA_METHODS),
            "lora_with_frozen": lora_with_frozen,
            "lora_with_references": tuple(run for run in runs if run.id in self._references),
            "later_seeds": tuple(run for run, _ in self.seed_pairs),
            # The training dynamics: the runs that keep checkpoints, when some are analysed; the
            # weight change and intruders are measured on LoRA's factors, so on the lora runs.
            "dynamics": tuple(run for run in runs if run.method in KEEPING_METHODS) if self.dynamics_checkpoints else (),
            "dynamics_lora": tuple(run for run in runs if run.method == "lora") if self.dynamics_checkpoints else (),
        }

    def runs_in(self, run_set: str) -> tuple[Run, ...]:
        return self.run_sets[run_set]

    def group_runs(self, kind: str) -> dict[str, tuple[Run, ...]]:
        """{group id: its runs} of a group kind ("subspace" or "embedding")."""
        if kind == "subspace":
            return self.subspace_groups
        if kind == "embedding":
            return {group: tuple(by_rank[rank] for rank in sorted(by_rank))
                    for group, by_rank in self.embedding_groups.items()}
        raise KeyError(f"unknown group kind {kind!r}")

    # --- per analysis (through the registry) -----------------------------------------------------

    def units(self, analysis: str) -> tuple[str, ...]:
        """The sorted ids of what ``analysis`` has one table of: runs, comparison groups, or a
        run's checkpoints (``<run id>/<checkpoint>``)."""
        if analysis not in self._units:
            spec = analysis_spec(analysis)
            if spec.unit == "group":
                ids = self.group_runs(spec.applies_to)
            elif spec.unit == "checkpoint":
                ids = (f"{run.id}/{checkpoint}" for run in self.runs_in(spec.applies_to)
                       for checkpoint in self.dynamics_checkpoints)
            else:
                ids = (run.id for run in self.runs_in(spec.applies_to))
            self._units[analysis] = tuple(sorted(ids))
        return self._units[analysis]

    def unit_runs(self, analysis: str) -> tuple[Run, ...]:
        """The runs behind ``analysis``'s tables (a group's runs for the group analyses)."""
        spec = analysis_spec(analysis)
        if spec.unit == "group":
            return tuple(run for runs in self.group_runs(spec.applies_to).values() for run in runs)
        return self.runs_in(spec.applies_to)

    def tables(self, analysis: str) -> tuple[str, ...]:
        """Every table of ``analysis`` in the grid."""
        if analysis not in self._tables:
            self._tables[analysis] = tuple(f"results/analyses/{analysis}/{unit}.parquet"
                                           for unit in self.units(analysis))
        return self._tables[analysis]

    def datasets_of(self, analysis: str) -> list[str]:
        """The datasets of the runs ``analysis`` is computed for (a group analysis: of every run)."""
        spec = analysis_spec(analysis)
        runs = self.runs if spec.unit == "group" else self.runs_in(spec.applies_to)
        return sorted({run.dataset for run in runs})


class GridCache:
    """One :class:`Grid` per state of the fold tables it was read from.

    Where ``training.folds`` lists the folds, the grid never reads a fold table and is built
    once. With ``folds: all`` it is keyed by the fold tables' paths and modification times, so a
    fold table that its checkpoint rewrites during the run gives a new grid, and every other call
    is a dictionary lookup.
    """

    def __init__(self, config: dict, fold_table: Callable[[str, str], str], read_folds: Callable[[str], list[int]]):
        self.config = config
        self.fold_table = fold_table  # (dataset, protocol) -> path; may raise while the table is to be made
        self.read_folds = read_folds  # path -> fold numbers
        self._grids: dict[tuple, Grid] = {}

    def _fold_tables(self) -> list[tuple[str, str, str]]:
        training = self.config["training"]
        if training["folds"] != "all":
            return []
        datasets = training["datasets"] or sorted(self.config["datasets"])
        return [(dataset, protocol, self.fold_table(dataset, protocol))
                for dataset in datasets for protocol in training["protocols"]]

    def grid(self) -> Grid:
        import os

        tables = self._fold_tables()
        key = tuple((path, os.stat(path).st_mtime_ns) for _, _, path in tables)
        if key not in self._grids:
            paths = {(dataset, protocol): path for dataset, protocol, path in tables}
            self._grids[key] = Grid.from_config(
                self.config, lambda dataset, protocol: self.read_folds(paths[dataset, protocol]))
        return self._grids[key]
