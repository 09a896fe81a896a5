"""The report's figures: the paper's F1-F6 and the new analyses, drawn from the aggregated tables.

Every figure reads the tables that ``workflow_scripts.report.aggregate`` writes: per analysis, one
row per configuration (dataset, protocol, model, method, targets, rank) and the analysis's keys,
with ``runs``, ``seeds``, ``folds``, ``mean``, ``std``, ``ci_low``, ``ci_high`` and ``interval``
(what the band is and what it is over: "t95 over folds", "range over seeds (1 fold)", "none", ...:
workflow_scripts.report.statistics); and, for contribution, logit_lens, probes and erasure, the paired
LoRA − frozen tables (``pairs``, ``mean_difference``, ``ci_low``, ``ci_high``, ``t_p_holm`` ...).
Means are lines or bars; the intervals (or ranges) are bands or error bars, drawn only where the table
has one (one run gives none). Each title says the configurations and how many runs the means are
over, from the tables' own ``runs``/``seeds``/``folds``/``interval`` columns. No y-limit is
fixed: every axis scales to what it shows.

Figures (:data:`.registry.FIGURES`, name -> function, the tables it needs, its caption):

* ``contribution`` (F1): relative norm and cosine with the residual of attention, MLP and both,
  per block, LoRA and frozen side by side; below each, LoRA − frozen from the paired table with
  a star on the blocks whose Holm-corrected paired t p < 0.05.
* ``logit_lens`` (F2): KL(final ‖ layer) and agreement with the final decision per layer, LoRA
  and frozen; raw and normed lens as columns.
* ``embedding_quality`` (F3): silhouette and kNN scores of the LoRA A outputs per block, a line
  per rank (the t-SNE grids themselves are the embeddings rule's PNGs).
* ``energy`` (F4): k90 of U, gU, V, gV over the adapted matrices as box plots, trained vs
  untrained (lora_random) and PEFT init (lora_init), with the paper's "trained / untrained /
  ratio" in each title.
* ``top10`` (F5): top-10 energy E(10) per block, trained vs untrained.
* ``cka`` (F6): the paper's four CKA pairings per block, forward (top) and backward (bottom), with
  the permutation null (mean..p95) shaded.
* new: ``probes`` (linear-probe UAR per layer and LoRA − frozen), ``lens_comparison`` (normed vs
  raw lens), ``erasure`` (block erasure and LoRA-delta ablation), ``weight_spectra`` (singular
  values of ΔW), ``subspaces`` (principal-angle similarity with chance) and ``cka_heatmap``
  (layer × layer CKA, LoRA vs frozen and seed vs seed, with the permutation floor).
* training dynamics: ``dynamics_heatmaps`` (layer × checkpoint: CKA to the base, probe UAR,
  normed lens agreement, ΔW stable rank) and ``dynamics_intruders`` (intruder dimensions per
  checkpoint, a line per ε).

The paper's values, where known, can be overlaid (``reference``: config/paper_reference.csv, columns
figure (F1..F6, T1), panel, series, statistic, layer, value, source; its vocabulary, which panel,
series and statistic each figure accepts, and its reader and checks are in :mod:`.reference`;
``layer`` is the paper's x, i.e. its layer index, 0-based). Values at one layer are drawn as black
markers labelled "paper (read from its figure)"; F4's mean k90 as points beside the boxes and its
ratios as text, F5's ranges as hatched bands.

Entry point::

    python -m workflow_scripts.report.figures --figure NAME --table ANALYSIS=PATH ... \\
        [--paired ANALYSIS=PATH ...] [--reference PATH.csv] [--option NAME=VALUE ...] --out FIG.png

writes FIG.png and FIG.svg (each atomically, ``analyses.output.save_figure``). Nothing is written
when a table lacks what the figure needs: the error names the figure and the missing column or
statistic.

Modules: ``registry`` (:data:`FIGURES` and ``FigureSpec``; light: it names each function as
``"module:name"`` and imports it only to draw), ``build`` (``read_table``, ``build_figure``),
``__main__`` (the entry point ``main``), ``reference`` (the paper's values: vocabulary, reader,
checks; light); the families ``readouts`` (F1, F2, lens comparison,
probes, erasure), ``embeddings`` (F3), ``spectra`` (F4, F5, weight spectra), ``cka`` (F6 and the
layer heatmaps), ``subspaces`` and ``dynamics`` (the training dynamics); their helpers ``tables`` (checks, configurations, titles) and
``style`` (bands, bars, stars, legends, axes, the paper's values). Colours, display labels,
symbols, panels and the module order shared with the analyses' own figures are in
``workflow_scripts.figure_style``.
"""
