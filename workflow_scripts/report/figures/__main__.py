"""The entry point: ``python -m workflow_scripts.report.figures --figure NAME ...`` (see the
package's docstring, which is its ``--help``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import workflow_scripts.report.figures as package
from workflow_scripts.cli import entry_parser, parse_assignments, run_main
from workflow_scripts.errors import InputError
from workflow_scripts.report.figures.build import build_figure, read_table
from workflow_scripts.report.figures.reference import read_reference
from workflow_scripts.report.figures.registry import FIGURES

log = logging.getLogger(__name__)


def _option_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word such as linear or v_proj


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import save_figure

    parser = entry_parser("workflow_scripts.report.figures", package.__doc__, settings=False)
    parser.add_argument("--figure", required=True, choices=sorted(FIGURES), help="which figure")
    parser.add_argument("--table", action="append", default=[], metavar="ANALYSIS=PATH",
                        help="an aggregated table (.parquet or .csv), repeatable")
    parser.add_argument("--paired", action="append", default=[], metavar="ANALYSIS=PATH",
                        help="a paired LoRA − frozen table, repeatable")
    parser.add_argument("--reference", help="the paper's values (CSV: figure, panel, series, statistic, layer, value, "
                        "source; the vocabulary is in workflow_scripts.report.figures.reference)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a keyword of the figure's function (JSON value or a bare word), repeatable")
    parser.add_argument("--out", required=True, help="FIG.png; FIG.svg is written beside it")
    args = parser.parse_args(argv)
    if Path(args.out).suffix.lower() != ".png":
        raise InputError(f"--out {args.out}: must end in .png (the SVG goes beside it)")
    tables = {k: read_table(v, f"--table {k}")
              for k, v in parse_assignments(args.table, "--table", "ANALYSIS=PATH").items()}
    paired = {k: read_table(v, f"--paired {k}")
              for k, v in parse_assignments(args.paired, "--paired", "ANALYSIS=PATH").items()}
    reference = read_reference(args.reference) if args.reference else None  # checked: errors name file and row
    options = {k: _option_value(v) for k, v in parse_assignments(args.option, "--option").items()}
    figure = build_figure(args.figure, tables, paired, reference, options)  # fails before anything is written
    save_figure(figure, args.out)
    log.info("wrote %s and %s", args.out, Path(args.out).with_suffix(".svg"))


if __name__ == "__main__":
    run_main(main)
