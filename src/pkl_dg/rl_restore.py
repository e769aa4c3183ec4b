"""Richardson–Lucy as :func:`pkl_dg.restore` runs it on one block: every iterate as a
sampler step of one sample, with the misfit offered on the frames that can be shown and
computed only when a consumer reads it.

The misfit of plain RL's iterate k comes from the μ = A x + B its next iteration needs
anyway: a logarithm pass, about a tenth of an iteration, when read while the run is paused
at that frame (later it costs a convolution more). Accelerated RL's costs a convolution;
it is offered on the last frame only. The napari widget never reads it; the CLI's progress
bar and the Compare widget's plot do.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
from einops import rearrange

from pkl_dg.block_reports import auto_info
from pkl_dg.diffusion.step_record import SamplerStep
from pkl_dg.guidance.stopping import MAX_ITERATIONS as RL_AUTO_MAX
from pkl_dg.guidance.stopping import AutoStop
from pkl_dg.physics.psf_cleaning import PSFWarning
from pkl_dg.physics.forward import ForwardModel
from pkl_dg.richardson_lucy import RLIterate, rl_iterates
from pkl_dg.settings import RestoreSettings

#: RL misfit readout offered at most this often (the widget shows ≤ 10 frames/s), s, and,
#: once a consumer has read one, within this share of the run's time (matters from 2048²)
RL_READOUT_INTERVAL_S, READOUT_SHARE = 0.1, 0.05


class _Readouts:
    """Which iterates offer a misfit, and what the last one read cost."""

    def __init__(self, fast: bool, last_k: int) -> None:
        self.fast, self.last_k = fast, last_k
        self.offered, self.cost = -np.inf, 0.0

    def offer(self, it: RLIterate) -> Callable[[], torch.Tensor] | None:
        now = time.perf_counter()
        if not (it.k == self.last_k or (not self.fast and (it.k == 1 or now - self.offered
                >= max(RL_READOUT_INTERVAL_S, self.cost / READOUT_SHARE)))):
            return None
        self.offered = now

        def read() -> torch.Tensor:
            t0 = time.perf_counter()
            value = torch.tensor([it.nll()], dtype=torch.float64)
            self.cost = time.perf_counter() - t0
            return value
        return read


def rl_steps(y: torch.Tensor, fm: ForwardModel, s: RestoreSettings,
             x0: torch.Tensor | None, info: dict[str, Any], where: str = "",
             warn_misfit: bool = True) -> Iterator[SamplerStep]:
    """Richardson–Lucy on one block, one :class:`SamplerStep` per iteration.

    Parameters
    ----------
    y
        The block in photons, (H, W) or (Z, H, W).
    fm
        Its forward model (PSF, background, read-noise variance, fit mask).
    s
        The run's settings: ``rl_iterations`` (0 = the automatic stop,
        :class:`~pkl_dg.guidance.stopping.AutoStop`), ``tv_weight``, ``rl_acceleration``.
    x0
        The start (None: the data's mean level).
    info
        The block's metadata; the automatic stop writes its count and ratio there.
    where, warn_misfit
        For the warning when the automatic stop stalls far above the noise.

    Yields
    ------
    SamplerStep
        ``t`` = ``index`` = the iteration, ``x0`` the iterate (1, *y.shape), photons;
        ``misfit`` a callable (the PKL misfit, (1,)) on the frames that offer one, else None.

    Raises
    ------
    ValueError
        The automatic count with TV regularisation.
    """
    if fm.conv.psf.numel() == 1:
        warnings.warn("Richardson–Lucy with no blur (PSF 'none', one pixel) has nothing to "
                      "deconvolve: it returns the data above background as they are. To "
                      "denoise, use PKL; to deconvolve, give the PSF.", PSFWarning,
                      stacklevel=3)
    fast = s.rl_acceleration != "none"
    auto = s.rl_iterations == 0
    if auto and s.tv_weight > 0:
        raise ValueError("the automatic RL iteration count is for plain RL: set the RL "
                         "iterations for RL with TV regularisation")
    n = RL_AUTO_MAX if auto else s.rl_iterations
    rule = AutoStop(y, fm, accelerated=fast) if auto else None
    readouts = _Readouts(fast, n)
    for it in rl_iterates(y, fm, n, s.tv_weight, x0, accelerate=fast, stop=rule):
        yield SamplerStep(it.k, n, it.k, rearrange(it.x, "... -> 1 ..."), readouts.offer(it))
    if rule is not None:
        info.update(auto_info(rule, where, warn_misfit))
