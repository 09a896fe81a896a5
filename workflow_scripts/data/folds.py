"""Cross-validation folds with a validation split carved out of each fold's training data.

Protocols (``datasets.<name>.folds.protocols``):

``loso_session``     leave one recording session out (IEMOCAP: 5 folds). Speaker-independent
                     because no speaker records in two sessions.
``loso_speaker``     leave one true speaker out (IEMOCAP: 10 folds).
``legacy_dialog10``  the original paper's grouping by file-name prefix (``Ses01F``, ...): both
                     actors of a session appear in train *and* test. Kept only to reproduce the
                     original; not speaker-independent.
``holdout``          one fixed split: a seeded fraction of the speakers is the test set.
``predefined``       the test folds the corpus ships (EmoBox fold files, ``source_fold``).

In every protocol the validation split takes whole units (speakers; dialog groups under
``legacy_dialog10``) from the training data, so it is disjoint from test and, by speaker, from
train. Model selection happens on it, never on test (except under legacy ``select_on: test``,
the original's flaw, where the validation split joins training). Genders are interleaved when picking
validation speakers so that a validation set is not all one voice.

Each protocol has its own table (``results/data/{dataset}/folds/{protocol}.parquet``, columns
``protocol, fold, utt_id, split``) built from only the settings it uses, so adding a protocol
rebuilds no other protocol's table and retrains no run.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from workflow_scripts.atomic import write_table
from workflow_scripts.cli import entry_parser, resolve_spec, run_main
from workflow_scripts.config import dataset_spec
from workflow_scripts.errors import InputError, raise_if_any
from workflow_scripts.provenance import provenance

log = logging.getLogger(__name__)

PROTOCOLS = ("loso_session", "loso_speaker", "legacy_dialog10", "holdout", "predefined")
FOLD_COLUMNS = ["protocol", "fold", "utt_id", "split"]

# The manifest column that defines the held-out unit, and the unit carved out for validation.
_TEST_UNIT = {
    "loso_session": "session",
    "loso_speaker": "speaker",
    "legacy_dialog10": "group",
    "holdout": "speaker",
    "predefined": "source_fold",
}
_VALIDATION_UNIT = {"legacy_dialog10": "group"}  # every other protocol: "speaker"


def _require_column(manifest: pd.DataFrame, column: str, protocol: str, key: str) -> None:
    if column not in manifest or manifest[column].isna().any():
        missing = manifest if column not in manifest else manifest[manifest[column].isna()]
        raise_if_any(
            f"{key}.protocols: {protocol!r} needs the manifest column {column!r}, "
            f"which {{n}} utterances lack",
            missing["utt_id"],
            hint=f"Choose a protocol this corpus supports (one of {', '.join(PROTOCOLS)}).",
        )


def _pick_units(units: pd.DataFrame, count: int, rng: np.random.Generator) -> list[str]:
    """Pick ``count`` units at random, alternating between genders when genders are known
    (which gender comes first is random too, so an odd count is not always one gender)."""
    order = units.sample(frac=1.0, random_state=rng).copy()
    gender = order["gender"].fillna("?")
    order["rank"] = order.groupby(gender).cumcount()
    genders = sorted(gender.unique())
    first = dict(zip(genders, rng.permutation(len(genders))))
    order["gender_order"] = gender.map(first)
    return order.sort_values(["rank", "gender_order"], kind="stable")["unit"].head(count).tolist()


def _unit_table(manifest: pd.DataFrame, unit: str) -> pd.DataFrame:
    """One row per unit with its (most common) gender, in sorted unit order."""
    table = manifest.groupby(unit)["gender"].agg(
        lambda g: g.mode().iloc[0] if g.notna().any() else pd.NA
    )
    return table.rename_axis("unit").reset_index().sort_values("unit", kind="stable")


def held_out_units(manifest: pd.DataFrame, protocol: str, spec: dict) -> list[tuple[int, list]]:
    """``(fold number, held-out unit values)`` of each fold. Folds are numbered from 1 in the
    sorted order of the held-out units, except ``predefined``, which keeps the corpus's own."""
    unit = _TEST_UNIT[protocol]
    values = sorted(manifest[unit].dropna().unique().tolist())
    if protocol == "predefined":
        return [(int(value), [value]) for value in values]
    if protocol != "holdout":
        return [(fold, [value]) for fold, value in enumerate(values, start=1)]
    rng = np.random.default_rng(spec.get("seed", 0))
    n_test = max(1, round(spec.get("holdout_test_fraction", 0.2) * len(values)))
    return [(1, _pick_units(_unit_table(manifest, unit), n_test, rng))]


