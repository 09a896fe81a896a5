"""Layer contribution (paper 3.1): how much each block's attention and MLP add to the residual
stream, relative to it, and in which direction.

Per block b, over every frame t of the chosen clips: ‖a_t‖/max(‖x_t‖, 1e-6), ‖m_t‖/max(‖x_t‖,
1e-6), ‖a_t+m_t‖/max(‖x_t‖, 1e-6), cos(a_t, x_t), cos(m_t, x_t), cos(a_t+m_t, x_t), with x the
block's residual input, a its attention output and m its MLP output. Averaged over all frames of
all clips, as the paper did: the store holds each clip's sums over its frames and its frame
count, so the average is the sum of the sums over the sum of the counts. By default the frames
are each clip's real frames; a store captured under ``legacy`` holds sums over the whole 30-s
window (1,500 frames, padding included), which reproduces the original's numbers through the
same code.

Table: one row per block x statistic (``value``, ``clips``, ``frames``); figure: the ratios and
the cosines per block, as the paper's F1. With ``--difference LORA FROZEN`` the entry point
writes instead the LoRA − frozen difference of two such tables (runs that share dataset,
protocol, model, seed and fold), the quantity the paper plots.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from workflow_scripts.cli import resolve_spec, run_main
from workflow_scripts.errors import InputError

log = logging.getLogger(__name__)


def frame_average(sums: np.ndarray, n_frames: np.ndarray) -> np.ndarray:
    """``[clips, blocks, statistics]`` sums over each clip's frames -> ``[blocks, statistics]``
    averages over every frame of every clip (float64)."""
    total = float(np.sum(n_frames))
    if total <= 0:
        raise InputError("no frames to average the contribution statistics over")
    return np.asarray(sums, dtype=np.float64).sum(0) / total


def contribution_table(sums: np.ndarray, n_frames: np.ndarray, statistics: list[str]) -> pd.DataFrame:
    """Tidy: block, statistic, value, clips, frames."""
    means = frame_average(sums, n_frames)
    blocks, names = np.meshgrid(np.arange(means.shape[0]), statistics, indexing="ij")
    return pd.DataFrame({"block": blocks.ravel(), "statistic": names.ravel(), "value": means.ravel(),
                         "clips": len(n_frames), "frames": int(np.sum(n_frames))})


def store_contribution(store, split: str) -> pd.DataFrame:
    """The contribution table of a store's clips of one split."""
    utterances = store.utterances()
    chosen = (utterances["split"] == split).to_numpy()
    if not chosen.any():
        raise InputError(f"analyses.contribution.split: {store.path} has no {split!r} clips")
    sums, n_frames, statistics = store.contribution()
    return contribution_table(sums[chosen], n_frames[chosen], statistics)


def contribution_difference(lora: pd.DataFrame, frozen: pd.DataFrame) -> pd.DataFrame:
    """Tidy: block, statistic, value = LoRA − frozen, and both values."""
    keys = ["block", "statistic"]
    merged = lora[keys + ["value"]].merge(frozen[keys + ["value"]], on=keys, suffixes=("_lora", "_frozen"),
                                          validate="1:1")
    if len(merged) != len(lora) or len(merged) != len(frozen):
        raise InputError("the LoRA and frozen contribution tables cover different blocks or statistics "
                         "(runs of different models?)")
    merged.insert(2, "value", merged["value_lora"] - merged["value_frozen"])
    return merged


def contribution_figure(table: pd.DataFrame, title: str, difference: bool = False):
    """Two panels, as the paper's F1: relative norms and cosines with the residual, per block
    (``difference``: of the LoRA − frozen table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, kind, label in ((axes[0], "ratio", "‖output‖ / ‖residual‖"), (axes[1], "cos", "cosine with residual")):
        part = table[table["statistic"].str.endswith(kind)].copy()
        part["output"] = part["statistic"].str.replace(f"_{kind}", "", regex=False)
        sns.barplot(part, x="block", y="value", hue="output", ax=axis)
        axis.set_xlabel("encoder block")
        axis.set_ylabel(f"LoRA − frozen: {label}" if difference else label)
    axes[1].axhline(0, color="black", linewidth=0.8)
    figure.suptitle(title, fontsize=9)
    return figure


def main(argv: list[str] | None = None) -> None:
    from functools import partial

    from workflow_scripts.analyses.output import analysis_parser, publish
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    parser = analysis_parser("workflow_scripts.analyses.contribution", __doc__, acts=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--acts", help="the run's acts.zarr")
    source.add_argument("--difference", nargs=2, metavar=("LORA", "FROZEN"),
                        help="two contribution tables (.parquet): write LORA − FROZEN for the (LoRA) run")
    args = parser.parse_args(argv)
    run = Run.from_wildcards(vars(args))
    settings = resolve_spec(args, lambda config: config["analyses"]["contribution"])
    if args.difference:
        lora, frozen = (pd.read_parquet(path) for path in args.difference)
        record = provenance("contribution_difference", settings, run=run.id, tables=args.difference)
        publish(contribution_difference(lora, frozen), run, args.out, record,
                partial(contribution_figure, difference=True),
                f"layer contribution, LoRA − frozen, {settings['split']} clips")
    else:
        store = CaptureStore(args.acts, kind="acts", run=run.id)
        record = provenance("contribution", settings, run=run.id, acts=args.acts)
        publish(store_contribution(store, settings["split"]), run, args.out, record, contribution_figure,
                f"layer contribution, {settings['split']} clips")
    log.info("wrote %s", args.out)

if __name__ == "__main__":
    run_main(main)
