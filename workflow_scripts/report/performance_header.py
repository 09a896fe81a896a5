"""The lines above the performance table (workflow_scripts.report.performance): how LoRA's alpha
was chosen across ranks, from what the runs recorded, and the paper's T1 from
config/paper_reference.csv (with ``report.paper_reference``)."""

from __future__ import annotations

import pandas as pd

from workflow_scripts.errors import InputError


def _alpha(value: float) -> str:
    return f"{value:g}"


def alpha_line(runs: pd.DataFrame) -> str | None:
    """How LoRA's alpha was chosen, from what the runs recorded (the rows of
    :func:`performance.collect`); None when no run recorded one (no LoRA run, or files from before
    alpha was recorded)."""
    lora = runs.dropna(subset=["lora_alpha", "lora_alpha_policy"]) if "lora_alpha" in runs else runs.iloc[:0]
    if lora.empty:
        return None
    policies = lora.groupby("lora_alpha_policy", sort=True)
    every_rank = " for every rank" if len(policies) == 1 else ""
    parts = []
    for policy, group in policies:
        ranks = sorted(group["rank"].unique())
        if policy == "fixed" and group["lora_alpha"].nunique() == 1:
            rule = f"fixed {_alpha(group['lora_alpha'].iloc[0])}{every_rank}"
        elif policy == "ratio" and (group["lora_alpha"] / group["rank"]).nunique() == 1:
            rule = f"alpha = {_alpha(group['lora_alpha'].iloc[0] / group['rank'].iloc[0])} × rank"
        else:  # recorded values that follow no one rule: each rank's
            by_rank = group.groupby("rank")["lora_alpha"].unique()
            rule = f"{policy}: " + ", ".join(f"{'/'.join(map(_alpha, values))} at rank {rank}"
                                             for rank, values in by_rank.items())
        parts.append(f"{rule} ({'rank' if len(ranks) == 1 else 'ranks'} {', '.join(map(str, ranks))})")
    return f"LoRA alpha: {'; '.join(parts)}."


PAPER_FIGURE = "T1"  # the rows of config/paper_reference.csv that hold the paper's performance table


def paper_line(path: str) -> str:
    """The paper's T1 from ``path`` (config/paper_reference.csv): its mean ± std (ddof 0) of each
    metric, per configuration; series are named "<configuration> <metric>" (``LoRA r32 v_proj UAR``)."""
    reference = pd.read_csv(path)
    missing = {"figure", "series", "statistic", "value"} - set(reference.columns)
    if missing:
        raise InputError(f"{path}: lacks the columns {sorted(missing)}")
    t1 = reference[reference["figure"] == PAPER_FIGURE]
    if t1.empty:
        raise InputError(f"{path}: no rows of figure {PAPER_FIGURE} (the paper's performance table)")
    values = t1.pivot_table(index="series", columns="statistic", values="value", aggfunc="first")
    if not {"mean", "std"} <= set(values.columns) or values[["mean", "std"]].isna().any().any():
        raise InputError(f"{path}: every {PAPER_FIGURE} series needs a mean and a std row")
    configurations: dict[str, list[str]] = {}
    for series in t1["series"].drop_duplicates():
        configuration, _, metric = series.rpartition(" ")
        mean, std = values.loc[series, "mean"], values.loc[series, "std"]
        configurations.setdefault(configuration, []).append(f"{metric} {mean:.3f} ± {std:.3f}")
    text = "; ".join(f"{name}: {', '.join(parts)}" for name, parts in configurations.items())
    return (f"The paper ({PAPER_FIGURE}): {text} (mean ± population std, ddof 0, over its folds); "
            "compare the std (ddof 0) columns.")
