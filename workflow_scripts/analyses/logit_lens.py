"""Logit lens (paper 3.2): the run's own head read out at every layer of the residual stream.

For each clip and layer l (0 = embedding output ... L), lens logits z_l = classifier(projector(h_l))
with h_l the clip's pooled residual stream, in two forms:

* ``raw``: h_l is the mean of the residual stream itself -- the paper's lens, which skips the final
  encoder LayerNorm, so that even the last layer does not give the model's logits;
* ``normed``: h_l is the mean of the final LayerNorm applied to each frame (the store's
  ``normed``); at the last layer this is exactly what the head reads, so the lens reproduces the
  model's logits there and its KL is 0.

Against the model's own distribution p = softmax(z) and the lens's q_l = softmax(z_l), per layer
and averaged over the clips (analysis-math.md): KL(p‖q_l) (the paper's direction, "final ‖
layer"), KL(q_l‖p), Jensen-Shannon (nats, within [0, ln 2]), agreement 1[argmax q_l = argmax p]
(ties to the lowest index), and the lens's own UAR against the true labels. Log-softmax in
float64. The projector and classifier are affine, so applying them to the pooled means equals
pooling their frame-wise outputs.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from workflow_scripts.cli import resolve_spec, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.metrics import classification_report

log = logging.getLogger(__name__)

LENSES = ("raw", "normed")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p‖q) = Σ p (log p − log q) over the last axis (0·log 0 = 0)."""
    p = np.exp(log_p)
    return np.sum(np.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def js_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in nats: ½KL(p‖m) + ½KL(q‖m), m = (p+q)/2; within [0, ln 2]."""
    log_m = np.logaddexp(log_p, log_q) - np.log(2.0)
    return 0.5 * kl_divergence(log_p, log_m) + 0.5 * kl_divergence(log_q, log_m)


def apply_head(pooled: np.ndarray, projector: tuple, classifier: tuple) -> np.ndarray:
    """``classifier(projector(h))`` for ``pooled [..., d]``; each of ``projector`` and
    ``classifier`` is ``(weight [out, in], bias [out])`` (nn.Linear's layout). Float64."""
    hidden = np.asarray(pooled, dtype=np.float64) @ np.asarray(projector[0], np.float64).T + projector[1]
    return hidden @ np.asarray(classifier[0], np.float64).T + classifier[1]


def lens_statistics(final_logits: np.ndarray, lens_logits: np.ndarray, labels: np.ndarray,
                    classes: list[str]) -> pd.DataFrame:
    """Per layer: the mean over clips of KL(final‖layer), KL(layer‖final), JS and agreement, and
    the lens's UAR. ``final_logits [n, C]``, ``lens_logits [n, layers, C]``."""
    log_p = log_softmax(final_logits)[:, None, :]
    log_q = log_softmax(lens_logits)
    final_choice = np.argmax(final_logits, axis=-1)[:, None]
    lens_choice = np.argmax(lens_logits, axis=-1)
    rows = {
        "kl_final_layer": kl_divergence(log_p, log_q).mean(0),
        "kl_layer_final": kl_divergence(log_q, log_p).mean(0),
        "js": js_divergence(log_p, log_q).mean(0),
        "agreement": (lens_choice == final_choice).mean(0),
        "uar": [classification_report(labels, lens_choice[:, layer], classes)["uar"]
                for layer in range(lens_logits.shape[1])],
    }
    table = pd.DataFrame(rows)
    table.insert(0, "layer", np.arange(lens_logits.shape[1]))
    return table.melt(id_vars="layer", var_name="statistic", value_name="value")


def head_weights(model) -> tuple[tuple, tuple]:
    """The projector's and classifier's (weight, bias) of a run's model, as numpy."""
    from workflow_scripts.models.encoder import classification_model

    hf = classification_model(model)
    return tuple(tuple(t.detach().double().numpy() for t in (m.weight, m.bias)) for m in (hf.projector, hf.classifier))


def store_lens(store, projector: tuple, classifier: tuple, split: str,
               split_key: str = "analyses.logit_lens.split") -> pd.DataFrame:
    """Both lenses over a store's clips of one split: lens, layer, statistic, value, clips.
    ``split_key`` is the config key that chose ``split`` (errors name it)."""
    utterances = store.utterances()
    chosen = (utterances["split"] == split).to_numpy()
    if not chosen.any():
        raise InputError(f"{split_key}: {store.path} has no {split!r} clips")
    final = store.logits()[chosen]
    labels = utterances["label"].to_numpy()[chosen]
    tables = []
    for lens in LENSES:
        lens_logits = apply_head(store.pooled("resid" if lens == "raw" else "normed")[chosen], projector, classifier)
        table = lens_statistics(final, lens_logits, labels, store.classes)
        table.insert(0, "lens", lens)
        tables.append(table)
    result = pd.concat(tables, ignore_index=True)
    result["clips"] = int(chosen.sum())
    return result


def lens_figure(table: pd.DataFrame, title: str):
    """KL(final‖layer) and agreement per layer, raw and normed lens (the paper's F2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, statistic, label in ((axes[0], "kl_final_layer", "KL(final ‖ layer), nats"),
                                   (axes[1], "agreement", "agreement with the final decision")):
        sns.lineplot(table[table["statistic"] == statistic], x="layer", y="value", hue="lens", marker="o", ax=axis)
        axis.set_xlabel("layer (0 = embeddings)")
        axis.set_ylabel(label)
    axes[1].set_ylim(-0.02, 1.02)
    figure.suptitle(title, fontsize=9)
    return figure


def main(argv: list[str] | None = None) -> None:
    from pathlib import Path

    from workflow_scripts.analyses.output import analysis_parser, publish
    from workflow_scripts.capture.run import load_run_model
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    parser = analysis_parser("workflow_scripts.analyses.logit_lens", __doc__)
    parser.add_argument("--checkpoint", required=True, help="results/models/{model}")
    parser.add_argument("--weights", required=True, help="the run's weights/ folder (its head)")
    args = parser.parse_args(argv)
    run = Run.from_wildcards(vars(args))
    settings = resolve_spec(args, lambda config: config["analyses"]["logit_lens"])
    store = CaptureStore(args.acts, kind="acts", run=run.id)
    model = load_run_model(run, Path(args.checkpoint), Path(args.weights), store.classes)
    publish(store_lens(store, *head_weights(model), settings["split"]), run, args.out,
            provenance("logit_lens", settings, run=run.id, acts=args.acts), lens_figure,
            f"logit lens, {settings['split']} clips")
    log.info("wrote %s", args.out)

if __name__ == "__main__":
    run_main(main)
