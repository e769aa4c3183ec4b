"""Guided DDIM sampling as a generator of per-step records.

Each step: ε̂ = net(x_t, t) → x̂0 (model domain, clipped to [−1, 2]) → intensity → guidance
step (no backprop through the network) → back to the model domain → ε re-derived from the
corrected x̂0 → x_{t−1} by DDIM (Song et al. 2021) with stochasticity η. Every step yields
its corrected x̂0 in photon units; closing the generator stops the run.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from pkl_dg.diffusion.mapping import IntensityMapping
from pkl_dg.diffusion.schedule import NUM_TRAIN_TIMESTEPS, cosine_alphas_cumprod, ddim_timesteps
from pkl_dg.guidance.likelihoods import Likelihood
from pkl_dg.guidance.steps import GuidanceStep, ramp_weight
from pkl_dg.physics.forward import ForwardModel

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: x̂0 is clipped to [−1, Z_MAX] in the model domain, i.e. to [0, 1.5·s] photons. Not at +1:
#: bright sparse spots lie above the scale s and must survive (clipping at +1 cost up to
#: 0.2 dB); but bounded, so a wild x̂0 at large t cannot overshoot the multiplicative
#: guidance step into all-zero, from which it cannot recover.
Z_MAX = 2.0
#: largest x̂0 noise level σ̄_t (model units) passed to the guidance as its uncertainty
SIGMA_MAX = 100.0


@dataclass
class SamplerStep:
    index: int          # 1-based step number
    total: int          # number of steps
    t: int              # diffusion timestep of this step
    x0: torch.Tensor    # corrected x̂0, photons, (N, *y.shape)
    nll: torch.Tensor   # data misfit of x0 per sample (N,)


def guided_ddim(denoiser: Denoiser, y: torch.Tensor, fm: ForwardModel,
                mapping: IntensityMapping, *, steps: int = 25, eta: float = 0.0,
                guidance: GuidanceStep | None = None, misfit: Likelihood | None = None,
                t_threshold: int = 800, ramp: str = "linear", num_samples: int = 1,
                generator: torch.Generator | None = None,
                autocast_dtype: torch.dtype | None = None,
                alphas_cumprod: torch.Tensor | None = None) -> Iterator[SamplerStep]:
    """Sample x̂0 given the measurement ``y`` (photons, (H, W) or (P, H, W)).

    For a stack ``y`` of P planes the network denoises all planes as one batch. With a 3D
    forward model (3D PSF) the planes are a volume: guidance and its norms act on the
    whole (P, H, W) volume of each sample. With a 2D PSF they are independent planes.

    Parameters
    ----------
    denoiser
        Callable ``(x_t, t) -> ε`` on (N, 1, H, W) tensors, t a LongTensor (N,).
    guidance
        The data-consistency update; ``None`` samples the unguided prior.
    misfit
        Likelihood whose NLL is reported per step (defaults to the guidance's).
    generator
        A CPU ``torch.Generator``; the same seed gives the same result on any device.
    autocast_dtype
        Run the network under autocast with this dtype (e.g. ``torch.bfloat16``);
        physics always stays in float32.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"η must be in [0, 1], got {eta}")
    if y.ndim not in (2, 3):
        raise ValueError(f"measurement must be (H, W) or (P, H, W), got shape {tuple(y.shape)}")
    ac = (alphas_cumprod if alphas_cumprod is not None else cosine_alphas_cumprod()).double()
    T = ac.shape[0]
    abar = ac.tolist()  # python floats: no tensor indexing inside the step loop
    ts = ddim_timesteps(steps, T)
    device = y.device
    misfit = misfit or (guidance.likelihood if guidance is not None else None)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    planes = y.shape[0] if y.ndim == 3 else 1
    h, w = y.shape[-2:]
    shape = (num_samples * planes, 1, h, w)  # what the network sees
    if y.ndim == 3 and fm.conv.ndim == 3:  # a volume per sample
        gshape, yb = (num_samples, planes, h, w), y.reshape(1, planes, h, w)
    else:  # independent 2D planes
        gshape, yb = shape, y.reshape(planes, 1, h, w).repeat(num_samples, 1, 1, 1)
    cast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
            else nullcontext())

    with torch.inference_mode():
        x = torch.randn(shape, generator=gen).to(device)
    warm = None  # the previous step's corrected x̂0: where the proximal iterations start
    for i, t in enumerate(ts):
        with torch.inference_mode():
            a_t = abar[t]
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
            tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
            with cast:
                eps = denoiser(x, tt)
            eps = eps.float()
            z0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1.0, Z_MAX)
            x0 = mapping.to_intensity(z0).clamp(min=0).reshape(gshape)
            if guidance is not None:
                # x̂0's noise level σ̄_t = √((1−ᾱ)/ᾱ) in model units, s/2 photons each;
                # capped at SIGMA_MAX (there the proximal step is already plain RL, and τ²
                # must stay finite in float32)
                sigma_bar = min(math.sqrt((1 - a_t) / a_t), SIGMA_MAX)
                prior_std = mapping.scale / 2.0 * sigma_bar
                x0 = guidance(x0, yb, fm, ramp_weight(t, T, t_threshold, ramp), prior_std,
                              x_init=warm)
                warm = x0
            z0 = mapping.to_model(x0).reshape(shape)
            eps = (x - math.sqrt(a_t) * z0) / math.sqrt(1 - a_t)
            if i + 1 < len(ts):
                sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
                x = math.sqrt(a_prev) * z0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
                if sigma > 0:
                    x = x + sigma * torch.randn(shape, generator=gen).to(device)
            if misfit is not None:
                nll = misfit.nll(x0, yb, fm).reshape(num_samples, -1).sum(dim=1)
            else:
                nll = torch.zeros(num_samples)
            out = x0.reshape(num_samples, *y.shape)
        yield SamplerStep(index=i + 1, total=len(ts), t=t, x0=out, nll=nll)


__all__ = ["Denoiser", "NUM_TRAIN_TIMESTEPS", "SamplerStep", "guided_ddim"]
