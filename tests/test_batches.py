import numpy as np

from workflow_scripts.train.batches import evaluation_batches, training_batches


def test_every_clip_once_per_epoch_and_deterministic():
    lengths = np.random.default_rng(0).integers(50, 1500, 1003)
    batches = training_batches(lengths, 8, seed=3, epoch=1)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1003))
    # Windows of 400 clips: 400 + 400 + 203, so one batch of 3 and 125 full ones.
    assert sorted(len(b) for b in batches) == [3] + [8] * 125
    again = training_batches(lengths, 8, seed=3, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other_epoch = training_batches(lengths, 8, seed=3, epoch=2)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other_epoch))


def test_bucketing_cuts_padding():
    lengths = np.random.default_rng(1).lognormal(5.9, 0.7, 2000).astype(int) + 1

    def padded_frames(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    bucketed = training_batches(lengths, 8, seed=0, epoch=1)
    rng = np.random.default_rng(0)
    random = np.array_split(rng.permutation(2000), 250)
    assert padded_frames(bucketed) < 0.7 * padded_frames(random)


def test_evaluation_batches_are_sorted_by_length():
    lengths = np.array([5, 1, 4, 2, 3])
    assert [b.tolist() for b in evaluation_batches(lengths, 2)] == [[1, 3], [4, 2], [0]]
