"""Guided DDIM sampling as a generator of per-step records.

Each step: ε̂ = net(x_t, t) → x̂0 (model domain, clipped to [−1, 2]) → intensity → guidance
step (no backprop through the network) → back to the model domain → x_{t−1} by DDIM with
stochasticity η, ε re-derived from the corrected x̂0 (:class:`DDIMScheduler`, Song et al.
2021 eq. 12). Every step yields its corrected x̂0 in photon units; closing the generator
stops the run.

Axes, as einops patterns: the network sees every plane of every sample as one batch of
one-channel images, ``(sample plane) 1 h w``; guidance sees the same batch of independent
planes with a 2D PSF, and one volume per sample, ``sample plane h w``, with a 3D PSF.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from einops import rearrange, repeat

from pkl_dg.diffusion.grid_phase import PHASES, phase_shifted
from pkl_dg.diffusion.local_flux import keep_local_flux
from pkl_dg.diffusion.mapping import IntensityMapping
from pkl_dg.diffusion.mc_error import mean_mc_error
from pkl_dg.diffusion.network_view import view_ceiling
from pkl_dg.diffusion.noise import NoiseSource, shared_along_z, stream_noise, window_noise
from pkl_dg.diffusion.schedule import NUM_TRAIN_TIMESTEPS, DDIMScheduler
from pkl_dg.diffusion.step_record import SamplerStep, joined_misfit, misfit_of
from pkl_dg.guidance.likelihoods import Likelihood
from pkl_dg.guidance.steps import GuidanceStep, ramp_weight
from pkl_dg.physics.forward import ForwardModel

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: x̂0 is clipped to [−1, Z_MAX] in the model domain, i.e. to [0, 1.5·s] photons, where the
#: network predicts it and where the next state x_{t−1} is built from it. Not at +1:
#: bright sparse spots lie above the scale s and must survive (clipping at +1 cost up to
#: 0.2 dB); but bounded, so a wild x̂0 at large t cannot overshoot the multiplicative
#: guidance step into all-zero, from which it cannot recover.
Z_MAX = 2.0
#: largest x̂0 noise level σ̄_t (model units) passed to the guidance as its uncertainty
SIGMA_MAX = 100.0
#: the network's layout: every plane of every sample, one channel each
NETWORK = "(sample plane) 1 h w"
#: guidance's layout for a volume (3D PSF): one volume per sample
VOLUME = "sample plane h w"
#: samples × voxels of one block above which the posterior samples run one group at a time
#: in host memory (the sampler and its data step hold ~15 arrays of this size: at 4096² and
#: 4 samples, 4 GB at once instead of 1 GB per group)
GROUP_VOXELS = 4 * 1024 * 1024
#: GPU memory per sample × voxel of a group, bytes: the sampler's arrays and the network's
#: tiles (measured on an H200, BENCHMARKS.md "GPU": 4096² × 4 samples peak 4.6 GB, 69 B;
#: a 32×512² stack in 3D mode × 4 samples 8.1 GB, 242 B)
GPU_BYTES_PER_VOXEL = 256
#: network images that :func:`final_denoise` evaluates per image it denoises: every grid
#: phase at t0 and phase 0 at t1, at the run's precision (a step of :func:`guided_ddim`
#: evaluates one per sample). Progress displays weigh the pass by it.
FINAL_PASS_IMAGES = PHASES + 1


@dataclass(frozen=True)
class Problem:
    """What is restored: the measurement ``y`` (photons, (H, W) or (P, H, W)), its forward
    model, and the mapping between photons and the network's domain."""

    y: torch.Tensor
    fm: ForwardModel
    mapping: IntensityMapping


@dataclass(frozen=True)
class Guidance:
    """The data term: the correction of x̂0 (None: sample the unguided prior), its weight
    over timesteps (:func:`~pkl_dg.guidance.steps.ramp_weight`), and the likelihood whose
    misfit each step reports (default: the step's own; None with no step: zeros)."""

    step: GuidanceStep | None = None
    t_threshold: int = 800
    ramp: str = "linear"
    misfit: Likelihood | None = None

    def weight(self, t: int, num_timesteps: int) -> float:
        """The step's weight at timestep ``t``: 0 at t = T rising to 1 at ``t_threshold``."""
        return ramp_weight(t, num_timesteps, self.t_threshold, self.ramp)

    def reported(self) -> Likelihood | None:
        """The likelihood whose NLL the records carry."""
        return self.misfit or (self.step.likelihood if self.step is not None else None)


