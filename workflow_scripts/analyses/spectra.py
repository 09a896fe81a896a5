"""SVD spectra of the LoRA matrices' activations and gradients (paper 3.6, figures F4 and F5).

For every adapted (block, module) of a run's grads.zarr and each of its four frame-level
quantities -- ``a_out`` U = A·x, ``b_out`` V = B·U (unscaled), ``a_grad`` gU = ∂loss/∂U and
``b_grad`` gV = ∂loss/∂V -- the rows (one per frame, of every clip in the store) form a matrix M
[n, d]. Its singular values σ (float64, sorted decreasing, min(n, d) of them) come from the
eigenvalues of the Gram matrix MᵀM [d, d], accumulated chunk by chunk while the store is read
(so no n × d matrix is held in memory), clipped at 0 and square-rooted. By default the column
means are removed first (MᵀM − s sᵀ/n, s the column sums): the spectrum of the centred rows, so
that a shared offset does not count as a direction. Taking eigenvalues of the Gram squares the
condition number: a singular value below about 1e-8 · σ₁ is not resolved (it reads as 0 or as
rounding noise); the energy statistics below are dominated by the large ones and unaffected.

From σ (analysis-math.md, "Spectra (SVD)"):

* cumulative energy E_k = Σ_{i≤k} σ_i² / Σ_i σ_i², k = 1..K;
* k90 = the smallest 1-based k with E_k ≥ 0.9 (with a 1e-12 tolerance, so that an exact
  boundary that rounds to 0.8999999999999999 still counts);
* top-10 energy E(10) = E_min(10, K) (1 by definition when K ≤ 10, e.g. U and gU at rank ≤ 10);
* entropy effective rank (Roy & Vetterli 2007): exp(−Σ p_i log p_i), p_i = σ_i / Σ_j σ_j (the
  singular values, not their squares; 0·log 0 = 0);
* stable rank Σ σ_i² / σ₁²; total energy Σ σ_i² (= ‖M‖²_F, centred or not); frames n.

An all-zero spectrum -- a ``lora_init`` run's B outputs and A gradients (B = 0) -- has no
energy to share out: every ratio above is NaN (never a division by zero), total energy is 0 and
the rows say ``all_zero``.

Frames are the store's frame-level rows: each clip's real frames, or, in a store captured under
``legacy``, the whole 30-s window (1,500 frames per clip, padding included). A legacy store is
analysed uncentred whatever ``center`` says, as the original was, so its numbers reproduce the
paper's through the same code.

Table (per run): block, module, quantity (a_out, b_out, a_grad, b_grad), statistic, k, value,
all_zero -- statistic ``sigma`` and ``cumulative_energy`` with k = 1..K, and the scalars
``k90``, ``top10_energy``, ``effective_rank``, ``stable_rank``, ``total_energy``, ``frames`` with
k empty. Figure: the run's 2 × 2 cumulative-energy panels.

Comparison (``--compare``; F4 and F5): the trained run's table against those of its untrained
references (``lora_random``, the paper's "untrained", and ``lora_init``) of the same dataset,
protocol, model, targets, rank, seed and fold. Summary table: label (trained, lora_random,
lora_init), quantity, module (a module's name, or ``all`` over every adapted matrix),
statistic, value -- statistics ``mean_k90``, ``std_k90`` (sample, ddof 1; NaN for one matrix),
``min_k90``, ``max_k90`` over the (block, module) matrices whose spectrum is not all zero,
``ratio_mean_k90`` = the label's mean over the trained run's (the paper's "Ratio" is untrained /
trained), ``matrices`` and ``all_zero_matrices``. Figures: the paper's 2 × 2 energy figure
(A-activation, A-gradient, B-activation, B-gradient; per-matrix and mean curves, an inset box
plot of the per-matrix k90 and the mean/ratio text), and F5, the top-10 energy per block.

The original's plotting call passed the A-gradient spectra to its B-gradient panel (paper 5.3
item 15); ``legacy_svd_panel_bug: true`` reproduces that panel (and its title says so). By
default the panel shows gV.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.cli import parse_assignments, resolve_spec, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.figure_style import COLOURS, DISPLAY, PANELS, REFERENCES, TRAINED, run_label

log = logging.getLogger(__name__)

QUANTITIES = ("a_out", "b_out", "a_grad", "b_grad")
SCALARS = ("k90", "top10_energy", "effective_rank", "stable_rank", "total_energy", "frames")
CURVES = ("sigma", "cumulative_energy")
TABLE_COLUMNS = ["block", "module", "quantity", "statistic", "k", "value", "all_zero"]
ENERGY_LEVEL = 0.9
TOP_K = 10
TOLERANCE = 1e-12  # an exact boundary E_k = 0.9 that rounds just below still counts
#: The comparison's labels (TRAINED, REFERENCES, their DISPLAY names and COLOURS): figure_style.
LABELS = (TRAINED,) + REFERENCES
MAX_K_SHOWN = 32  # the paper's x-axis: 0..32
COMPARED_FIELDS = ("dataset", "protocol", "model", "targets", "rank", "seed", "fold")
READ_BYTES = 32 << 20  # rows read per step: whole chunks, about this many bytes


# -- spectra -----------------------------------------------------------------------------------

def _spectrum(sigma) -> np.ndarray:
    """``sigma`` as float64, sorted decreasing (the definitions assume that order)."""
    values = np.asarray(sigma, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"singular values must be finite and non-negative, got {values}")
    return np.sort(values)[::-1]


def cumulative_energy(sigma) -> np.ndarray:
    """E_k = Σ_{i≤k} σ_i² / Σ σ_i², k = 1..K; all NaN for an all-zero (or empty) spectrum."""
    values = _spectrum(sigma)
    energy = values ** 2
    total = energy.sum()
    if total == 0:
        return np.full(values.size, np.nan)
    return np.cumsum(energy) / total


def k_for_energy(sigma, level: float = ENERGY_LEVEL) -> float:
    """The smallest 1-based k with E_k ≥ level (1e-12 tolerance): k90 at the default; NaN for an
    all-zero spectrum."""
    if not 0 < level <= 1:
        raise ValueError(f"energy level {level} is not in (0, 1]")
    energy = cumulative_energy(sigma)
    if energy.size == 0 or np.isnan(energy[-1]):
        return float("nan")
    # E_K is 1 up to rounding, so some k reaches level - tolerance.
    return float(np.argmax(energy >= level - TOLERANCE) + 1)


def top_energy(sigma, k: int = TOP_K) -> float:
    """E_min(k, K): the share of the energy in the k largest singular values; NaN if all zero."""
    if k < 1:
        raise ValueError(f"k = {k}: at least one singular value")
    energy = cumulative_energy(sigma)
    return float("nan") if energy.size == 0 else float(energy[min(k, energy.size) - 1])


def effective_rank(sigma) -> float:
    """exp(−Σ p_i log p_i), p_i = σ_i / Σ σ_j (Roy & Vetterli 2007); NaN if all zero."""
    values = _spectrum(sigma)
    total = values.sum()
    if total == 0:
        return float("nan")
    p = values[values > 0] / total  # 0 · log 0 = 0
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank(sigma) -> float:
    """Σ σ_i² / σ₁²; NaN if all zero."""
    values = _spectrum(sigma)
    if values.size == 0 or values[0] == 0:
        return float("nan")
    return float(np.sum(values ** 2) / values[0] ** 2)


def spectrum_statistics(sigma) -> dict:
    """The scalar statistics of one spectrum: k90, top10_energy, effective_rank, stable_rank,
    total_energy (Σ σ²) and all_zero (then the ratios are NaN)."""
    values = _spectrum(sigma)
    total = float(np.sum(values ** 2))
    return {"k90": k_for_energy(values), "top10_energy": top_energy(values), "effective_rank": effective_rank(values),
            "stable_rank": stable_rank(values), "total_energy": total, "all_zero": total == 0}


class GramAccumulator:
    """The Gram matrix MᵀM, the column sums and the row count of a row matrix M [n, width],
    accumulated batch by batch in float64; its singular values, centred or not, at the end."""

    def __init__(self, width: int):
        self.width = int(width)
        self.gram = np.zeros((self.width, self.width))
        self.sums = np.zeros(self.width)
        self.n = 0

    def update(self, rows) -> None:
        """Add the rows [m, width] of a batch (any float dtype; summed in float64)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows must be [m, {self.width}], got {rows.shape}")
        self.gram += rows.T @ rows
        self.sums += rows.sum(axis=0)
        self.n += rows.shape[0]

    def gram_matrix(self, center: bool) -> np.ndarray:
        """MᵀM, or (M − 1 mᵀ)ᵀ(M − 1 mᵀ) = MᵀM − s sᵀ/n with the column means m = s/n removed."""
        if not center or self.n == 0:
            return self.gram.copy()
        return self.gram - np.outer(self.sums, self.sums) / self.n

    def singular_values(self, center: bool = True) -> np.ndarray:
        """The min(n, width) singular values of M (``center``: of M with its column means
        removed), sorted decreasing: square roots of the Gram's eigenvalues, clipped at 0."""
        gram = self.gram_matrix(center)
        eigenvalues = np.linalg.eigvalsh((gram + gram.T) / 2)  # symmetric up to rounding: make it exact
        sigma = np.sqrt(np.clip(eigenvalues, 0, None))[::-1]
        return sigma[: min(self.n, self.width)]


