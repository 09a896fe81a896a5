"""The paper's values (``config/paper_reference.csv``): their vocabulary, and the reader that
checks a file against it before any figure draws from it.

Light on purpose (pandas and the figures' shared vocabulary only): the workflow reads the file
while Snakemake parses the rules, for the figures' captions.

Each row is one value read from the paper: ``figure, panel, series, statistic, layer, value,
source``. ``source`` says where it was read (its figure, its text); ``layer`` is the paper's
x (its 0-based layer index) where the value belongs to one layer, and empty where it summarises
all layers. The names are the figures' own: a panel is the statistic (or quantity) the panel of
the report's figure draws, a series the label its lines or boxes have in the aggregated tables.

The vocabulary (:data:`VOCABULARY`; the report figure that draws the rows in brackets):

* ``T1`` (the performance table, not a figure): panel ``performance``; series any text naming the
  configuration and metric (e.g. ``LoRA r32 v_proj UAR``); statistic ``mean`` or ``std``; no layer.
* ``F1`` (``contribution``): panels ``attn_ratio``, ``mlp_ratio``, ``layer_ratio``, ``attn_cos``,
  ``mlp_cos``, ``layer_cos`` (the contribution table's statistics; attention, MLP, both), series
  ``lora`` or ``frozen`` (its ``method``); and the same panels + ``_difference`` (the LoRA − frozen
  rows), series ``mean_difference`` (the paired table's). Statistic ``point``; layer = block.
  Drawn as markers over the bars.
* ``F2`` (``logit_lens``): panels ``kl_final_layer``, ``agreement``; series ``lora``, ``frozen``;
  statistic ``point``; layer = the paper's layer l, the output of block l, which is our layer
  l + 1 (drawn there, on the raw lens).
* ``F3`` (``embedding_quality``): none; the paper gives no numbers for F3.
* ``F4`` (``energy``): panels ``a_out``, ``a_grad``, ``b_out``, ``b_grad`` (the spectra table's
  ``quantity``; the paper's U, gU, V, gV); series ``trained`` or ``lora_random`` (the paper's
  "untrained", a LoRA drawn at random as the original notebook did) with statistic ``mean_k90``
  (the mean k90 over layers, drawn as a point beside that label's box), and ``lora_random`` with
  ``mean_k90_ratio`` (its mean k90 over the trained one's, drawn as text); no layer.
* ``F5`` (``top10``): the same panels and series; statistics ``min`` and ``max``, a pair (the
  range over layers the paper's curve spans, drawn as a band across the blocks); no layer.
* ``F6`` (``cka``): panel ``forward`` with series ``learned_layer_similarities``,
  ``random_layer_similarities``; panel ``backward`` with ``learned_layer_grad_similarities``,
  ``random_layer_grad_similarities`` (the cka table's ``paper_series``); statistic ``point``;
  layer = block.

:func:`read_reference` reads and checks a file; :func:`check_reference` checks a table (its
errors name the row, the file's line and the accepted names); :func:`figure_rows` gives a
figure its rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.figure_style import DISPLAY, PANELS, TRAINED

REFERENCE_COLUMNS = ("figure", "panel", "series", "statistic", "layer", "value", "source")
#: A value read at one layer of a curve or bar series.
POINT = "point"
#: F1's LoRA − frozen panels: the contribution statistic with this suffix, the paired table's series.
DIFFERENCE_SUFFIX = "_difference"
DIFFERENCE_SERIES = "mean_difference"
#: A series name that accepts any text (the performance table's rows, T1).
ANY_SERIES = "*"
CONTRIBUTION_STATISTICS = tuple(f"{output}_{kind}" for kind in ("ratio", "cos") for output in ("attn", "mlp", "layer"))
SPECTRA_QUANTITIES = tuple(quantity for quantity, _ in PANELS)
UNTRAINED = "lora_random"  # the paper's "untrained": a LoRA drawn at random, as the original notebook did
METHODS = {"lora": (POINT,), "frozen": (POINT,)}

#: figure -> panel -> series -> the statistics a row may have. See the module's table.
VOCABULARY: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "T1": {"performance": {ANY_SERIES: ("mean", "std")}},
    "F1": {**{statistic: METHODS for statistic in CONTRIBUTION_STATISTICS},
           **{statistic + DIFFERENCE_SUFFIX: {DIFFERENCE_SERIES: (POINT,)} for statistic in CONTRIBUTION_STATISTICS}},
    "F2": {"kl_final_layer": METHODS, "agreement": METHODS},
    "F3": {},
    "F4": {quantity: {TRAINED: ("mean_k90",), UNTRAINED: ("mean_k90", "mean_k90_ratio")}
           for quantity in SPECTRA_QUANTITIES},
    "F5": {quantity: {TRAINED: ("min", "max"), UNTRAINED: ("min", "max")} for quantity in SPECTRA_QUANTITIES},
    "F6": {"forward": {"learned_layer_similarities": (POINT,), "random_layer_similarities": (POINT,)},
           "backward": {"learned_layer_grad_similarities": (POINT,), "random_layer_grad_similarities": (POINT,)}},
}
#: The figures whose rows are values at one layer (``layer`` required); the others' summarise all layers.
LAYERED = ("F1", "F2", "F6")
#: How a series reads in a legend (after "paper (read from its figure): ").
SERIES_DISPLAY = {"lora": "LoRA", "frozen": "frozen", DIFFERENCE_SERIES: "LoRA − frozen",
                  TRAINED: DISPLAY[TRAINED], UNTRAINED: DISPLAY[UNTRAINED]}


def _text(value) -> str:
    return "" if pd.isna(value) else str(value).strip()


def _row_problem(row: dict) -> str | None:
    """What is wrong with one row (None if nothing): each message lists the accepted names."""
    figure, panel, series, statistic = (_text(row[c]) for c in ("figure", "panel", "series", "statistic"))
    if figure not in VOCABULARY:
        return f"figure {figure!r} is not one of {list(VOCABULARY)}"
    panels = VOCABULARY[figure]
    if not panels:
        return f"figure {figure} takes no values (the paper gives no numbers for it)"
    if panel not in panels:
        return f"panel {panel!r} is not a panel of {figure}; accepted: {list(panels)}"
    accepted_series = panels[panel]
    if ANY_SERIES in accepted_series:
        if not series:
            return f"{figure} {panel}: the series is empty; it names the configuration and metric"
        statistics = accepted_series[ANY_SERIES]
    elif series not in accepted_series:
        return f"series {series!r} is not a series of {figure} {panel}; accepted: {list(accepted_series)}"
    else:
        statistics = accepted_series[series]
    if statistic not in statistics:
        return f"statistic {statistic!r} is not one of {figure} {panel} {series}'s; accepted: {list(statistics)}"
    layer = pd.to_numeric(pd.Series([row["layer"]]), errors="coerce").iloc[0]
    if figure in LAYERED:
        if not (np.isfinite(layer) and layer >= 0 and float(layer).is_integer()):
            return f"{figure} values belong to one layer: layer must be an integer >= 0, not {_text(row['layer'])!r}"
    elif _text(row["layer"]):
        return f"{figure} values summarise all layers: layer must be empty, not {_text(row['layer'])!r}"
    value = pd.to_numeric(pd.Series([row["value"]]), errors="coerce").iloc[0]
    if not np.isfinite(value):
        return f"value must be a finite number, not {_text(row['value'])!r}"
    if not _text(row["source"]):
        return "source is empty; it says where the value was read (the paper's figure or text)"
    return None


def check_reference(table: pd.DataFrame, source: str, lines: bool = False) -> pd.DataFrame:
    """``table`` with ``layer`` and ``value`` as numbers, or an InputError naming ``source``, the
    row (and with ``lines``, the file's line: the header is line 1) and the accepted names."""
    missing = [c for c in REFERENCE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{source}: lacks column(s) {missing}; a reference table has {list(REFERENCE_COLUMNS)}")
    table = table.reset_index(drop=True)

    def where(i: int) -> str:
        return f"{source}, row {i + 1}" + (f" (line {i + 2})" if lines else "")

    for i, row in enumerate(table.to_dict("records")):
        problem = _row_problem(row)
        if problem:
            raise InputError(f"{where(i)}: {problem}")
    key = ["figure", "panel", "series", "statistic", "layer"]
    duplicated = table.astype({"layer": str}).duplicated(key)
    if duplicated.any():
        i = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise InputError(f"{where(i)}: a second value for {dict(table.loc[i, key])}")
    table = table.assign(layer=pd.to_numeric(table["layer"], errors="coerce"),
                         value=pd.to_numeric(table["value"], errors="coerce"))
    ranges = table[table["statistic"].isin(["min", "max"])]
    for (figure, panel, series), rows in ranges.groupby(["figure", "panel", "series"], sort=False):
        bounds = dict(zip(rows["statistic"], rows["value"]))
        if set(bounds) != {"min", "max"} or bounds["min"] > bounds["max"]:
            raise InputError(f"{where(int(rows.index[0]))}: {figure} {panel} {series}: a range needs a min and a "
                             f"max row with min <= max (it has {bounds})")
    return table


def read_reference(path: str | Path) -> pd.DataFrame:
    """The checked reference table of the CSV ``path``, or an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the paper's values: {path} does not exist")
    try:
        # Every cell as its text (an error quotes the file), numbers converted once the rows pass.
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as error:  # pandas raises several types for an unreadable file
        raise InputError(f"the paper's values: {path} is not a readable CSV table ({error})") from error
    return check_reference(table, str(path), lines=True)


def figure_rows(reference: pd.DataFrame | None, paper: str, figure: str) -> pd.DataFrame | None:
    """The checked rows of ``reference`` for the paper's figure ``paper`` (F1..F6), drawn by the
    report's ``figure`` (named in an error); None without a reference."""
    if reference is None:
        return None
    checked = check_reference(reference, f"figure {figure}: the reference table")
    return checked[checked["figure"].astype(str) == paper]