def guided_ddim(denoiser: Denoiser, problem: Problem, scheduler: DDIMScheduler,
                guidance: Guidance = Guidance(), *, num_samples: int = 1,
                generator: torch.Generator | None = None,
                autocast_dtype: torch.dtype | None = None,
                noise: NoiseSource | None = None, first_sample: int = 0
                ) -> Iterator[SamplerStep]:
    """Sample x̂0 given the measurement of ``problem``; yield a :class:`SamplerStep` per step.

    For a stack ``y`` of P planes the network denoises all planes as one batch. With a 3D
    forward model (3D PSF) the planes are a volume: guidance and its norms act on the
    whole (P, H, W) volume of each sample. With a 2D PSF they are independent planes.

    Parameters
    ----------
    denoiser
        Callable ``(x_t, t) -> ε`` on (N, 1, H, W) tensors, t a LongTensor (N,).
    problem
        The measurement (photons, (H, W) or (P, H, W)), forward model and intensity mapping.
    scheduler
        The timesteps, η and the DDIM update.
    guidance
        The data-consistency update and the reported misfit; the default samples the
        unguided prior and reports no misfit.
    num_samples
        Independent samples, drawn as one batch.
    generator
        A CPU ``torch.Generator``; the same seed gives the same result on any device.
    autocast_dtype
        Run the network under autocast with this dtype (e.g. ``torch.bfloat16``);
        physics always stays in float32.
    noise
        Where x_T and the steps' fresh noise come from (default: ``generator`` draws it for
        this image's shape, all samples from one stream; :func:`guided_ddim_grouped` gives
        each sample its own stream and a chunk of a plane its window of the plane's noise,
        :func:`~pkl_dg.diffusion.noise.window_noise`).
    first_sample
        Index of the first of these samples in the whole run (a group of samples, see
        :func:`guided_ddim_grouped`): sample j sees the network's pixel grid at phase
        (j + step) mod 4 (:mod:`pkl_dg.diffusion.grid_phase`), so a mean over samples
        holds every phase.

    Yields
    ------
    SamplerStep
        Per timestep of ``scheduler``: x̂0 after guidance, photons, (num_samples, *y.shape),
        and each sample's misfit. Closing the generator stops the run.
    """
    y, fm, mapping = problem.y, problem.fm, problem.mapping
    if y.ndim not in (2, 3):
        raise ValueError(f"measurement must be (H, W) or (P, H, W), got shape {tuple(y.shape)}")
    planes = y if y.ndim == 3 else rearrange(y, "h w -> 1 h w")
    volume = y.ndim == 3 and fm.conv.ndim == 3
    layout = VOLUME if volume else NETWORK  # what guidance sees
    yb = (rearrange(planes, "plane h w -> 1 plane h w") if volume
          else repeat(planes, f"plane h w -> {NETWORK}", sample=num_samples))
    misfit = guidance.reported()
    ceiling = view_ceiling(fm.mask, fm.conv.radius, Z_MAX, len(planes),
                           VOLUME if volume else NETWORK, num_samples)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    draw = noise if noise is not None else stream_noise(gen)
    if volume:
        draw = shared_along_z(draw, len(planes))
    cast = (torch.autocast(y.device.type, dtype=autocast_dtype) if autocast_dtype is not None
            else nullcontext())
    T, ts = scheduler.num_train_timesteps, scheduler.timesteps

    with torch.inference_mode():
        x = draw((num_samples * len(planes), 1, *y.shape[-2:]))
        x = x.to(y.device)
    warm = None  # the previous step's corrected x̂0: where the proximal iterations start
    sample_of_row = [first_sample + r // len(planes) for r in range(num_samples * len(planes))]
    for i, t in enumerate(ts):
        with torch.inference_mode():
            with cast:
                eps = phase_shifted(denoiser, x, torch.full((len(x),), t, dtype=torch.long,
                                                            device=y.device),
                                    [(j + i) % PHASES for j in sample_of_row])
            z0 = scheduler.predict_x0(x, eps.float(), t).clamp_(-1.0, Z_MAX)
            x0 = rearrange(mapping.to_intensity(z0).clamp_(min=0), f"{NETWORK} -> {layout}",
                           sample=num_samples)
            del eps, z0  # two images fewer held through the data step
            if guidance.step is not None:
                # x̂0's noise level σ̄_t in model units, s/2 photons each; capped at SIGMA_MAX
                # (there the proximal step is already plain RL, and τ² must stay finite in
                # float32)
                prior_std = mapping.scale / 2.0 * min(scheduler.x0_noise_level(t), SIGMA_MAX)
                x0 = warm = guidance.step(x0, yb, fm, guidance.weight(t, T), prior_std,
                                          x_init=warm)
            # the next state sees x̂0 within [−1, Z_MAX] (the scale where the data leave it
            # open): a bright spot far above it, a saturated bead, disturbs the network over
            # the whole field (:mod:`~pkl_dg.diffusion.network_view`); the output is unclipped
            z0 = mapping.to_model(x0)
            z0 = z0.clamp(max=Z_MAX) if ceiling is None else torch.minimum(z0, ceiling)
            z0 = rearrange(z0, f"{layout} -> {NETWORK}", sample=num_samples)
            x = scheduler.step(x, z0, t, noise=draw)
            # computed when read (a convolution per sample); x̂0 is never modified later
            nll = (torch.zeros(num_samples) if misfit is None
                   else misfit_of(misfit, x0, yb, fm, num_samples))
            out = rearrange(x0, f"{layout} -> {VOLUME}", sample=num_samples)
        yield SamplerStep(index=i + 1, total=len(ts), t=t,
                          x0=out if y.ndim == 3 else rearrange(out, "sample 1 h w -> sample h w"),
                          misfit=nll)


def final_denoise(denoiser: Denoiser, x0: torch.Tensor, problem: Problem,
                  scheduler: DDIMScheduler, fraction: float,
                  autocast_dtype: torch.dtype | None = None,
                  mc_error: float = 0.0) -> tuple[torch.Tensor, float]:
    """One more network pass over the final x̂0, at the noise level the data steps left in it.

    Mid-course data steps pull x̂0 onto the measurement, noise included; the last diffusion
    steps run at noise levels below that grain, so the network keeps it as structure. This
    pass takes the grain to be ``fraction`` of the measurement's noise standard deviation
    at x̂0's mean level (within the prior's range), √(mean + s²) photons (Poisson plus
    read-noise variance s²). When x̂0 is the mean of N posterior samples it also carries
    their Monte-Carlo error ``mc_error``: the prior's inventions where the data do not
    constrain the image (for a blur, the frequencies the PSF removes) differ between
    samples, and N samples average them out only to std/√N. The two are independent, so
    the level is √(grain² + mc_error²), i.e.
    σ̄* = 2·level/s in model units, and applies the network's x̂0 prediction at that noise
    level: x_t = √ᾱ_t·z, x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t (Tweedie's denoiser, the x̂0 of a DDIM
    step from x_t). σ̄* falls between two training timesteps; the pass runs at both and
    interpolates linearly in σ̄, so that the result changes continuously with the data's
    level. At t0 it averages the four phases of the network's pixel grid
    (:mod:`pkl_dg.diffusion.grid_phase`; one phase alone adds the grid's pattern to the
    result) and adds w·(x̂0(t1) − x̂0(t0)) of phase 0 (the pattern cancels in that
    difference): :data:`FINAL_PASS_IMAGES` (5) network images, not 8. What lies above the
    prior's range (z > Z_MAX, a bright spot) is kept as it is. The local flux the pass takes
    beyond what its grain explains (a dim cell beside a bright one) is put back
    (:func:`~pkl_dg.diffusion.local_flux.keep_local_flux`).

    Parameters
    ----------
    x0
        Final x̂0, photons, (samples, *y.shape).
    fraction
        The grain as a fraction of the measurement's noise std (> 0).
    mc_error
        Monte-Carlo error of a mean of samples, photons (RMS over pixels of the samples'
        standard deviation / √N; :func:`mean_mc_error`); 0 for one sample.
    problem, scheduler, autocast_dtype
        As for :func:`guided_ddim` (the read-noise variance comes from ``problem.fm``).

    Returns
    -------
    (x0, t*)
        The denoised x̂0 like the input, and the (fractional) timestep used.
    """
    mapping = problem.mapping
    z = mapping.to_model(x0)
    inside = z.clamp(max=Z_MAX).reshape(-1, 1, *z.shape[-2:])
    mean = float(mapping.to_intensity(inside).mean())  # a bright spot does not set the level
    grain = fraction * math.sqrt(max(mean, 0.0) + float(problem.fm.read_noise_var))
    level = math.hypot(grain, mc_error)
    target = 2.0 * level / mapping.scale
    t0 = scheduler.timestep_for(target)
    s0 = scheduler.x0_noise_level(t0)
    t1 = min(t0 + 1, scheduler.num_train_timesteps - 1) if s0 <= target else max(t0 - 1, 0)
    s1 = scheduler.x0_noise_level(t1)
    w1 = 0.0 if t1 == t0 else min(max((target - s0) / (s1 - s0), 0.0), 1.0)
    cast = (torch.autocast(x0.device.type, dtype=autocast_dtype) if autocast_dtype is not None
            else nullcontext())
    groups = sample_groups(PHASES, inside.numel(), group_budget(inside.device))

    def predict(t: int, phases: range) -> torch.Tensor:
        """x̂0 of ``inside`` at t seen at each of ``phases``: (len(phases), *inside.shape)."""
        x_t = math.sqrt(scheduler.alpha_bar(t)) * inside
        rows = x_t.repeat(len(phases), 1, 1, 1)
        with cast:
            eps = phase_shifted(denoiser, rows, torch.full((len(rows),), t, dtype=torch.long,
                                                           device=x0.device),
                                [p for p in phases for _ in range(len(x_t))])
        pred = scheduler.predict_x0(rows, eps.float(), t).clamp(-1.0, Z_MAX)
        return pred.reshape(len(phases), *inside.shape)

    with torch.inference_mode():
        # every phase at t0, in groups that fit memory like a step's samples; t1: phase 0
        out = torch.zeros_like(inside)
        for phases in groups:
            pred = predict(t0, phases)
            out += pred.sum(dim=0) / PHASES
            if 0 in phases:
                at_t0 = pred[phases.index(0)]
        if w1 > 0.0:
            out += w1 * (predict(t1, range(1))[0] - at_t0)
        z0 = out.reshape(z.shape) + (z - inside.reshape(z.shape))
        passed = mapping.to_intensity(z0).clamp(min=0)
        return (keep_local_flux(x0, passed, fraction, float(problem.fm.read_noise_var)),
                t0 + w1 * (t1 - t0))


def group_budget(device: torch.device | str) -> int:
    """Samples × voxels that one group may hold on ``device``.

    Host memory: :data:`GROUP_VOXELS`. A CUDA GPU: a quarter of its memory at
    :data:`GPU_BYTES_PER_VOXEL` (never less than :data:`GROUP_VOXELS`), so that a large GPU
    runs all samples of a large image together (on an H200, 2048² and 4096² with 4 samples
    in one group instead of four). The card's total memory, not its free memory, so that
    the frame count announced before a run is the one it streams.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return GROUP_VOXELS
    total = torch.cuda.get_device_properties(device).total_memory
    return max(GROUP_VOXELS, total // 4 // GPU_BYTES_PER_VOXEL)


def sample_groups(num_samples: int, block_voxels: int, budget: int | None = None) -> list[range]:
    """Consecutive groups of the samples, each with at most ``budget`` (default
    :data:`GROUP_VOXELS`; see :func:`group_budget`) samples × voxels, at least one sample
    per group."""
    budget = GROUP_VOXELS if budget is None else budget
    size = max(1, min(num_samples, budget // max(block_voxels, 1)))
    return [range(a, min(a + size, num_samples)) for a in range(0, num_samples, size)]


def guided_ddim_grouped(denoiser: Denoiser, problem: Problem, scheduler: DDIMScheduler,
                        guidance: Guidance = Guidance(), *, num_samples: int = 1,
                        seed: int = 0, autocast_dtype: torch.dtype | None = None,
                        window: tuple[tuple[int, int], tuple[int, int, int, int]] | None = None,
                        final_noise: float = 0.0) -> Iterator[SamplerStep]:
    """:func:`guided_ddim` over all samples, run one group of samples at a time
    (:func:`sample_groups`) so that memory holds one group's state.

    Every sample draws its noise from its own stream of ``seed``
    (:func:`~pkl_dg.diffusion.noise.window_noise`), so the samples are those of one run
    over all of them, whatever the grouping.

    Parameters
    ----------
    seed
        The run's seed (sample j's stream: :func:`~pkl_dg.diffusion.noise.sample_seed`).
    window
        ((H, W), (y0, y1, x0, x1)): the measurement is this chunk of a plane; the noise is
        the chunk's window of the plane's.
    final_noise
        > 0 (guided runs): end with :func:`final_denoise` at this fraction of the
        measurement's noise std; 0: no final pass.
    denoiser, problem, scheduler, guidance, num_samples, autocast_dtype
        As for :func:`guided_ddim`.

    Yields
    ------
    SamplerStep
        ``index`` counts the steps of all groups, then (with ``final_noise``) the
        :func:`final_denoise` pass over the samples' mean, which moves every sample by the
        same correction so that their spread is kept (``total`` = steps × groups + 1);
        ``x0`` holds the current group's x̂0, photons, (group's samples, *y.shape), and from
        the second group on ``mean`` the mean of the samples so far (the groups done and
        the current one's x̂0), (1, *y.shape): a frame costs one image, not a copy of every
        sample (4096², 4 groups: 64 MB, not 256). ``nll`` holds the misfit of every sample
        so far (the final pass repeats the last). The last record holds every sample in
        ``x0``.
    """
    groups = sample_groups(num_samples, problem.y.numel(), group_budget(problem.y.device))
    plane_shape, box = window if window is not None else (None, None)
    steps = len(scheduler.timesteps)
    final = guidance.step is not None and final_noise > 0
    total = steps * len(groups) + final
    done: list[SamplerStep] = []  # the last step of each group done
    done_sum = torch.zeros(())  # the sum of their samples' x̂0
    for g, ids in enumerate(groups):
        noise = window_noise(seed, plane_shape, box, num_samples=num_samples, samples=ids)
        for rec in guided_ddim(denoiser, problem, scheduler, guidance, num_samples=len(ids),
                               autocast_dtype=autocast_dtype, noise=noise,
                               first_sample=ids.start):
            x0, mean = rec.x0, None
            if done and g == len(groups) - 1 and rec.index == steps and not final:
                x0 = torch.cat([*(d.x0 for d in done), rec.x0])  # the run's last record
            elif done:
                mean = (done_sum + rec.x0.sum(dim=0, keepdim=True)) / ids.stop
            yield SamplerStep(g * steps + rec.index, total, rec.t, x0,
                              joined_misfit([*done, rec]), mean)
        done.append(rec)
        done_sum = done_sum + rec.x0.sum(dim=0, keepdim=True)
    if final:  # the pass corrects the posterior mean; the spread stays
        samples = torch.cat([d.x0 for d in done])
        mean = samples.mean(dim=0, keepdim=True)
        # at the steps' precision: its network output ε enters x̂0 scaled by the small
        # σ̄_t of the pass, so bf16 rounding moves the result by ≤ 0.3 % of its peak and
        # the mean PSNR of 8 dev inputs by −0.005 dB, and float32 took twice as long on a
        # CPU (/work/exp12/final_bf16.py, session 16)
        corrected, t = final_denoise(denoiser, mean, problem, scheduler, final_noise,
                                     autocast_dtype=autocast_dtype,
                                     mc_error=mean_mc_error(samples))
        # in place: ``samples`` is this pass's own copy (4096²: 512 MB of temporaries fewer)
        yield SamplerStep(total, total, round(t), samples.sub_(mean).add_(corrected),
                          joined_misfit(done), corrected)


__all__ = ["FINAL_PASS_IMAGES", "Denoiser", "Guidance", "NUM_TRAIN_TIMESTEPS", "Problem",
           "SamplerStep", "final_denoise", "guided_ddim", "guided_ddim_grouped", "sample_groups"]
