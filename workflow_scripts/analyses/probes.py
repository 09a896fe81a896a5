"""Linear probes: how linearly decodable the emotion class is from each layer of the residual
stream, for trained, frozen and untrained runs alike.

For each layer l (0 = embedding output ... L), a multinomial logistic regression on the clips'
pooled residuals h_l: standardize each feature (mean and variance of the training clips), then
minimise mean cross-entropy + ‖W‖²/(2·C·n) (scikit-learn's ``LogisticRegression``, L2, lbfgs,
float64). The splits are the run's own fold: the probe is fitted on ``train`` once per C of the
fixed grid, C is chosen by UAR on ``val`` (ties to the smaller C, the stronger regularisation),
and the probe fitted with that C -- not refitted on train + val -- is scored on ``test`` by UAR,
WAR and macro-F1 (``metrics.classification_report``). Chance UAR is 1/classes.

Beside the probes, the run's own head is scored on the same test clips from the stored logits
(argmax, ties to the lowest class index). For a frozen run the last-layer probe and the head
read the same representation, so the two rows compare a probe with the trained head.

Table: readout (``probe``/``head``), layer, statistic, value, clips (test clips); a probe has
uar, war, macro_f1, c (the chosen C) and val_uar per layer, the head uar, war and macro_f1 at
layer L. Figure: probe test UAR per layer, the head's and chance as horizontal lines.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from workflow_scripts.cli import resolve_spec, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.metrics import classification_report

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SCORES = ("uar", "war", "macro_f1")


def check_split(labels: np.ndarray, split: str, source: str) -> None:
    """A probe is fitted, chosen and scored on at least two classes: refuse a split without."""
    present = np.unique(labels)
    need = "a probe needs at least two classes there"
    if present.size == 0:
        raise InputError(f"{source}: the {split!r} split has no clips; {need}")
    if present.size < 2:
        raise InputError(f"{source}: the {split!r} split has clips of one class only "
                         f"(label {int(present[0])}); {need}")


def check_settings(settings: dict) -> None:
    grid = settings["c_grid"]
    if not grid or any(isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0 for c in grid):
        raise InputError(f"analyses.probes.c_grid: {grid!r} is not a non-empty list of positive numbers")


def scores(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    report = classification_report(labels, predictions, classes)
    return {name: report[name] for name in SCORES}


def fit_probe(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int):
    """A standardize + logistic-regression pipeline fitted on ``x [n, d]``, ``y [n]`` (float64)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(np.asarray(x, dtype=np.float64), y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        # Not fatal (the weights are still a probe), but the log should say so.
        log.warning("probe with C=%g did not converge in %d iterations", c, max_iter)
    return probe


def fit_and_score_probe(train_x, train_y, val_x, val_y, test_x, test_y, classes: list[str],
                        c_grid: list[float], max_iter: int, seed: int) -> dict:
    """Fit on train for each C, choose C by validation UAR (ties: the smaller C), score that
    probe on test: ``{"uar", "war", "macro_f1", "c", "val_uar"}``."""
    best = None
    for c in sorted(c_grid):  # ascending, so a strict ">" keeps the smaller C on ties
        probe = fit_probe(train_x, train_y, c, max_iter, seed)
        val_uar = scores(val_y, probe.predict(np.asarray(val_x, dtype=np.float64)), classes)["uar"]
        if best is None or val_uar > best[1]:
            best = (c, val_uar, probe)
    c, val_uar, probe = best
    return {**scores(test_y, probe.predict(np.asarray(test_x, dtype=np.float64)), classes),
            "c": float(c), "val_uar": val_uar}


def probe_table(pooled: np.ndarray, labels: np.ndarray, splits: np.ndarray, classes: list[str],
                settings: dict, source: str = "the pooled residuals") -> pd.DataFrame:
    """One probe per layer of ``pooled [clips, layers, hidden]``: readout, layer, statistic, value,
    clips. ``splits [clips]`` holds 'train'/'val'/'test'; ``source`` names the input in errors."""
    labels, splits = np.asarray(labels), np.asarray(splits)
    chosen = {split: splits == split for split in SPLITS}
    for split in SPLITS:
        check_split(labels[chosen[split]], split, source)
    rows = []
    for layer in range(pooled.shape[1]):
        data = [a for split in SPLITS for a in (pooled[chosen[split], layer], labels[chosen[split]])]
        result = fit_and_score_probe(*data, classes, settings["c_grid"], settings["max_iter"],
                                     settings["seed"])
        rows += [{"readout": "probe", "layer": layer, "statistic": k, "value": v} for k, v in result.items()]
    table = pd.DataFrame(rows)
    table["clips"] = int(chosen["test"].sum())
    return table


def head_table(logits: np.ndarray, labels: np.ndarray, splits: np.ndarray, classes: list[str],
               layer: int) -> pd.DataFrame:
    """The run's own head on the test clips, from its stored logits, as rows at ``layer`` (L)."""
    test = np.asarray(splits) == "test"
    result = scores(np.asarray(labels)[test], np.argmax(logits[test], axis=-1), classes)
    return pd.DataFrame({"readout": "head", "layer": layer, "statistic": list(result),
                         "value": list(result.values()), "clips": int(test.sum())})


def store_probes(store, settings: dict) -> pd.DataFrame:
    """Probes at every layer of an acts store's pooled residuals, and its head's rows."""
    check_settings(settings)
    utterances = store.utterances()
    labels, splits = utterances["label"].to_numpy(), utterances["split"].to_numpy()
    probes = probe_table(store.pooled("resid"), labels, splits, store.classes, settings,
                         source=str(store.path))
    head = head_table(store.logits(), labels, splits, store.classes, store.n_layers)
    return pd.concat([probes, head], ignore_index=True)


def probe_figure(table: pd.DataFrame, n_classes: int, title: str):
    """Probe test UAR per layer; the head's test UAR (dashed) and chance (dotted) for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    probes = table[(table["readout"] == "probe") & (table["statistic"] == "uar")]
    sns.lineplot(probes, x="layer", y="value", marker="o", label="linear probe", ax=axis)
    head = table[(table["readout"] == "head") & (table["statistic"] == "uar")]["value"]
    if len(head):
        axis.axhline(head.iloc[0], color="black", linestyle="--", linewidth=1, label="the run's head")
    axis.axhline(1 / n_classes, color="grey", linestyle=":", linewidth=1, label="chance")
    axis.set_xlabel("layer (0 = embeddings)")
    axis.set_ylabel("test UAR")
    axis.set_xticks(sorted(probes["layer"].unique()))
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: UARs near 1 stay visible
    figure.suptitle(title, fontsize=9)
    return figure


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import analysis_parser, publish
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    args = analysis_parser("workflow_scripts.analyses.probes", __doc__).parse_args(argv)
    run = Run.from_wildcards(vars(args))
    settings = resolve_spec(args, lambda config: config["analyses"]["probes"])
    store = CaptureStore(args.acts, kind="acts", run=run.id)
    publish(store_probes(store, settings), run, args.out, provenance("probes", settings, run=run.id, acts=args.acts),
            lambda table, title: probe_figure(table, len(store.classes), title), "linear probes, test clips")
    log.info("wrote %s", args.out)

if __name__ == "__main__":
    run_main(main)
