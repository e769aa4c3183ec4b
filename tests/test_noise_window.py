"""A chunk's noise is its window of the whole plane's noise (diffusion/noise.py)."""

import pytest
import torch

from pkl_dg.diffusion.noise import window_noise


def test_window_equals_the_same_pixels_of_the_whole_plane_draw():
    g = torch.Generator().manual_seed(7)
    whole = lambda shape: torch.randn(shape, generator=g)  # noqa: E731  a whole-plane run
    chunk = window_noise(torch.Generator().manual_seed(7), (40, 50), (5, 25, 10, 45))
    for _ in range(3):  # successive draws stay in step (start noise, then every step's)
        a, b = whole((2, 1, 40, 50)), chunk((2, 1, 20, 35))
        assert torch.equal(a[..., 5:25, 10:45], b)


def test_window_refuses_a_box_outside_the_plane_or_a_wrong_shape():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="does not lie within"):
        window_noise(g, (40, 50), (0, 41, 0, 10))
    draw = window_noise(g, (40, 50), (0, 10, 0, 10))
    with pytest.raises(ValueError, match="chunk"):
        draw((1, 1, 10, 12))
