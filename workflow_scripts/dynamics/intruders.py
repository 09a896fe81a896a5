"""Intruder dimensions of a LoRA run at a checkpoint (Shuttleworth et al., arXiv 2410.21228).

For each adapted module, W = W0 + s·B·A (W0 the base model's d_out × d_in weight, A r × d_in and
B d_out × r the checkpoint's factors, s its scaling). Take the top-k left singular vectors u_i
of W; u_i is an intruder at threshold ε when max_j |⟨u_i, u0_j⟩| < ε over every left singular
vector u0_j of W0: a direction the fine-tuned matrix ranks highly that the base matrix does not
have. Counted per (block, module, ε) for k = ``dynamics.intruders.k`` and each ε of
``dynamics.intruders.epsilons``.

How, without forming W: let m = min(d_out, d_in). Everything goes through the Gram matrix of
W's smaller side, an exact identity for a low-rank update (no approximation):

* d_out ≤ d_in: W Wᵀ = W0W0ᵀ + s(P Bᵀ + B Pᵀ) + s²·B(AAᵀ)Bᵀ with P = W0Aᵀ (d_out × r), added as
  L·M·Lᵀ with L = [P, B] and M = [[0, sI], [sI, s²AAᵀ]] (2r × 2r). Its eigenvectors are W's
  left singular vectors and its eigenvalues σ²; W0's left singular vectors U0 come from W0W0ᵀ
  the same way, and the cosines are U_kᵀU0.
* d_out > d_in: WᵀW = W0ᵀW0 + s(Q A + AᵀQᵀ) + s²·Aᵀ(BᵀB)A with Q = W0ᵀB (d_in × r). Its top-k
  eigenvectors are W's right singular vectors v_i, and u_i = W v_i / σ_i = (W0 v_i + s·B(A v_i))/σ_i
  (d_out × k). W0's left singular vectors u0_j = W0 v0_j / σ0_j are never formed either:
  ⟨u_i, u0_j⟩ = v0_jᵀ(W0ᵀu_i) / σ0_j.

So the job holds W0 (read one tensor at a time from the base model's safetensors, as float64)
and, besides thin d × r, d × k factors, the m × m Gram and eigenvector matrices — never W, ΔW or
a second d_out × m matrix (for a square module m × m is W0's size: that is the bound).

Accuracy in float64: ``eigh`` is backward stable, so the vectors are the exact singular vectors
of a W whose Gram differs by about m·eps·σ_1² (eps = 2.2e-16): a top-k vector moves by at most
that over its gap in σ², negligible unless two of the top-k singular values agree to ~1e-7
relative, when the vectors themselves are ill-defined (a direct SVD would rotate them too).
Squaring the spectrum does blur W0's directions whose σ0_j is below σ0_1·√(m·eps) (≈ 5e-7
relative for m = 1280): they are W0's numerical null space, which has no meaningful singular
basis; they are left out of the maximum (with d_out > d_in the division by σ0_j needs it too). A
module whose W has fewer than k such directions is refused (k is too large for it).

The untrained checkpoint (B = 0) has W = W0 and so no intruders. A ``full`` run's checkpoint
holds whole matrices, not factors: it is refused with an InputError.

Table (dynamics_intruders): the run's columns, checkpoint, step, epoch, block, module, epsilon,
k, value (the count, float); one row per (block, module, ε). No figure.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.cli import resolve_spec, run_main
from workflow_scripts.errors import InputError

log = logging.getLogger(__name__)

EPS = np.finfo(np.float64).eps
SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
# Where a module of encoder block i lives in a Hugging Face Whisper checkpoint: under ``model.``
# in a WhisperForConditionalGeneration folder (what models/build.py and convert.py write), at
# the top level in a WhisperForAudioClassification one.
MODULE_PATHS = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                "out_proj": "self_attn.out_proj", "fc1": "fc1", "fc2": "fc2"}
KEY_PREFIXES = ("model.encoder.layers", "encoder.layers")


# ---------------------------------------------------------------------------------------------
# The base model's weights


class BaseWeights:
    """The encoder weights W0 of a base model folder (``results/models/{model}``), read one
    tensor at a time with safetensors.numpy (no torch), as float64."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        single, index = self.folder / SINGLE_FILE, self.folder / SHARD_INDEX
        if single.is_file():
            self.files = [single]
        elif index.is_file():  # a large checkpoint saved in shards
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise InputError(f"{index}: not a readable safetensors index ({error})") from error
            self.files = [self.folder / name for name in sorted(set(weight_map.values()))]
        else:
            raise InputError(f"{self.folder}: no {SINGLE_FILE} or {SHARD_INDEX} (not a base model folder "
                             "written by the models step?)")
        self._where: dict[str, Path] = {}
        from safetensors import SafetensorError, safe_open

        for path in self.files:
            try:
                with safe_open(str(path), framework="numpy") as handle:
                    self._where.update(dict.fromkeys(handle.keys(), path))
            except (OSError, SafetensorError) as error:
                raise InputError(f"{path}: not a readable safetensors file ({error})") from error

    def key(self, block: int, module: str) -> str:
        """The safetensors name of block ``block``'s ``module`` weight."""
        candidates = [f"{prefix}.{block}.{MODULE_PATHS[module]}.weight" for prefix in KEY_PREFIXES]
        for name in candidates:
            if name in self._where:
                return name
        raise InputError(f"{self.folder}: has no {' or '.join(candidates)} (the run adapts block {block} "
                         f"{module}: a checkpoint of another model?)")

    def weight(self, block: int, module: str) -> np.ndarray:
        """W0 of block ``block``'s ``module`` (d_out × d_in, float64)."""
        from safetensors import safe_open

        name = self.key(block, module)
        with safe_open(str(self._where[name]), framework="numpy") as handle:
            return np.asarray(handle.get_tensor(name), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Singular vectors through the Gram of the smaller side


def _small_gram(w0: np.ndarray, a: np.ndarray | None, b: np.ndarray | None, scaling: float) -> np.ndarray:
    """W Wᵀ (d_out ≤ d_in) or WᵀW (d_out > d_in) of W = W0 + scaling·B·A, without W (module
    docstring); with ``b`` None, that of W0."""
    left = w0.shape[0] <= w0.shape[1]
    gram = w0 @ w0.T if left else w0.T @ w0
    if b is None or scaling == 0:
        return gram
    s = float(scaling)
    rank = a.shape[0]
    # L·M·Lᵀ = s(X Yᵀ + Y Xᵀ) + s²·Y Z Yᵀ with (X, Y, Z) = (W0Aᵀ, B, AAᵀ) on the left,
    # (W0ᵀB, Aᵀ, BᵀB) on the right.
    x, y, z = (w0 @ a.T, b, a @ a.T) if left else (w0.T @ b, a.T, b.T @ b)
    outer = np.hstack([x, y])
    middle = np.block([[np.zeros((rank, rank)), s * np.eye(rank)], [s * np.eye(rank), s * s * z]])
    gram += outer @ (middle @ outer.T)
    return gram


def _check_operands(w0, a, b) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    w0 = np.asarray(w0, dtype=np.float64)
    if w0.ndim != 2:
        raise ValueError(f"W0 is a d_out × d_in matrix, got shape {w0.shape}")
    if b is None:
        return w0, None, None
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or b.shape[0] != w0.shape[0] \
            or a.shape[1] != w0.shape[1]:
        raise ValueError(f"A {a.shape} and B {b.shape} are not r × d_in and d_out × r for W0 {w0.shape}")
    return w0, a, b


def _kept(eigenvalues: np.ndarray, m: int) -> np.ndarray:
    """Which Gram eigenvalues belong to singular values above the Gram's rounding,
    σ_j > σ_1·√(m·eps) (module docstring)."""
    top = float(eigenvalues.max()) if eigenvalues.size else 0.0
    return eigenvalues > top * m * EPS if top > 0 else np.zeros(eigenvalues.shape, dtype=bool)


def top_left_singular_vectors(w0, a, b, scaling: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest singular values of W = W0 + scaling·B·A (decreasing) and their left singular
    vectors (d_out × k, orthonormal), without forming W; ``b`` None for W = W0. ValueError when W
    has fewer than k singular values above the Gram's rounding."""
    w0, a, b = _check_operands(w0, a, b)
    d_out, d_in = w0.shape
    m = min(d_out, d_in)
    if not 1 <= k <= m:
        raise ValueError(f"k = {k}: a {d_out} × {d_in} matrix has {m} singular vectors")
    eigenvalues, vectors = np.linalg.eigh(_small_gram(w0, a, b, scaling))
    kept = _kept(eigenvalues, m)
    if kept.sum() < k:
        raise ValueError(f"k = {k}: W ({d_out} × {d_in}) has only {int(kept.sum())} singular values above "
                         "rounding")
    order = np.argsort(eigenvalues)[::-1][:k]  # eigh's order is ascending
    sigma, top = np.sqrt(eigenvalues[order]), vectors[:, order]
    if d_out <= d_in:
        return sigma, top
    # W's right singular vectors v_i: u_i = W v_i / σ_i = (W0 v_i + s·B(A v_i)) / σ_i.
    product = w0 @ top
    if b is not None:
        product += float(scaling) * (b @ (a @ top))
    return sigma, product / sigma


def base_cosines(w0, left_vectors: np.ndarray) -> np.ndarray:
    """|⟨u_i, u0_j⟩| for each column u_i of ``left_vectors`` (d_out × k) and each left singular
    vector u0_j of W0 with a singular value above the Gram's rounding: k × n (module docstring)."""
    w0 = np.asarray(w0, dtype=np.float64)
    u = np.asarray(left_vectors, dtype=np.float64)
    d_out, d_in = w0.shape
    eigenvalues, vectors = np.linalg.eigh(_small_gram(w0, None, None, 0.0))
    kept = _kept(eigenvalues, min(d_out, d_in))
    if d_out <= d_in:
        return np.abs(u.T @ vectors[:, kept])
    sigma0 = np.sqrt(eigenvalues[kept])
    # ⟨u_i, u0_j⟩ = v0_jᵀ(W0ᵀu_i) / σ0_j, without the d_out × d_in matrix U0.
    return np.abs((vectors[:, kept].T @ (w0.T @ u)) / sigma0[:, None]).T


def max_base_cosines(w0, a, b, scaling: float, k: int) -> np.ndarray:
    """For each of the top-k left singular vectors u_i of W = W0 + scaling·B·A, its largest
    |cosine| with a left singular vector of W0 (length k, in W's singular-value order)."""
    _, u = top_left_singular_vectors(w0, a, b, scaling, k)
    return base_cosines(w0, u).max(axis=1)


def intruder_counts(max_cosines: np.ndarray, epsilons) -> dict[float, int]:
    """How many of ``max_cosines`` lie below each ε: the intruders at that threshold."""
    values = np.asarray(max_cosines, dtype=np.float64)
    return {float(eps): int(np.sum(values < eps)) for eps in epsilons}


# ---------------------------------------------------------------------------------------------
# A run's checkpoint


def intruders_table(factors, scaling: float, base: BaseWeights, settings,
                    source: str = "the checkpoint") -> pd.DataFrame:
    """Tidy: block, module, epsilon, k, value (the count); one row per adapted module and ε."""
    rows = []
    for (block, module), (a, b) in factors.items():
        w0 = base.weight(block, module)
        if w0.shape != (b.shape[0], a.shape[1]):
            raise InputError(f"{source}: block {block} {module} has ΔW {b.shape[0]} × {a.shape[1]} but "
                             f"{base.folder} has W0 {w0.shape[0]} × {w0.shape[1]} (another base model?)")
        try:
            cosines = max_base_cosines(w0, a, b, scaling, settings.k)
        except ValueError as error:
            raise InputError(f"dynamics.intruders.k = {settings.k} is too large for block {block} {module} "
                             f"of {source}: {error}") from error
        del w0
        rows += [(block, module, eps, settings.k, float(count))
                 for eps, count in intruder_counts(cosines, settings.epsilons).items()]
    table = pd.DataFrame(rows, columns=["block", "module", "epsilon", "k", "value"])
    return table.astype({"block": np.int64, "epsilon": np.float64, "k": np.int64, "value": np.float64})


def run_intruders_table(run, run_dir: str | Path, checkpoint: str, base_folder: str | Path,
                        settings) -> tuple[pd.DataFrame, dict]:
    """The dynamics_intruders table of ``run`` at ``checkpoint`` (without the run's columns) and
    the checkpoint's metadata."""
    from workflow_scripts.dynamics.weights import CHECKPOINT_COLUMNS, checkpoint_columns, checkpoint_factors

    factors, scaling, metadata = checkpoint_factors(run, run_dir, checkpoint)
    table = intruders_table(factors, scaling, BaseWeights(base_folder), settings, f"{run.id} {checkpoint}")
    for column, value in checkpoint_columns(metadata).items():
        table.insert(list(CHECKPOINT_COLUMNS).index(column), column, value)
    return table, metadata


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.analyses.output import analysis_parser, with_run_columns, write_analysis
    from workflow_scripts.dynamics.settings import IntruderSettings
    from workflow_scripts.dynamics.weights import add_checkpoint_arguments
    from workflow_scripts.provenance import provenance
    from workflow_scripts.runs import Run

    parser = analysis_parser("workflow_scripts.dynamics.intruders", __doc__, acts=False)
    add_checkpoint_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="the base model folder, results/models/{model}")
    args = parser.parse_args(argv)
    run = Run.from_wildcards(vars(args))
    settings = IntruderSettings.from_spec(resolve_spec(args, lambda config: config["dynamics"]["intruders"]))
    table, metadata = run_intruders_table(run, args.run_dir, args.checkpoint_id, args.checkpoint, settings)
    record = provenance("dynamics_intruders", settings.as_dict(), run=run.id, run_dir=str(args.run_dir),
                        checkpoint=args.checkpoint_id, base=str(args.checkpoint), scaling=metadata["scaling"])
    write_analysis(with_run_columns(table, run), args.out, record)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