def spectrum_rows(sigma, frames: int) -> pd.DataFrame:
    """One spectrum as table rows: statistic, k, value, all_zero (see the module docstring)."""
    values = _spectrum(sigma)
    statistics = spectrum_statistics(values)
    ks = np.arange(1, values.size + 1)
    curves = pd.DataFrame({"statistic": np.repeat(list(CURVES), values.size), "k": np.tile(ks, len(CURVES)),
                           "value": np.concatenate([values, cumulative_energy(values)])})
    scalars = pd.DataFrame({"statistic": list(SCALARS), "k": pd.NA,
                            "value": [statistics[name] for name in SCALARS[:-1]] + [float(frames)]})
    rows = pd.concat([curves, scalars], ignore_index=True)
    rows["k"] = rows["k"].astype("Int64")
    rows["value"] = rows["value"].astype(np.float64)
    rows["all_zero"] = statistics["all_zero"]
    return rows


# -- the store ---------------------------------------------------------------------------------

def effective_center(store, center: bool) -> bool:
    """Whether the store's rows are centred: ``center``, except under a legacy store (uncentred,
    as the original)."""
    return bool(center) and not bool(store.attrs.get("legacy", False))


def row_blocks(array):
    """The rows of a Zarr array [n, width], a few whole chunks at a time (float32 as stored)."""
    chunk = int(array.chunks[0])
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
    step = chunk * max(1, READ_BYTES // max(chunk * row_bytes, 1))
    for start in range(0, array.shape[0], step):
        yield array[start : start + step]


def matrix_spectrum(array, center: bool) -> tuple[np.ndarray, int]:
    """The singular values of a frame-level array's rows, streamed; and the number of rows."""
    accumulator = GramAccumulator(array.shape[1])
    for rows in row_blocks(array):
        accumulator.update(rows)
    return accumulator.singular_values(center), accumulator.n


def store_spectra(store, center: bool = True) -> pd.DataFrame:
    """The spectra table of a grads store: every adapted (block, module) and quantity."""
    if store.kind != "grads":
        raise InputError(f"{store.path} is a {store.kind} store; the spectra read a grads.zarr "
                         "(U, V and their gradients)")
    adapted = store.adapted()
    if not adapted:
        raise InputError(f"{store.path} has no LoRA arrays (run method {store.attrs.get('method')!r}): "
                         "the spectra need a run with LoRA (lora, lora_init, lora_random)")
    centred = effective_center(store, center)
    if center and not centred:
        log.info("%s was captured under legacy: its spectra are uncentred, as the original's", store.path)
    if int(store.frame_offsets[-1]) == 0:
        raise InputError(f"{store.path} holds no frame-level rows")
    parts = []
    for block, module in adapted:
        for quantity in QUANTITIES:
            try:
                array = store.frame_array(("lora", block, module, quantity))
            except KeyError as error:
                raise InputError(str(error.args[0])) from error
            sigma, frames = matrix_spectrum(array, centred)
            rows = spectrum_rows(sigma, frames)
            rows.insert(0, "block", block)
            rows.insert(1, "module", module)
            rows.insert(2, "quantity", quantity)
            parts.append(rows)
            if rows["all_zero"].iloc[0]:
                log.info("%s: block %d %s %s is identically zero", store.path, block, module, quantity)
    return pd.concat(parts, ignore_index=True)[TABLE_COLUMNS]


# -- comparison --------------------------------------------------------------------------------

def scalar(table: pd.DataFrame, statistic: str) -> pd.DataFrame:
    """block, module, quantity, value, all_zero of one scalar statistic."""
    rows = table[table["statistic"] == statistic]
    return rows[["block", "module", "quantity", "value", "all_zero"]].reset_index(drop=True)


def k90_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean, std, min and max of k90 over the adapted (block, module) matrices, per label and
    quantity, over all modules (module ``all``) and per module; the ratio of each label's mean
    to the trained run's; the matrix counts. ``tables`` maps labels to spectra tables and holds
    ``trained``."""
    if TRAINED not in tables:
        raise ValueError(f"k90_summary needs a {TRAINED!r} table, got {sorted(tables)}")
    described = {}  # (label, quantity, module) -> statistics, in the table's order
    for label, table in tables.items():
        k90 = scalar(table, "k90")
        for quantity in QUANTITIES:
            of_quantity = k90[k90["quantity"] == quantity]
            groups = [("all", of_quantity)] + list(of_quantity.groupby("module", sort=True))
            for module, part in groups:
                values = part.loc[~part["all_zero"].astype(bool), "value"].to_numpy(dtype=np.float64)
                described[label, quantity, module] = {
                    "mean_k90": values.mean() if values.size else np.nan,
                    "std_k90": values.std(ddof=1) if values.size > 1 else np.nan,
                    "min_k90": values.min() if values.size else np.nan,
                    "max_k90": values.max() if values.size else np.nan,
                    "ratio_mean_k90": np.nan,
                    "matrices": float(len(part)), "all_zero_matrices": float(part["all_zero"].sum()),
                }
    for (label, quantity, module), statistics in described.items():
        trained = described.get((TRAINED, quantity, module), {}).get("mean_k90", np.nan)
        if trained > 0:  # NaN (all zero) or absent: no ratio
            statistics["ratio_mean_k90"] = statistics["mean_k90"] / trained
    return pd.DataFrame([{"label": label, "quantity": quantity, "module": module, "statistic": name,
                          "value": float(value)}
                         for (label, quantity, module), statistics in described.items()
                         for name, value in statistics.items()])


def check_comparable(tables: dict[str, pd.DataFrame], sources: dict[str, str], run=None) -> None:
    """Refuse tables that are not spectra tables of one comparison: each a single run, the
    references of the trained run's dataset, protocol, model, targets, rank, seed and fold, a
    reference's method its label, the trained table ``run``'s own. Errors name the table."""
    fields = ("run", "method") + COMPARED_FIELDS
    identity = {}
    for label, table in tables.items():
        missing = [c for c in TABLE_COLUMNS + list(fields) if c not in table.columns]
        if missing:
            raise InputError(f"{sources[label]} is not a per-run spectra table (no columns {missing})")
        runs = table[list(fields)].drop_duplicates()
        if len(runs) != 1:
            raise InputError(f"{sources[label]} holds {len(runs)} runs ({sorted(runs['run'])}); a spectra table "
                             "holds one")
        identity[label] = runs.iloc[0].to_dict()
    trained = identity[TRAINED]
    if run is not None and trained["run"] != run.id:
        raise InputError(f"{sources[TRAINED]} holds run {trained['run']}, not {run.id}")
    if trained["method"] != "lora":
        raise InputError(f"{sources[TRAINED]} holds a {trained['method']} run ({trained['run']}), "
                         "not a trained lora run")
    for label, record in identity.items():
        if label == TRAINED:
            continue
        if label not in REFERENCES:
            raise InputError(f"--reference {label}={sources[label]}: the label must be one of {list(REFERENCES)}")
        if record["method"] != label:
            raise InputError(f"{sources[label]} holds a {record['method']} run ({record['run']}), "
                             f"not a {label} run")
        different = [f"{name} {record[name]} (trained: {trained[name]})" for name in COMPARED_FIELDS
                     if str(record[name]) != str(trained[name])]
        if different:
            raise InputError(f"{sources[label]} is not comparable with the trained run {trained['run']}: "
                             + ", ".join(different))


def check_same_treatment(records: dict[str, dict], sources: dict[str, str]) -> None:
    """Refuse tables computed with different centring (e.g. a legacy store against a default one)."""
    centred = {label: record.get("centered") for label, record in records.items()}
    known = {label: value for label, value in centred.items() if value is not None}
    if len(set(known.values())) > 1:
        listed = ", ".join(f"{sources[label]}: {'centred' if value else 'uncentred'}" for label, value in known.items())
        raise InputError(f"the spectra tables were computed differently ({listed}); compare tables of one "
                         "setting (legacy stores are uncentred)")


# -- figures -----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def energy_curves(table: pd.DataFrame, quantity: str) -> tuple[list[np.ndarray], int, int, int]:
    """The cumulative-energy curves (k = 1..K) of a quantity's matrices that are not all zero,
    the number of all-zero matrices, the number of matrices and the largest K among them all."""
    rows = table[(table["quantity"] == quantity) & (table["statistic"] == "cumulative_energy")]
    curves, zero, count = [], 0, 0
    for _, matrix in rows.groupby(["block", "module"], sort=True):
        count += 1
        if matrix["all_zero"].iloc[0]:
            zero += 1
            continue
        curves.append(matrix.sort_values("k")["value"].to_numpy(dtype=np.float64))
    return curves, zero, count, int(rows["k"].max()) if len(rows) else 0


def _display(label: str) -> str:
    return DISPLAY.get(label, label)


def _zero_note(label: str, zero: int, count: int) -> str | None:
    if zero == 0:
        return None
    if zero == count:
        return f"{_display(label)}: identically zero ({count} matrices)"
    return f"{_display(label)}: {zero} of {count} matrices identically zero"


def _k90_values(table: pd.DataFrame, quantity: str) -> np.ndarray:
    """The k90 of a quantity's matrices that are not all zero."""
    k90 = scalar(table, "k90")
    return k90.loc[(k90["quantity"] == quantity) & ~k90["all_zero"].astype(bool), "value"].to_numpy(np.float64)


def _annotation(tables: dict[str, pd.DataFrame], quantity: str) -> str:
    """The paper's text box: each label's mean k90, and each reference's ratio to the trained run."""
    means = {label: (v.mean() if (v := _k90_values(table, quantity)).size else np.nan)
             for label, table in tables.items()}
    lines = [f"{_display(label)}: " + ("all zero" if np.isnan(mean) else f"{mean:.1f}")
             for label, mean in means.items()]
    trained = means.get(TRAINED, np.nan)
    for label, mean in means.items():
        if label != TRAINED and not np.isnan(mean) and not np.isnan(trained):
            lines.append(f"ratio {label}/trained: {mean / trained:.1f}×")
    return "mean k90\n" + "\n".join(lines)


def _figure_legend(figure, labels, extra: list | None = None) -> None:
    """One legend for all panels, below them: a colour per label (and ``extra`` handles)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=COLOURS.get(label, "grey"), linewidth=2.4, label=_display(label))
               for label in labels] + (extra or [])
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


def energy_figure(tables: dict[str, pd.DataFrame], legacy_svd_panel_bug: bool = False, title: str = ""):
    """The paper's F4: 2 × 2 panels of cumulative energy against k (A-activation, A-gradient,
    B-activation, B-gradient); per label (colour) a thin curve per adapted matrix and a thick
    mean curve (truncated to the shortest), k up to 32; guides at 0.5, 0.8, 1.0; an inset box
    plot of the per-matrix k90 and the mean/ratio text. All-zero matrices are a note, not curves.
    ``legacy_svd_panel_bug``: the B-gradient panel re-plots the A-gradient data, as the original did."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(11, 9))
    for axis, (quantity, heading) in zip(axes.ravel(), PANELS):
        shown = quantity
        if quantity == "b_grad" and legacy_svd_panel_bug:
            shown = "a_grad"
            heading = "LoRA B – gradients, legacy_svd_panel_bug:\nthe A-gradient (gU) data re-plotted, as the original"
        longest, notes, boxes = 1, [], []
        for label, table in tables.items():
            colour = COLOURS.get(label, "grey")
            curves, zero, count, size = energy_curves(table, shown)
            longest = max(longest, size)
            note = _zero_note(label, zero, count)
            if note:
                notes.append((note, colour))
            if not curves:
                continue
            for curve in curves:  # E_0 = 0: every curve starts at the origin
                axis.plot(np.arange(curve.size + 1), np.concatenate([[0.0], curve]), color=colour,
                          linewidth=0.6, alpha=0.3)
            shortest = min(curve.size for curve in curves)
            mean = np.mean([curve[:shortest] for curve in curves], axis=0)
            axis.plot(np.arange(shortest + 1), np.concatenate([[0.0], mean]), color=colour, linewidth=2.4)
            boxes.append((label, _k90_values(table, shown)))
        for level in (0.5, 0.8, 1.0):
            axis.axhline(level, color="grey", linestyle="--", linewidth=0.7)
        axis.set_xlim(0, min(MAX_K_SHOWN, longest))
        axis.set_ylim(0, 1.02)  # cumulative energy lies in [0, 1]: nothing is clipped
        axis.set_xlabel(f"k (singular values, largest first; K ≤ {longest}"
                        + (f", first {MAX_K_SHOWN} shown)" if longest > MAX_K_SHOWN else ")"))
        axis.set_ylabel("cumulative energy E_k")
        axis.set_title(heading, fontsize=10)
        for i, (note, colour) in enumerate(notes):
            axis.text(0.02, 0.97 - 0.075 * i, note, transform=axis.transAxes, ha="left", va="top", fontsize=8,
                      color=colour, bbox={"facecolor": "white", "edgecolor": colour, "alpha": 0.9})
        if boxes:
            _k90_inset(axis, boxes)
        axis.text(0.97, 0.5, _annotation(tables, shown), transform=axis.transAxes, ha="right", va="bottom",
                  fontsize=7.5, bbox={"facecolor": "white", "edgecolor": "grey", "alpha": 0.85})
    thin = Line2D([], [], color="grey", linewidth=0.6, alpha=0.6, label="one adapted matrix (thin)")
    thick = Line2D([], [], color="grey", linewidth=2.4, label="mean curve (thick)")
    _figure_legend(figure, tables, [thin, thick])
    figure.suptitle(title or "SVD cumulative energy", fontsize=10)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


