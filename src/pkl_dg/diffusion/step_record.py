"""What each sampler step yields, with its data misfit computed only when it is read.

The misfit of a step's x̂0 costs a forward convolution per sample (two FFTs each) and a
logarithm pass: at 512² with 4 samples about 17 ms of a ~300 ms step (measured on the
2-core benchmark machine, ``/work/exp8``). The napari widget never shows it; the CLI's
progress bar and the Compare widget's plot do. So a step carries a callable that computes
the misfit on first read and keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from einops import reduce

from pkl_dg.guidance.likelihoods import Likelihood
from pkl_dg.physics.forward import ForwardModel

Misfit = torch.Tensor | Callable[[], torch.Tensor]


class LazyMisfit:
    """``nll`` from a ``misfit`` attribute that holds the value, a callable computing it
    (called on the first read, the value kept), or None. Shared by :class:`SamplerStep`
    and :class:`pkl_dg.restoration.StepRecord`."""

    misfit: Any

    @property
    def nll(self) -> Any:
        """The misfit; computed on the first read.

        Read it while the run's generator is paused at this step or after the run, in the
        thread that runs it: the computation shares the run's FFT buffers.
        """
        if callable(self.misfit):
            self.misfit = self.misfit()
        return self.misfit


@dataclass
class SamplerStep(LazyMisfit):
    """One step of :func:`~pkl_dg.diffusion.sampler.guided_ddim`.

    Attributes
    ----------
    index, total : int
        1-based step number and number of steps.
    t : int
        The step's diffusion timestep.
    x0 : torch.Tensor
        Corrected x̂0, photons, float32, (samples, *y.shape).
    misfit : torch.Tensor, callable or None
        Each sample's data misfit, (samples,), or a callable that computes it (read it as
        ``nll``, :class:`LazyMisfit`); None where none is offered.
    mean : torch.Tensor or None
        The mean of all samples so far where the step sets it, (1, *y.shape): the final
        pass's result, and in a run of several sample groups each step from the second
        group on (``x0`` then holds the current group's samples alone).
    """

    index: int
    total: int
    t: int
    x0: torch.Tensor
    misfit: Misfit | None
    mean: torch.Tensor | None = None


def _misfit(likelihood: Likelihood, x0: torch.Tensor, y: torch.Tensor, fm: ForwardModel,
            samples: int) -> torch.Tensor:
    with torch.inference_mode():
        return reduce(likelihood.nll(x0, y, fm), "(sample rest) -> sample", "sum",
                      sample=samples)


def misfit_of(likelihood: Likelihood, x0: torch.Tensor, y: torch.Tensor, fm: ForwardModel,
              samples: int) -> Callable[[], torch.Tensor]:
    """The misfit of ``x0`` (photons, samples first; never modified afterwards) against
    ``y`` under ``fm``, summed per sample, as a callable for :attr:`SamplerStep.misfit`."""
    return lambda: _misfit(likelihood, x0, y, fm, samples)


def joined_misfit(steps: list[SamplerStep]) -> Callable[[], torch.Tensor]:
    """The misfits of ``steps`` (groups of samples), concatenated, as a callable."""
    steps = list(steps)
    return lambda: torch.cat([s.nll for s in steps])
