"""near_unfit: the box neighbourhood of pixels left out of the data fit."""

from __future__ import annotations

import pytest
import torch

from pkl_dg.physics.unfit_reach import near_unfit


def test_a_left_out_pixel_marks_its_box_per_plane():
    mask = torch.ones(2, 9, 11)
    mask[1, 4, 5] = 0  # the second plane only
    near = near_unfit(mask, (1, 2))
    assert near.shape == mask.shape and near.dtype == torch.bool
    assert not near[0].any()  # planes are separate
    expected = torch.zeros(9, 11, dtype=torch.bool)
    expected[3:6, 3:8] = True  # ±1 row, ±2 columns
    assert torch.equal(near[1], expected)


def test_a_volume_reach_spans_planes():
    mask = torch.ones(5, 7, 7)
    mask[2, 3, 3] = 0.5  # partly weighted pixels count as left out too (mask < 1)
    near = near_unfit(mask, (1, 1, 1))
    assert near[1:4, 2:5, 2:5].all() and int(near.sum()) == 27


def test_nothing_left_out_gives_none_and_bad_reach_raises():
    assert near_unfit(None, (2, 2)) is None
    assert near_unfit(torch.ones(8, 8), (2, 2)) is None
    with pytest.raises(ValueError, match="half sizes"):
        near_unfit(torch.ones(8, 8), (-1, 2))
    with pytest.raises(ValueError, match="at least that"):
        near_unfit(torch.ones(8, 8), (1, 1, 1))
