"""What a report caption says about the runs behind a result, and the paper's reference values
beside a figure (config/paper_reference.csv, read from the paper's figures)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from workflow_scripts.runs import Run

#: The caption template placeholder that the runs' description replaces.
RUNS_PLACEHOLDER = "{{ snakemake.params.runs }}"


def describe_runs(runs: list[Run]) -> str:
    """One line per configuration: ``lora q_proj+v_proj r8 on demo/loso_speaker/whisper-base:
    seeds 0, 1 × folds 1 (2 runs)``, joined with "; "."""
    if not runs:
        return "no runs"
    configurations = defaultdict(list)
    for run in runs:
        where = f"{run.dataset}/{run.protocol}/{run.model}"
        what = run.method if run.method == "frozen" else f"{run.method} {run.targets} r{run.rank}"
        configurations[(where, what)].append(run)
    parts = []
    for (where, what), members in sorted(configurations.items()):
        seeds = sorted({run.seed for run in members})
        folds = sorted({run.fold for run in members})
        parts.append(f"{what} on {where}: seeds {', '.join(map(str, seeds))} × folds "
                     f"{', '.join(map(str, folds))} ({len(members)} run{'s' if len(members) != 1 else ''})")
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''}: " + "; ".join(parts)


def reference_table(reference: pd.DataFrame, figure: str) -> str:
    """The paper's values for ``figure`` as a reStructuredText table ("" if it has none)."""
    rows = reference[reference["figure"] == figure]
    if rows.empty:
        return ""
    header = ["panel", "series", "statistic", "layer", "value", "source"]
    cells = [[str(v) if pd.notna(v) else "" for v in row] for row in rows[header].itertuples(index=False)]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    rule = " ".join("=" * w for w in widths)
    line = lambda values: " ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    body = [rule, line(header), rule, *(line(c) for c in cells), rule]
    return (f"\n\nThe paper's values for {figure} (read from its figures, ../shared/notes/paper.md "
            "section 4; the paper's model has its own layer count):\n\n" + "\n".join(body) + "\n")


def figure_caption(caption_file: str | Path, runs: list[Run], reference: pd.DataFrame | None = None,
                   paper_figure: str | None = None) -> str:
    """A figure's caption: its file with the runs described, and the paper's values when asked."""
    text = Path(caption_file).read_text().replace(RUNS_PLACEHOLDER, describe_runs(runs))
    if reference is not None and paper_figure:
        text += reference_table(reference, paper_figure)
    return text
