"""loralens: the importable logic behind the Snakemake workflow.

Rules in ``rules/*.smk`` stay thin: each one calls a ``python -m workflow_scripts...`` entry
point defined here. Every entry point can be run by hand (``--help``).
"""

__version__ = "0.1.0"