def _k90_inset(axis, boxes: list[tuple[str, np.ndarray]]) -> None:
    """A box plot of the per-matrix k90 values per label, inset in the lower right of ``axis``."""
    inset = axis.inset_axes([0.6, 0.1, 0.37, 0.34])
    drawn = [(label, values) for label, values in boxes if values.size]
    parts = inset.boxplot([values for _, values in drawn], widths=0.5, patch_artist=True)
    for patch, (label, _) in zip(parts["boxes"], drawn):
        patch.set_facecolor(COLOURS.get(label, "grey"))
        patch.set_alpha(0.6)
    inset.set_xticks(range(1, len(drawn) + 1), [label.replace("lora_", "") for label, _ in drawn], fontsize=7)
    inset.tick_params(axis="y", labelsize=7)
    inset.set_ylabel("k90 per matrix", fontsize=7)


def top10_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """label, block, module, quantity, value (E(10)), all_zero, K of every matrix."""
    frames = []
    for label, table in tables.items():
        top = scalar(table, "top10_energy")
        sizes = table[table["statistic"] == "sigma"].groupby(["block", "module", "quantity"])["k"].max()
        top["K"] = sizes.reindex(pd.MultiIndex.from_frame(top[["block", "module", "quantity"]])).to_numpy()
        top.insert(0, "label", label)
        frames.append(top)
    return pd.concat(frames, ignore_index=True)