def make_folds(manifest: pd.DataFrame, protocol: str, spec: dict, key: str) -> pd.DataFrame:
    """Assign every utterance of every fold of ``protocol`` to train, val or test."""
    if protocol not in PROTOCOLS:
        raise InputError(f"{key}.protocols: unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    test_unit = _TEST_UNIT[protocol]
    val_unit = _VALIDATION_UNIT.get(protocol, "speaker")
    _require_column(manifest, test_unit, protocol, key)
    _require_column(manifest, val_unit, protocol, key)
    fraction = spec.get("val_fraction", 0.2)
    seed = spec.get("seed", 0)

    frames = []
    for fold, held_out in held_out_units(manifest, protocol, spec):
        is_test = manifest[test_unit].isin(held_out)
        train_pool = manifest.loc[~is_test]
        if protocol != "legacy_dialog10":
            # A speaker who also speaks in the test units stays out of training and validation.
            train_pool = train_pool.loc[~train_pool["speaker"].isin(manifest.loc[is_test, "speaker"])]
        units = _unit_table(train_pool, val_unit)
        if len(units) < 2:
            raise InputError(
                f"{key}: fold {fold} of {protocol!r} leaves {len(units)} {val_unit}(s) for training; "
                "at least 2 are needed to carve out a validation split"
            )
        n_val = min(len(units) - 1, max(1, round(fraction * len(units))))
        val_units = _pick_units(units, n_val, np.random.default_rng([seed, fold]))
        split = pd.Series("excluded", index=manifest.index)
        split[train_pool.index] = "train"
        split[train_pool.index[train_pool[val_unit].isin(val_units)]] = "val"
        split[is_test] = "test"
        frames.append(
            pd.DataFrame({"protocol": protocol, "fold": fold, "utt_id": manifest["utt_id"], "split": split})
        )
    folds = pd.concat(frames, ignore_index=True)
    folds = folds.loc[folds["split"] != "excluded"].reset_index(drop=True)
    folds["fold"] = folds["fold"].astype("int64")
    return folds


def check_class_coverage(folds: pd.DataFrame, manifest: pd.DataFrame, classes: list[str], key: str) -> None:
    """Every class must occur in the train, val and test split of every fold."""
    labelled = folds.merge(manifest[["utt_id", "label"]], on="utt_id")
    present = labelled.groupby(["protocol", "fold", "split"])["label"].agg(set)
    gaps = [
        f"{protocol} fold {fold} {split}: no {label!r}"
        for (protocol, fold, split), labels in present.items()
        for label in classes
        if label not in labels
    ]
    raise_if_any(
        "{n} fold splits lack a class, so a model could not be trained or scored on it",
        gaps,
        hint=f"Change {key}.folds (protocols, val_fraction) or drop the rare class in "
        f"{key}.label_map.",
    )


def fold_settings(dataset_spec: dict, protocol: str, name: str) -> dict:
    """What the fold table of one protocol depends on: the classes, ``val_fraction``, ``seed``
    and, for ``holdout`` only, ``holdout_test_fraction`` (so that adding a protocol, or changing
    another protocol's setting, rebuilds no other table)."""
    spec = dataset_spec.get("folds") or {}
    configured = spec.get("protocols") or ["loso_speaker"]
    if protocol not in configured:
        raise InputError(
            f"datasets.{name}.folds.protocols: {protocol!r} is not configured for this dataset ({configured})"
        )
    settings = {"classes": list(dataset_spec["classes"])}
    settings.update({key: spec[key] for key in ("val_fraction", "seed") if key in spec})
    if protocol == "holdout" and "holdout_test_fraction" in spec:
        settings["holdout_test_fraction"] = spec["holdout_test_fraction"]
    return settings


def build_folds(name: str, manifest: pd.DataFrame, protocol: str, settings: dict) -> pd.DataFrame:
    """One protocol's folds for one dataset (``settings`` from :func:`fold_settings`), checked
    for class coverage."""
    folds = make_folds(manifest, protocol, settings, f"datasets.{name}.folds")
    check_class_coverage(folds, manifest, list(settings["classes"]), f"datasets.{name}")
    summary = folds.groupby("split").size()
    log.info("%s %s folds (utterances summed over %d folds):\n%s", name, protocol, folds["fold"].nunique(),
             summary.to_string())
    return folds


def main(argv: list[str] | None = None) -> None:
    parser = entry_parser("workflow_scripts.data.folds", __doc__, dataset=True)
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS, help="the fold protocol of this table")
    parser.add_argument("--manifest", required=True, help="input manifest.parquet")
    parser.add_argument("--out", required=True, help="output folds/{protocol}.parquet")
    args = parser.parse_args(argv)
    settings = resolve_spec(
        args, lambda config: fold_settings(dataset_spec(config, args.dataset), args.protocol, args.dataset)
    )
    folds = build_folds(args.dataset, pd.read_parquet(args.manifest), args.protocol, settings)
    write_table(args.out, folds, provenance("folds", settings, dataset=args.dataset, protocol=args.protocol))


if __name__ == "__main__":
    run_main(main)
