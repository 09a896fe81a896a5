"""The paper's configurations end to end: config/paper.yaml (corrected) and config/paper.yaml +
config/paper_faithful.yaml (the original's protocol: legacy 30-s windows, dialog-prefix folds,
selection on test), each on a fixture IEMOCAP tree with a tiny random model, through training,
both captures, every analysis, the report's tables and figures and the HTML report, which a real
browser opens.

The overlay keeps each config's methods, targets, protocols, classes and report settings, and
makes the grid small: one fold, one epoch, a 2-block Whisper of width 32 named like the paper's
model (so that paper_reference's rows are looked up as for the real one), ranks 4 and 8 (the
paper's ablation 8/32/64 runs on widths of 1280; a rank at or above a tiny model's width is no
low-rank adapter) and cheap analysis settings. The rank ablation (and with it the subspace
comparison across ranks) runs in the faithful run only; the corrected run keeps rank 4, which
keeps the test suite within its time budget (its three fewer runs save about 45 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from corpus_fixtures import hf_splits_of, iemocap_paper_labels, make_hf_dataset_dict, make_iemocap, paper_tone

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]

pytestmark = pytest.mark.workflow

#: What both runs change in the paper configs: the model and the size of the grid, nothing else.
OVERLAY = {
    "gpus": 0,
    "models": {"whisper-large-v2": {"source": "tiny_random", "layers": 2, "d_model": 32, "heads": 2,
                                    "ffn_dim": 64, "size": "tiny"}},
    "training": {"folds": [1], "ranks": [4, 8], "epochs": 1, "lr": 1.0e-3, "device": "cpu"},
    "capture": {"grads_per_class": 2},
    "analyses": {"cka": {"permutations": 2}, "embeddings": {"max_iter": 250}, "probes": {"c_grid": [1.0]}},
}
#: The faithful run also switches on the original's B-gradient panel (its plotting bug), and
#: reads the corpus as a Hugging Face DatasetDict saved to disk (Zahra99/IEMOCAP_Audio's layout).
FAITHFUL_OVERLAY = {
    **OVERLAY,
    "datasets": {"iemocap": {"layout": "hf_dataset", "path": "data/iemocap_hf"}},
    "analyses": {**OVERLAY["analyses"], "spectra": {"legacy_svd_panel_bug": True}},
}

#: Every analysis the paper grid (LoRA at two ranks, frozen, lora_init, lora_random; one seed)
#: makes; cka_seeds needs two seeds.
PAPER_ANALYSES = {"contribution", "contribution_difference", "logit_lens", "probes", "erasure", "spectra",
                  "spectra_comparison", "weight_spectra", "subspaces", "cka", "cka_lora_frozen", "embeddings"}
MODEL_RUNS = "iemocap/{protocol}/whisper-large-v2/{method}/{targets}/r{rank}/seed42/fold1"
#: Whisper's 30-s window in encoder positions (3000 mel frames, stride 2).
WINDOW_POSITIONS = 1500


class PaperRun:
    """One paper configuration run to completion in ``workdir``, with its report."""

    def __init__(self, workdir: Path, protocol: str, seconds: float):
        self.workdir, self.protocol, self.seconds = workdir, protocol, seconds
        self.results = workdir / "results"

    def run_id(self, method: str = "lora", rank: int = 4) -> str:
        targets = "none" if method == "frozen" else "v_proj"
        return MODEL_RUNS.format(protocol=self.protocol, method=method, targets=targets,
                                 rank=0 if method == "frozen" else rank)

    def analysis(self, name: str, run: str) -> Path:
        return self.results / "analyses" / name / f"{run}.parquet"


def run_paper_config(workdir: Path, configfiles: list[str], overlay: dict, protocol: str) -> PaperRun:
    """``snakemake`` (every target) and ``snakemake --report``, as the README's main command."""
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    started = time.monotonic()
    command = [*SNAKEMAKE, "--directory", str(workdir), "--replace-workflow-config", "--cores", "2",
               "--configfile", *[str(REPO / f) for f in configfiles], str(workdir / "overlay.yaml")]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for extra in ((), ("--report", str(workdir / "results" / "report.html"))):
        result = subprocess.run([*command, *extra], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(extra)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-20000:]}\n{result.stderr[-20000:]}")
    run = PaperRun(workdir, protocol, time.monotonic() - started)
    print(f"paper mode {' + '.join(configfiles)}: {run.seconds:.0f} s")
    return run


#: The corrected run: one rank (the faithful run has the ablation), so no pair of LoRA runs to
#: compare subspaces across.
CORRECTED_OVERLAY = {**OVERLAY, "training": {**OVERLAY["training"], "ranks": [4]}}
CORRECTED_ANALYSES = PAPER_ANALYSES - {"subspaces"}


@pytest.fixture(scope="module")
def corrected(tmp_path_factory) -> PaperRun:
    """config/paper.yaml on the raw IEMOCAP release layout."""
    workdir = tmp_path_factory.mktemp("paper")
    make_iemocap(workdir / "data" / "IEMOCAP_full_release", iemocap_paper_labels(), paper_tone)
    return run_paper_config(workdir, ["config/paper.yaml"], CORRECTED_OVERLAY, "loso_session")


