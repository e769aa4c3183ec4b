"""Where a sampler's Gaussian noise comes from: the whole image, or a window of it.

A DDIM run draws N(0, I) noise for its start x_T and, with η > 0, at every step. Drawn for
the block's own shape, a chunk of a plane (``pkl-dg batch`` cuts large planes into
overlapping chunks) would see other noise than the same pixels see in a whole-plane run,
and two chunks would disagree in their overlap by a seed's worth. :func:`window_noise`
draws the noise of the whole plane from the run's generator, in the order a whole-plane run
draws it, and returns the chunk's window of it: every pixel sees the noise it would see in
the whole plane, whichever chunk it is restored in.
"""

from __future__ import annotations

from typing import Callable

import torch

#: ``draw(shape) -> tensor``: N(0, I) noise of ``shape`` (…, h, w), float32, on the CPU
NoiseSource = Callable[[tuple[int, ...]], torch.Tensor]


def gaussian_noise(generator: torch.Generator) -> NoiseSource:
    """Noise of the requested shape from ``generator`` (a whole-image run)."""
    return lambda shape: torch.randn(shape, generator=generator)


def window_noise(generator: torch.Generator, plane_shape: tuple[int, int],
                 box: tuple[int, int, int, int]) -> NoiseSource:
    """The window ``box`` of noise drawn for the whole plane.

    Parameters
    ----------
    generator
        The run's CPU generator (seeded as the whole-plane run's).
    plane_shape
        (H, W) of the whole plane, px.
    box
        (y0, y1, x0, x1), half-open, px: the chunk within the plane.

    Returns
    -------
    NoiseSource
        ``draw(shape)`` for shape (…, y1 − y0, x1 − x0): draws (…, H, W) and slices the box.

    Raises
    ------
    ValueError
        If the box does not lie within the plane, or a requested shape is not the box's.
    """
    (h, w), (y0, y1, x0, x1) = plane_shape, box
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise ValueError(f"chunk box {box} does not lie within the {h}×{w} plane")

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(shape[-2:]) != (y1 - y0, x1 - x0):
            raise ValueError(f"noise of shape {tuple(shape)} asked for a {y1 - y0}×{x1 - x0} "
                             "chunk")
        return torch.randn((*shape[:-2], h, w), generator=generator)[..., y0:y1, x0:x1]

    return draw
