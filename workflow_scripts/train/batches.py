"""Length-bucketed batches: clips of similar length share a batch, so little is padded.

Each epoch the training clips are shuffled (seeded by the run's seed and the epoch, so a
resumed run draws the same batches), cut into windows of ``BUCKET_BATCHES`` batches, sorted by
length within each window, cut into batches, and the batches shuffled. Evaluation batches are
simply sorted by length.
"""

from __future__ import annotations

import numpy as np

BUCKET_BATCHES = 50  # batches per sorting window: enough to bucket, small enough to stay random


def training_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Batches of indices into ``lengths`` for one epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def evaluation_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of indices sorted by length (order does not matter for evaluation)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
