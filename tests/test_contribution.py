"""Layer contribution: the frame average on a hand-built residual stream, end to end through the
capture's per-frame sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workflow_scripts.analyses.contribution import contribution_table, frame_average
from workflow_scripts.capture.passes import contribution_sums
from workflow_scripts.capture.store import CONTRIBUTION_STATISTICS
from workflow_scripts.errors import InputError


def test_hand_built_residual_stream_known_answer():
    """Two clips, one block. x = (1, 0); a = (0, 2) (orthogonal, twice as long); m = (-0.5, 0)
    (half as long, opposite). Per frame: ‖a‖/‖x‖ = 2, ‖m‖/‖x‖ = 0.5, ‖a+m‖/‖x‖ = √4.25,
    cos(a, x) = 0, cos(m, x) = -1, cos(a+m, x) = -0.5/√4.25. Clip 2 has 3 real frames of 4 (the
    4th is padding with other values, masked out); clip 1 has 2."""
    x = torch.tensor([1.0, 0.0]).expand(2, 4, 2).clone()
    a = torch.tensor([0.0, 2.0]).expand(2, 4, 2).clone()
    m = torch.tensor([-0.5, 0.0]).expand(2, 4, 2).clone()
    a[1, 3] = torch.tensor([5.0, 5.0])  # padding: must not count
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    sums = contribution_sums(x, a, m, mask).numpy()[:, None, :]  # [clips, blocks=1, 6]
    means = frame_average(sums, mask.sum(1).numpy())
    expected = [2.0, 0.5, np.sqrt(4.25), 0.0, -1.0, -0.5 / np.sqrt(4.25)]
    np.testing.assert_allclose(means[0], expected, rtol=1e-6, atol=1e-7)
    table = contribution_table(sums, mask.sum(1).numpy(), list(CONTRIBUTION_STATISTICS))
    assert table["frames"].iloc[0] == 5 and table["clips"].iloc[0] == 2
    assert table.set_index("statistic").loc["mlp_cos", "value"] == pytest.approx(-1.0)


def test_the_average_is_over_frames_not_clips():
    sums = np.array([[[10.0]], [[1.0]]])  # clip 1: 10 frames of 1.0; clip 2: 1 frame of 1.0
    assert frame_average(sums, np.array([10, 1]))[0, 0] == pytest.approx(1.0)


def test_no_frames_is_an_input_error():
    with pytest.raises(InputError, match="no frames"):
        frame_average(np.zeros((0, 2, 6)), np.zeros(0))
