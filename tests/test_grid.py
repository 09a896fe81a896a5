"""The run grid built once per config: its relations (known answers on small grids), its
lookups, its cache over fold tables, and the analysis registry it serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workflow_scripts.analyses.registry import ANALYSES, FIGURE_CATEGORIES, PAIRED, SECTIONS, analysis_spec
from workflow_scripts.config import load_config
from workflow_scripts.grid import Grid, GridCache
from workflow_scripts.report.figures.registry import FIGURES
from workflow_scripts.runs import Run

REPO = Path(__file__).resolve().parent.parent


def config_with(**training) -> dict:
    config = load_config(REPO / "config" / "config.yaml")
    config["training"].update(training)
    return config


@pytest.fixture(scope="module")
def default_grid() -> Grid:
    # The default grid: lora, frozen, lora_init, lora_random x ranks 4, 8 x seeds 0, 1, fold 1.
    return Grid.from_config(config_with(), folds_of=None)


def run(method="lora", rank=4, seed=0, fold=1, targets="q_proj+v_proj") -> Run:
    if method == "frozen":
        targets, rank = "none", 0
    return Run("demo", "loso_speaker", "whisper-base", method, targets, rank, seed, fold)


def test_the_default_grid_s_runs_and_run_sets(default_grid):
    assert len(default_grid) == 14  # 3 LoRA methods x 2 ranks x 2 seeds + 2 frozen
    sizes = {name: len(runs) for name, runs in default_grid.run_sets.items()}
    assert sizes == {"readouts": 6, "erasure": 6, "adapted": 12, "lora_with_frozen": 4,
                     "lora_with_references": 4, "later_seeds": 3, "dynamics": 4, "dynamics_lora": 4}
    assert {analysis: len(default_grid.units(analysis)) for analysis in ANALYSES} == {
        "contribution": 6, "contribution_difference": 4, "logit_lens": 6, "probes": 6, "erasure": 6,
        "spectra": 12, "spectra_comparison": 4, "weight_spectra": 12, "subspaces": 1, "cka": 4,
        "cka_lora_frozen": 4, "cka_seeds": 3, "embeddings": 2,
        # the 4 LoRA runs at the 3 analysed checkpoints
        "dynamics_representation": 12, "dynamics_readouts": 12, "dynamics_weights": 12, "dynamics_intruders": 12}


def test_one_run_s_relations(default_grid):
    lora = run(rank=8, seed=1)
    assert default_grid.frozen_counterpart(lora) == run("frozen", seed=1)
    assert default_grid.untrained_references(lora) == {"lora_random": run("lora_random", 8, 1),
                                                       "lora_init": run("lora_init", 8, 1)}
    assert default_grid.untrained_references(run("frozen")) == {}
    assert default_grid.first_seed_run(lora) == run(rank=8, seed=0)
    assert (lora, run(rank=8, seed=0)) in default_grid.seed_pairs
    assert default_grid.subspace_groups == {
        "demo/loso_speaker/whisper-base/lora/q_proj+v_proj": tuple(run(rank=r, seed=s) for r in (4, 8) for s in (0, 1))}
    assert default_grid.embedding_groups["demo/loso_speaker/whisper-base/lora/q_proj+v_proj/seed1/fold1"] == {
        4: run(rank=4, seed=1), 8: run(rank=8, seed=1)}
    assert default_grid.tables("subspaces") == (
        "results/analyses/subspaces/demo/loso_speaker/whisper-base/lora/q_proj+v_proj.parquet",)


def test_comparisons_only_where_their_runs_are_in_the_grid():
    grid = Grid.from_config(config_with(methods=["lora", "lora_init"], seeds=[3], ranks=[4]), folds_of=None)
    assert grid.frozen_counterpart(run(seed=3)) is None
    assert grid.untrained_references(run(seed=3)) == {"lora_init": run("lora_init", seed=3)}
    assert grid.units("contribution_difference") == () and grid.units("cka_lora_frozen") == ()
    assert grid.units("cka") == (run(seed=3).id,)
    assert grid.seed_pairs == () and grid.subspace_groups == {}  # one seed, one rank: nothing to compare
    assert grid.datasets_of("cka") == ["demo"] and grid.datasets_of("cka_seeds") == []


def test_reference_readouts_and_erasure_references_widen_their_run_sets():
    config = config_with(ranks=[4], seeds=[0])
    config["analyses"]["reference_readouts"] = True
    config["analyses"]["erasure"]["references"] = True
    grid = Grid.from_config(config, folds_of=None)
    assert len(grid.runs_in("readouts")) == len(grid.runs_in("erasure")) == len(grid) == 4


def test_lookups_are_computed_once(default_grid):
    assert default_grid.units("cka") is default_grid.units("cka")
    assert default_grid.tables("probes") is default_grid.tables("probes")
    assert default_grid.run_sets is default_grid.run_sets


def test_the_cache_builds_one_grid_per_state_of_the_fold_tables(tmp_path):
    table = tmp_path / "loso_speaker.parquet"
    table.write_text("3")
    reads = []

    def read_folds(path):
        reads.append(path)
        return list(range(1, int(Path(path).read_text()) + 1))

    cache = GridCache(config_with(folds="all", methods=["frozen"], seeds=[0]), lambda d, p: str(table), read_folds)
    first = cache.grid()
    assert cache.grid() is first and len(reads) == 1  # a lookup, not a rebuild
    assert [r.fold for r in first.runs] == [1, 2, 3]
    table.write_text("5")  # the checkpoint rewrote the fold table
    import os

    os.utime(table, ns=(os.stat(table).st_mtime_ns + 10**9,) * 2)
    assert [r.fold for r in cache.grid().runs] == [1, 2, 3, 4, 5] and len(reads) == 2
    listed = GridCache(config_with(folds=[1, 2]), lambda d, p: pytest.fail("no fold table is read"), read_folds)
    assert listed.grid() is listed.grid()


# --- the analysis registry -------------------------------------------------------------------


def test_every_analysis_has_its_rule_and_a_valid_entry():
    rules = {rule for part in ("analyses", "dynamics")
             for rule in re.findall(r"^rule (\w+):", (REPO / "rules" / f"{part}.smk").read_text(), re.M)}
    grid = Grid.from_config(config_with(), folds_of=None)
    for name, spec in ANALYSES.items():
        assert name in rules, f"rules/analyses.smk (or dynamics.smk) has no rule {name}"
        assert spec.unit in ("run", "group", "checkpoint")
        if spec.unit in ("run", "checkpoint"):
            assert spec.applies_to in grid.run_sets
        else:
            assert spec.applies_to in ("subspace", "embedding")
        assert spec.outputs[0] == "parquet"
    assert set(PAIRED) == {"contribution", "logit_lens", "probes", "erasure"}
    assert SECTIONS["cka_seeds"] == "cka" and SECTIONS["weight_spectra"] is None
    with pytest.raises(KeyError, match="known"):
        analysis_spec("nonsense")


def test_every_figure_belongs_to_the_analysis_of_its_first_table():
    assert set(FIGURE_CATEGORIES) == set(FIGURES)
    for figure, spec in FIGURES.items():
        owners = [name for name, analysis in ANALYSES.items() if figure in analysis.figures]
        assert owners == [spec.tables[0]], figure
        assert set(spec.tables) | set(spec.paired) <= set(ANALYSES)


def test_planning_imports_no_plotting_or_model_stack():
    """What rules/common.smk imports while Snakemake parses the workflow stays light."""
    import subprocess
    import sys

    imports = re.findall(r"^from (workflow_scripts[\w.]*) import", (REPO / "rules" / "common.smk").read_text(), re.M)
    code = "; ".join(f"import {module}" for module in imports) + (
        "; import sys; heavy = sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'seaborn', 'sklearn', "
        "'torch', 'transformers', 'scipy', 'zarr'}); print(heavy); sys.exit(bool(heavy))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert len(imports) >= 8 and result.returncode == 0, result.stdout + result.stderr