def top10_figure(tables: dict[str, pd.DataFrame], title: str = "", max_modules: int = 3):
    """The paper's F5: per block the top-10 energy E(10) of U, gU, V, gV (same 2 × 2 panels),
    a line per label (colour); per module (line style) when at most ``max_modules`` are adapted,
    else the mean over the modules of a block (said in the panel)."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    data = top10_table(tables)
    modules = sorted(data["module"].unique())
    per_module = len(modules) <= max_modules
    styles = dict(zip(modules, ["-", "--", ":"])) if per_module else {"mean": "-"}
    blocks = sorted(data["block"].unique())
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for axis, (quantity, heading) in zip(axes.ravel(), PANELS):
        part = data[data["quantity"] == quantity]
        notes = []
        for label in tables:
            of_label = part[part["label"] == label]
            note = _zero_note(label, int(of_label["all_zero"].sum()), len(of_label))
            if note:
                notes.append(note)
            shown = of_label[~of_label["all_zero"].astype(bool)]
            if not per_module:
                shown = shown.groupby("block", as_index=False)["value"].mean().assign(module="mean")
            for module, line in shown.groupby("module"):
                line = line.sort_values("block")
                axis.plot(line["block"], line["value"], color=COLOURS.get(label, "grey"), linestyle=styles[module],
                          marker="o", markersize=4)
        values = part.loc[~part["all_zero"].astype(bool), "value"]
        if len(part) and (part["K"] <= TOP_K).all():
            notes.append(f"K ≤ {TOP_K} singular values: E(10) = 1 by definition")
        elif len(values) and (values >= 1 - 1e-9).all():
            notes.append(f"every matrix has at most {TOP_K} non-zero singular values: E(10) = 1")
        if not per_module:
            notes.append(f"mean over the {len(modules)} adapted modules of each block")
        if notes:
            axis.text(0.02, 0.04, "\n".join(notes), transform=axis.transAxes, fontsize=7.5, va="bottom",
                      bbox={"facecolor": "white", "edgecolor": "grey", "alpha": 0.85})
        axis.set_title(heading, fontsize=10)
        axis.set_xlabel("encoder block")
        axis.set_ylabel("top-10 energy E(10)")
        axis.set_xticks(blocks)
        axis.set_ylim(0, 1.02)  # E(10) lies in (0, 1]: nothing is clipped
    extra = [Line2D([], [], color="black", linestyle=style, label=module) for module, style in styles.items()]
    _figure_legend(figure, tables, extra)
    figure.suptitle(title or "top-10 energy per block", fontsize=10)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


# -- entry point -------------------------------------------------------------------------------

def spectra_settings(raw: dict | None) -> dict:
    """The analysis's settings (``center``, ``legacy_svd_panel_bug``), the schema's defaults
    filled in, checked; a bad key raises :class:`InputError` naming it."""
    from workflow_scripts.analyses.settings import SpectraSettings

    return SpectraSettings.from_spec(raw).as_dict()


def read_spectra_table(path: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise InputError(f"{path}: no such spectra table (run the per-run spectra rule first)")
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"{path} is not a readable Parquet table: {error}") from error


def figure_paths(out: str | Path) -> tuple[Path, Path]:
    """Where a comparison's figures go: F4 at OUT.png (and .svg), F5 at OUT.top10.png (and .svg)."""
    out = Path(out)
    return out.with_suffix(".png"), out.with_suffix(".top10.png")


