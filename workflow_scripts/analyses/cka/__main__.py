"""The entry point, ``python -m workflow_scripts.analyses.cka`` (its modes and arguments: the
package docstring, which ``--help`` prints)."""

from __future__ import annotations

import logging

import workflow_scripts.analyses.cka as package
from workflow_scripts.analyses.cka.figures import layer_figure, pairings_figure
from workflow_scripts.analyses.cka.pairings import (
    PAIRINGS,
    REFERENCES,
    TRAINED,
    check_layer_pairing,
    gradient_pairings,
    layer_cka,
)
from workflow_scripts.analyses.cka.settings import cka_settings
from workflow_scripts.cli import parse_assignments, resolve_spec, run_main
from workflow_scripts.errors import InputError

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import analysis_parser, publish
    from workflow_scripts.capture.store import CaptureStore
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    parser = analysis_parser("workflow_scripts.analyses.cka", package.__doc__, acts=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--grads", help="the trained LoRA run's grads.zarr: the gradient pairings")
    source.add_argument("--acts", help="the run's acts.zarr (A): layer x layer CKA of its pooled residuals")
    parser.add_argument("--reference", action="append", metavar="NAME=PATH",
                        help="with --grads: an untrained reference's grads.zarr on the same fold, NAME "
                             f"one of {', '.join(REFERENCES)} (repeat for both)")
    parser.add_argument("--other-acts", help="with --acts: the other run's acts.zarr (B)")
    parser.add_argument("--pairing", choices=PAIRINGS,
                        help="with --acts: what B is, the frozen run (lora_vs_frozen) or another seed "
                             "(seed_vs_seed)")
    args = parser.parse_args(argv)
    run = Run.from_wildcards(vars(args))
    settings = cka_settings(resolve_spec(args, lambda config: config["analyses"].get("cka", {})))
    if args.grads:
        if args.other_acts or args.pairing:
            raise InputError("--other-acts and --pairing go with --acts, not --grads")
        references = parse_assignments(args.reference, "--reference", "NAME=PATH", REFERENCES)
        stores = {TRAINED: CaptureStore(args.grads, kind="grads", run=run.id)}
        stores.update({name: CaptureStore(path, kind="grads") for name, path in references.items()})
        record = provenance("cka", settings, run=run.id, grads=args.grads, references=references)
        publish(gradient_pairings(stores, settings), run, args.out, record, pairings_figure,
                "CKA of LoRA A/B outputs and gradients, grads clips")
    else:
        if args.reference:
            raise InputError("--reference goes with --grads, not --acts")
        if not (args.other_acts and args.pairing):
            raise InputError("--acts needs --other-acts and --pairing")
        store_a = CaptureStore(args.acts, kind="acts", run=run.id)
        store_b = CaptureStore(args.other_acts, kind="acts")
        check_layer_pairing(store_a, store_b, args.pairing)
        table = layer_cka(store_a, store_b, settings["split"], settings)
        table.insert(0, "pairing", args.pairing)
        record = provenance("cka", settings, run=run.id, acts=args.acts, other_acts=args.other_acts,
                            pairing=args.pairing)
        publish(table, run, args.out, record, layer_figure,
                f"layer x layer CKA of pooled residuals, {args.pairing} ({store_b.attrs.get('run')}), "
                f"{settings['split']} clips")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