@pytest.fixture(scope="module")
def faithful(tmp_path_factory) -> PaperRun:
    """config/paper.yaml + config/paper_faithful.yaml on the Hugging Face on-disk layout."""
    workdir = tmp_path_factory.mktemp("paper_faithful")
    make_hf_dataset_dict(workdir / "data" / "iemocap_hf", hf_splits_of(iemocap_paper_labels()), paper_tone)
    return run_paper_config(workdir, ["config/paper.yaml", "config/paper_faithful.yaml"], FAITHFUL_OVERLAY,
                            "legacy_dialog10")


def check_every_analysis_and_the_report(run: PaperRun, analyses: set[str] = PAPER_ANALYSES) -> None:
    """Every analysis of the grid made its tables, the report aggregated each one, drew every
    figure whose tables exist, and the page opens in a real browser with every result."""
    from workflow_scripts.report.browser import check_report
    from workflow_scripts.report.figures.registry import FIGURES

    report = run.results / "report"
    made = {path.stem for path in (report / "tables").glob("*.parquet") if ".paired" not in path.name}
    assert made == analyses
    for name in analyses:
        table = pd.read_parquet(report / "tables" / f"{name}.parquet")
        assert len(table) and table["protocol"].eq(run.protocol).all(), name
    expected = {name for name, spec in FIGURES.items() if set(spec.tables) <= analyses}
    assert {path.stem for path in (report / "figures").glob("*.png")} == expected
    performance = pd.read_csv(run.results / "tables" / "performance.csv")
    assert set(performance["method"]) == {"lora", "frozen", "lora_init", "lora_random"}
    assert "<table>" in (report / "findings.html").read_text()

    check = check_report(run.results / "report.html", run.workdir / "report.png")
    assert check.ok, check.problems
    shown = {Path(figure.path).name for figure in check.figures}
    assert {f"{name}.png" for name in expected} | {"findings.html", "config.html", "performance.html"} <= shown


def store_windows(path: Path) -> tuple[bool, set[int]]:
    """A store's ``legacy`` attribute and the encoder positions its clips hold."""
    from workflow_scripts.capture.store import CaptureStore

    store = CaptureStore(path)
    return bool(store.attrs["legacy"]), set(np.diff(store.frame_offsets).tolist())


def test_the_corrected_paper_config_runs_end_to_end(corrected):
    check_every_analysis_and_the_report(corrected, CORRECTED_ANALYSES)
    run = corrected.run_id()
    metrics = json.loads((corrected.results / "runs" / run / "metrics.json").read_text())
    assert metrics["selected_on"] == "val" and metrics["trained_on"] == ["train"]
    for kind in ("acts", "grads"):  # cropped: a 0.3-s clip (31 log-mel frames) is 16 encoder positions, not 1500
        legacy, positions = store_windows(corrected.results / "acts" / run / f"{kind}.zarr")
        assert not legacy and positions == {16}, (kind, positions)
    # The corrected analyses: centred spectra, no flattened CKA, no panel switch.
    from workflow_scripts.provenance import read_provenance

    assert read_provenance(corrected.analysis("spectra", run))["centered"] is True
    assert "flattened" not in set(pd.read_parquet(corrected.analysis("cka", run))["level"])
    assert "legacy_svd_panel_bug" not in (corrected.results / "analyses" / "spectra_comparison" / f"{run}.svg").read_text()


def test_the_faithful_paper_config_runs_end_to_end_with_legacy_stores_and_analyses(faithful):
    from workflow_scripts.provenance import read_provenance

    check_every_analysis_and_the_report(faithful)
    run = faithful.run_id()
    metrics = json.loads((faithful.results / "runs" / run / "metrics.json").read_text())
    assert metrics["selected_on"] == "test" and metrics["trained_on"] == ["train", "val"]
    for kind in ("acts", "grads"):  # every clip padded to Whisper's 30-s window
        assert store_windows(faithful.results / "acts" / run / f"{kind}.zarr") == (True, {WINDOW_POSITIONS}), kind
    # Spectra: the original's uncentred SVD over the whole window.
    for method in ("lora", "lora_init", "lora_random"):
        record = read_provenance(faithful.analysis("spectra", faithful.run_id(method)))
        assert record["legacy"] is True and record["centered"] is False, method
    # CKA: the original's function on the flattened windows, beside the corrected estimators.
    cka = pd.read_parquet(faithful.analysis("cka", run))
    flattened = cka[cka["level"] == "flattened"]
    assert len(flattened) and set(flattened["estimator"]) == {"legacy"} and flattened["value"].notna().any()
    # t-SNE and PCA on the flattened, standardized windows; the figure says so.
    group = MODEL_RUNS.format(protocol="legacy_dialog10", method="lora", targets="v_proj", rank=0)
    group = group.replace("/r0/", "/")
    embeddings = faithful.results / "analyses" / "embeddings" / group
    assert "flattened 30-s windows" in Path(f"{embeddings}.svg").read_text()
    # The B-gradient panel switch: the energy figure (F4) re-plots the A gradients, and says so.
    for figure in (faithful.results / "analyses" / "spectra" / f"{run}.svg",
                   faithful.results / "analyses" / "spectra_comparison" / f"{run}.svg"):
        assert "legacy_svd_panel_bug" in figure.read_text(), figure