def compare(args, run, settings: dict) -> None:
    from workflow_scripts.analyses.output import save_figure, with_run_columns, write_analysis
    from workflow_scripts.provenance import provenance, read_provenance

    sources = {TRAINED: args.compare, **parse_assignments(args.reference, "--reference", "LABEL=TABLE.parquet", REFERENCES)}
    tables = {label: read_spectra_table(path) for label, path in sources.items()}
    check_comparable(tables, sources, run)
    check_same_treatment({label: read_provenance(path) for label, path in sources.items()}, sources)
    summary = with_run_columns(k90_summary(tables), run)
    record = provenance("spectra_comparison", settings, run=run.id, tables=sources)
    write_analysis(summary, args.out, record)
    energy_png, top10_png = figure_paths(args.out)
    title = f"{run.id}\nvs " + ", ".join(label for label in sources if label != TRAINED)
    save_figure(energy_figure(tables, settings["legacy_svd_panel_bug"],
                              f"SVD cumulative energy of the LoRA activations and gradients\n{title}"), energy_png)
    save_figure(top10_figure(tables, f"top-10 energy per block\n{title}"), top10_png)


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import analysis_parser, publish
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    parser = analysis_parser("workflow_scripts.analyses.spectra", __doc__, acts=False)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--grads", help="per run: the run's grads.zarr (OUT: its spectra table)")
    mode.add_argument("--compare", metavar="TRAINED_TABLE",
                      help="comparison: the trained run's spectra table (OUT: the k90 summary; figures "
                      "OUT.png/.svg and OUT.top10.png/.svg)")
    parser.add_argument("--reference", action="append", default=[], metavar="LABEL=TABLE",
                        help="with --compare: a reference run's spectra table, LABEL lora_random or lora_init "
                        "(repeatable)")
    args = parser.parse_args(argv)
    if args.grads and args.reference:
        parser.error("--reference goes with --compare, not --grads")
    if args.compare and not args.reference:
        parser.error("--compare needs at least one --reference LABEL=TABLE")
    run = Run.from_wildcards(vars(args))
    settings = spectra_settings(resolve_spec(args, lambda config: config["analyses"].get("spectra", {})))
    if args.compare:
        compare(args, run, settings)
    else:
        store = CaptureStore(args.grads, kind="grads", run=run.id)
        table = store_spectra(store, settings["center"])
        centred = effective_center(store, settings["center"])
        record = provenance("spectra", settings, run=run.id, grads=args.grads, centered=centred,
                            legacy=bool(store.attrs.get("legacy", False)))
        publish(table, run, args.out, record,
                lambda table, title: energy_figure({run_label(run.method): table}, settings["legacy_svd_panel_bug"],
                                                   title),
                f"SVD cumulative energy ({'centred' if centred else 'uncentred'} frames)")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
