"""Where a sampler's Gaussian noise comes from: the whole image, or a window of it.

A DDIM run draws N(0, I) noise for its start x_T and, with η > 0, at every step. Drawn for
the block's own shape, a chunk of a plane (``pkl-dg batch`` cuts large planes into
overlapping chunks) would see other noise than the same pixels see in a whole-plane run,
and two chunks would disagree in their overlap by a seed's worth. :func:`window_noise`
draws the noise of the whole plane from the run's generator, in the order a whole-plane run
draws it, and returns the chunk's window of it: every pixel sees the noise it would see in
the whole plane, whichever chunk it is restored in. The same holds for the samples: a large
image runs its posterior samples one group at a time
(:func:`~pkl_dg.diffusion.sampler.guided_ddim_grouped`), each group taking its rows of the
noise all samples draw together. A volume's planes share their noise
(:func:`shared_along_z`).
"""

from __future__ import annotations

from typing import Callable

import torch

#: ``draw(shape) -> tensor``: N(0, I) noise of ``shape`` (…, h, w), float32, on the CPU
NoiseSource = Callable[[tuple[int, ...]], torch.Tensor]


def window_noise(generator: torch.Generator, plane_shape: tuple[int, int] | None = None,
                 box: tuple[int, int, int, int] | None = None, *,
                 num_samples: int = 1, samples: range | None = None) -> NoiseSource:
    """A window of the noise drawn for the whole plane and for every sample.

    The noise of ``num_samples`` samples of the whole plane is drawn from ``generator``
    exactly as a run over all samples and the whole plane draws it; the source returns the
    rows of ``samples`` and the pixels of ``box``. A chunk of a plane, or a group of the
    samples run on its own, so sees the noise it would see in the whole run.

    With the defaults (no box, one sample) it is plain N(0, I) noise of the requested shape,
    what a run over the whole image draws.

    Parameters
    ----------
    generator
        The run's CPU generator, seeded as the whole run's (a fresh one per group).
    plane_shape, box
        (H, W) of the whole plane and the chunk's (y0, y1, x0, x1), half-open, px; None: the
        requested shape is the whole plane.
    num_samples, samples
        The run's number of samples and those this source serves (default all).

    Returns
    -------
    NoiseSource
        ``draw(shape)`` for shape (len(samples)·P, …, h, w).

    Raises
    ------
    ValueError
        If the box does not lie within the plane, ``samples`` is not within
        ``num_samples``, or a requested shape does not fit the box or the samples.
    """
    samples = range(num_samples) if samples is None else samples
    if not (len(samples) and 0 <= samples.start and samples.stop <= num_samples
            and samples.step == 1):
        raise ValueError(f"samples {samples} are not consecutive samples of {num_samples}")
    if (plane_shape is None) != (box is None):
        raise ValueError("a chunk needs both the plane's shape and its box")
    if box is not None:
        (h, w), (y0, y1, x0, x1) = plane_shape, box
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"chunk box {box} does not lie within the {h}×{w} plane")

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        per, rest = divmod(shape[0], len(samples))
        if rest:
            raise ValueError(f"noise of shape {tuple(shape)} asked for {len(samples)} samples")
        if box is not None and tuple(shape[-2:]) != (y1 - y0, x1 - x0):
            raise ValueError(f"noise of shape {tuple(shape)} asked for a {y1 - y0}×{x1 - x0} "
                             "chunk")
        full = (num_samples * per, *shape[1:-2], *(shape[-2:] if box is None else (h, w)))
        z = torch.randn(full, generator=generator)[samples.start * per:samples.stop * per]
        return z if box is None else z[..., y0:y1, x0:x1]

    return draw


def shared_along_z(draw: NoiseSource, planes: int) -> NoiseSource:
    """The noise of a volume: each sample's planes share one plane of noise.

    The prior is 2D, applied to every plane. With noise drawn for each plane on its own,
    every plane of a sample got its own random brightness, which widefield data cannot
    correct: a change of a plane's mean along Z lies in the 3D OTF's missing cone (low
    lateral, high axial frequencies). Measured on the deconwolf DAPI stack (24 planes,
    NA 1.45), the nucleus' mean flickered by ±15 % from plane to plane (the mean absolute
    second difference of its Z profile 0.10–0.14, Richardson–Lucy 0.02), and on a synthetic
    stack with ground truth (20 × 96², 100 photons) PSNR was 25.2–26.5 dB against 31.3–31.5
    with shared noise, whose Z profile follows the truth's (/work/exp12/z3d_quality.py,
    zflicker.py, session 16). Noise smoothed along Z (σ 2 planes) instead gave 26.1–26.2 dB.
    The samples still differ from each other (each draws its own plane of noise).

    Parameters
    ----------
    draw
        The run's noise source: ``draw(shape)`` for shape (rows, 1, H, W).
    planes
        P, the volume's planes: rows are sample-major, P per sample.

    Returns
    -------
    NoiseSource
        ``draw(shape)`` for (samples · P, 1, H, W): each sample's plane of noise repeated
        for its P planes.
    """
    def shared(shape: tuple[int, ...]) -> torch.Tensor:
        per_sample = draw((shape[0] // planes, *shape[1:]))
        return per_sample.repeat_interleave(planes, dim=0)
    return shared
