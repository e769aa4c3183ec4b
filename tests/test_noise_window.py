"""Each sample draws its own noise stream; a chunk's noise is its window of the whole
plane's (diffusion/noise.py)."""

import pytest
import torch

from pkl_dg.diffusion.noise import sample_seed, stream_noise, window_noise


def test_window_equals_the_same_pixels_of_the_whole_plane_draw():
    whole = window_noise(7, num_samples=2)
    chunk = window_noise(7, (40, 50), (5, 25, 10, 45), num_samples=2)
    for _ in range(3):  # successive draws stay in step (start noise, then every step's)
        a, b = whole((2, 1, 40, 50)), chunk((2, 1, 20, 35))
        assert torch.equal(a[..., 5:25, 10:45], b)


def test_each_sample_draws_its_own_stream_whatever_the_group():
    """A group of samples draws only its own samples' noise and gets the rows a run over
    all samples gets; sample 0's stream is the seed's own."""
    every, one_by_one = window_noise(3, num_samples=3), [
        window_noise(3, num_samples=3, samples=range(j, j + 1)) for j in range(3)]
    pair = window_noise(3, num_samples=3, samples=range(1, 3))
    for _ in range(2):
        all_rows = every((3, 1, 16, 12))
        assert torch.equal(torch.cat([d((1, 1, 16, 12)) for d in one_by_one]), all_rows)
        assert torch.equal(pair((2, 1, 16, 12)), all_rows[1:])
    first = stream_noise(torch.Generator().manual_seed(3))
    again = window_noise(3, num_samples=3, samples=range(0, 1))
    assert torch.equal(again((1, 1, 16, 12)), first((1, 1, 16, 12)))
    assert not torch.equal(all_rows[0], all_rows[1])
    assert len({sample_seed(s, j) for s in range(50) for j in range(8)}) == 400  # no collisions


def test_window_refuses_a_box_outside_the_plane_or_a_wrong_shape():
    with pytest.raises(ValueError, match="does not lie within"):
        window_noise(0, (40, 50), (0, 41, 0, 10))
    draw = window_noise(0, (40, 50), (0, 10, 0, 10))
    with pytest.raises(ValueError, match="chunk"):
        draw((1, 1, 10, 12))
    with pytest.raises(ValueError, match="samples"):
        window_noise(0, num_samples=2, samples=range(1, 3))
