"""Where a sampler's Gaussian noise comes from: one stream per sample, whole image or a window.

A DDIM run draws N(0, I) noise for its start x_T and, with η > 0, at every step. Each
posterior sample draws its own stream (:func:`sample_seed`), so a large image that runs its
samples one group at a time (:func:`~pkl_dg.diffusion.sampler.guided_ddim_grouped`) draws
each sample's noise once, in its group, and gets the samples of a run over all of them at
once, whatever the grouping. (Until session 24 one stream served all samples and every
group drew all of it to keep its own rows: at 4096², 4 groups, three quarters of the
normals were drawn and dropped, 0.25 s of a 4 s step.) Drawn for the block's own shape, a
chunk of a plane (``pkl-dg batch`` cuts large planes into overlapping chunks) would see
other noise than the same pixels see in a whole-plane run, and two chunks would disagree
in their overlap by a seed's worth: :func:`window_noise` draws each sample's noise for the
whole plane, in the order a whole-plane run draws it, and returns the chunk's window of
it. A volume's planes share their noise (:func:`shared_along_z`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

#: ``draw(shape) -> tensor``: N(0, I) noise of ``shape`` (…, h, w), float32, on the CPU
NoiseSource = Callable[[tuple[int, ...]], torch.Tensor]


def sample_seed(seed: int, sample: int) -> int:
    """The seed of sample ``sample``'s noise stream in a run seeded with ``seed``.

    Sample 0 draws from ``seed`` itself (a one-sample run draws what a generator seeded
    with ``seed`` draws); sample j > 0 from 63 bits of numpy's ``SeedSequence((seed, j))``,
    a hash that keeps the streams of nearby seeds and samples apart.
    """
    if sample == 0:
        return seed
    state = np.random.SeedSequence((seed, sample)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def stream_noise(generator: torch.Generator) -> NoiseSource:
    """Plain N(0, I) noise of the requested shape from one generator."""
    return lambda shape: torch.randn(shape, generator=generator)


def window_noise(seed: int, plane_shape: tuple[int, int] | None = None,
                 box: tuple[int, int, int, int] | None = None, *,
                 num_samples: int = 1, samples: range | None = None) -> NoiseSource:
    """The noise of ``samples`` of a run seeded with ``seed``, whole plane or a window.

    Each sample draws from its own CPU generator (:func:`sample_seed`) the rows it needs,
    for the whole plane; the source returns them stacked sample-major, cut to ``box``. A
    chunk of a plane, or a group of the samples run on its own, so sees the noise it would
    see in the whole run.

    Parameters
    ----------
    seed
        The run's seed.
    plane_shape, box
        (H, W) of the whole plane and the chunk's (y0, y1, x0, x1), half-open, px; None: the
        requested shape is the whole plane.
    num_samples, samples
        The run's number of samples and those this source serves (default all).

    Returns
    -------
    NoiseSource
        ``draw(shape)`` for shape (len(samples)·P, …, h, w): P rows per sample.

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
    streams = [torch.Generator().manual_seed(sample_seed(seed, j)) for j in samples]

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        per, rest = divmod(shape[0], len(samples))
        if rest:
            raise ValueError(f"noise of shape {tuple(shape)} asked for {len(samples)} samples")
        if box is not None and tuple(shape[-2:]) != (y1 - y0, x1 - x0):
            raise ValueError(f"noise of shape {tuple(shape)} asked for a {y1 - y0}×{x1 - x0} "
                             "chunk")
        if box is None:  # drawn in place, one sample's rows after another
            out = torch.empty(shape)
            for g, rows in zip(streams, out.split(per)):
                torch.randn(rows.shape, generator=g, out=rows)
            return out
        one = (per, *shape[1:-2], h, w)
        return torch.cat([torch.randn(one, generator=g)[..., y0:y1, x0:x1] for g in streams])

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
