"""Centered kernel alignment (CKA, paper 3.7): how similar two sets of representations of the
same inputs are, for LoRA's A and B outputs and gradients and for the residual stream.

Definitions (float64 throughout; ../shared/notes/analysis-math.md):

* Gram matrices over the n samples: linear K = XXᵀ; RBF K_ij = exp(−d²_ij / (2σ²)) with
  σ² = multiple² · median of the squared pairwise distances, the median taken over all n² entries
  INCLUDING the zero diagonal (Kornblith et al.'s convention); if that median is 0 (over half the
  pairs coincide) the median of the non-zero distances is used, and if every distance is 0 the
  kernel is constant (all ones) and CKA is reported as NaN, not divided by zero.
* Biased HSIC = tr(KHLH)/(n−1)², H = I − 11ᵀ/n. Debiased HSIC (Song et al. 2012) by U-centering
  (Székely & Rizzo 2014): ⟨K̃, L̃⟩/(n(n−3)), n ≥ 4. CKA = HSIC(K, L)/sqrt(HSIC(K, K)·HSIC(L, L)).
  A side without variance (all rows equal, e.g. an all-zero array) gives NaN; the tables say why
  in ``note`` ("all zero" or "constant").
* Frames as samples (n ≫ p) use the feature-space form of linear CKA and never form an n × n
  matrix. With X shifted by any fixed vector (the column means of a first pass), the moments
  XᵀY, XᵀX, YᵀY, the column sums s, the row norms a_i = ‖x_i‖², b_i = ‖y_i‖² and their sums
  Σa_i, Σa_i b_i, Σ b_i x_i, Σ a_i y_i (and the same for X, X and Y, Y) are accumulated batch by
  batch. Biased: ‖XᵀY − s_x s_yᵀ/n‖²_F/(n−1)². Debiased, with K' = K − diag(a), L' = L − diag(b):
  tr(K'L') = ‖XᵀY‖²_F − Σ a_i b_i; 1ᵀK'1 = ‖s_x‖² − Σ a_i; 1ᵀK'L'1 = s_xᵀXᵀY s_y − s_x·Σ b_i x_i
  − s_y·Σ a_i y_i + Σ a_i b_i; HSIC₁ = [tr(K'L') + 1ᵀK'1·1ᵀL'1/((n−1)(n−2)) − 2·1ᵀK'L'1/(n−2)]
  / (n(n−3)). Both are invariant to the shift (debiased HSIC ignores additive row and column
  terms of K), so the first pass's means only serve accuracy.
* Permutation null: the rows of Y are shuffled (``numpy.random.default_rng(seed)``, ``count``
  permutations, the same ones for every value of a level) and the statistic recomputed; the null's
  mean and 95th percentile are reported beside each value. At frame level Y of one (block,
  module) is held in memory and X streamed in row blocks; XᵀY_π is accumulated per permutation,
  with both sides first rotated into the basis of their centred rows' numerical column space
  (directions holding at most ``RANK_RTOL`` = 1e-12 of the energy, i.e. rounding, dropped): linear
  CKA is invariant to the rotation, and a B output V = s·UBᵀ of rank r costs r columns, not d_out.
* ``legacy``: the original's function, exactly: per-sample flattened inputs in their own dtype
  (float32), linear K = XXᵀ or ``sklearn.metrics.pairwise.rbf_kernel(X)`` (gamma = 1/D), centred
  with H, HSIC = Σ Kc∘Lc, CKA = HSIC/(‖Kc‖_F‖Lc‖_F), 0.0 when a norm is 0.

Two analyses read the capture stores:

``gradient_pairings`` (``--grads``): a trained LoRA run's grads.zarr and its untrained references
on the same fold (``lora_random``, ``lora_init``). For every adapted (block, module), with
U = a_out, V = b_out, gU = a_grad, gV = b_grad: within each model U~V and gU~gV, across models
trained~reference for each of U, V, gU, gV; the paper's four pairings are tagged
(``paper_series``, ``paper_kernel``). Levels: ``frame`` (frames as samples, linear, feature space,
streamed), ``utterance`` (each clip's mean frame, Gram form, linear and RBF at each multiple) and,
for a store captured under ``legacy``, ``flattened`` (the original's function on [clips, 1500·d],
estimator ``legacy``). lora_init's B outputs and A gradients are identically zero: NaN, note
"all zero".

``layer_cka`` (``--acts``/``--other-acts``): the pooled residual stream (layers 0..L) of two runs
on the same clips of a split, every layer of one against every layer of the other, for LoRA vs
frozen and for two seeds of one configuration (the noise floor).

Tables (long): one row per value with ``value``, ``null_mean``, ``null_p95``, ``permutations``,
``n`` and ``note``; figures: CKA per block for each pairing with the null band (mean..p95)
shaded, and layer × layer heatmaps with the null's p95 in each title.

Entry point, two modes (plus the run's wildcards ``--dataset`` ... ``--fold`` and ``--spec``/``--config``)::

    --grads TRAINED/grads.zarr [--reference lora_random=PATH] [--reference lora_init=PATH] --out T.parquet
    --acts A/acts.zarr --other-acts B/acts.zarr --pairing lora_vs_frozen|seed_vs_seed --out T.parquet

The frame level's cost is dominated by the permutation null: one product [frames, p]ᵀ[frames, q]
per permutation and pairing, p and q the sides' numerical ranks.

Layout of the package (callers import a name from the module that owns it; ``__init__`` imports
nothing)::

    estimators.py  the Gram form: linear/RBF Gram matrices, centring, biased/debiased HSIC, cka,
                   the layer x layer matrix (layer_matrices, CKAMatrix), permutations, null_summary
    moments.py     the feature-space form, streamed: FrameMoments, CrossMoments,
                   StreamingLinearCKA, frame_cka_matrix; BLOCK_BYTES and rows_per_block
    legacy.py      the original's function: legacy_gram, legacy_center, legacy_cka
    settings.py    cka_settings (the typed settings, analyses/settings.py), kernel_views, LEVELS, SPLITS
    stores.py      reading the stores: Side, read_side, the passes over a side's rows (means,
                   moments, the null's numerical basis), split_residuals; QUANTITIES
    pairings.py    gradient_pairings and layer_cka, their checks, PAPER_SERIES and the columns
    figures.py     the per-run figures (matplotlib imported inside them)
    __main__.py    the entry point above
"""
