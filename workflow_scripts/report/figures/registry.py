"""The figure registry: :data:`FIGURES`, name -> :class:`FigureSpec`.

Light on purpose: the workflow imports it while Snakemake parses the rules, so nothing here
imports a plotting library or an analysis module. A spec names its drawing function as a
reference, ``"workflow_scripts.report.figures.readouts:contribution_figure"``, which
:attr:`FigureSpec.draw` imports only when a figure is drawn.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PACKAGE = __name__.rpartition(".")[0]
CAPTIONS = Path(__file__).parents[1] / "captions"


@dataclass(frozen=True)
class FigureSpec:
    """A figure: its function (a ``"module:name"`` reference, imported by :attr:`draw`), the
    aggregated tables it takes (in order, positional), the paired tables it takes next (required,
    then optional), what it reproduces (F1..F6 or "new") and its caption file."""

    function: str
    tables: tuple[str, ...]
    caption: Path
    paired: tuple[str, ...] = ()
    optional_paired: tuple[str, ...] = ()
    paper: str = "new"

    @property
    def draw(self) -> Callable:
        """The drawing function :attr:`function` names, its module imported on first use."""
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


def _spec(name: str, function: str, tables: tuple[str, ...], **kwargs) -> FigureSpec:
    """``function``: ``"family:name"``, a function of the family module ``PACKAGE.family``."""
    return FigureSpec(f"{PACKAGE}.{function}", tables, CAPTIONS / f"{name}.rst", **kwargs)


FIGURES: dict[str, FigureSpec] = {
    "contribution": _spec("contribution", "readouts:contribution_figure", ("contribution",),
                          paired=("contribution",), paper="F1"),
    "logit_lens": _spec("logit_lens", "readouts:logit_lens_figure", ("logit_lens",), paper="F2"),
    "embedding_quality": _spec("embedding_quality", "embeddings:embedding_quality_figure", ("embeddings",),
                               paper="F3"),
    "energy": _spec("energy", "spectra:energy_figure", ("spectra",), paper="F4"),
    "top10": _spec("top10", "spectra:top10_figure", ("spectra",), paper="F5"),
    "cka": _spec("cka", "cka:cka_figure", ("cka",), paper="F6"),
    "probes": _spec("probes", "readouts:probe_figure", ("probes",), optional_paired=("probes",)),
    "lens_comparison": _spec("lens_comparison", "readouts:lens_comparison_figure", ("logit_lens",)),
    "erasure": _spec("erasure", "readouts:erasure_figure", ("erasure",)),
    "weight_spectra": _spec("weight_spectra", "spectra:weight_spectra_figure", ("weight_spectra",)),
    "subspaces": _spec("subspaces", "subspaces:subspace_figure", ("subspaces",)),
    "cka_heatmap": _spec("cka_heatmap", "cka:cka_heatmap_figure", ("cka_lora_frozen", "cka_seeds")),
    "dynamics_heatmaps": _spec("dynamics_heatmaps", "dynamics:dynamics_heatmaps",
                               ("dynamics_representation", "dynamics_readouts", "dynamics_weights")),
    "dynamics_intruders": _spec("dynamics_intruders", "dynamics:dynamics_intruders_figure", ("dynamics_intruders",)),
}
