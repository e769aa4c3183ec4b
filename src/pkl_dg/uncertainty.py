"""Whether a run has a per-pixel uncertainty output, and the metadata line that says so.

Sampling methods (the guided and unguided diffusion prior) draw posterior samples; the
result is their mean, and their per-pixel standard deviation (``RestoreResult.std``, the CLI's
``_std.tif``, the widget's std layer) is the spread of single samples: the mean's own
sampling error is std/√N, and with few samples the std is itself noisy (≈ 1/√(2(N − 1)) of
its value: 0.41 for N = 4). It reflects the noise and the prior's freedom under the forward
model the run assumes, not errors of that model (PSF, calibration, background), so it is
not a calibrated error bar (README, "Reading the posterior std", has a measured example).
Richardson–Lucy is deterministic: it has no uncertainty output (no ``_std.tif``, no std
layer), and the metadata's ``posterior_std`` says why instead of writing an empty or NaN
image.
"""

from __future__ import annotations

from pkl_dg.settings import RestoreSettings
from pkl_dg.settings_rules import is_guided, uses_prior


def has_posterior_std(settings: RestoreSettings) -> bool:
    """True when a run gives a meaningful per-pixel standard deviation: a sampling method
    (not Richardson–Lucy, which is deterministic) with at least two posterior samples."""
    return uses_prior(settings) and settings.samples > 1


def posterior_std_note(settings: RestoreSettings) -> str:
    """What the run's uncertainty output is, or why there is none (for the metadata)."""
    if not uses_prior(settings):
        return ("none: Richardson–Lucy is deterministic and draws no posterior samples, so "
                "it has no per-pixel standard deviation (the 'Posterior samples' setting "
                "does not apply to it)")
    if settings.samples < 2:
        return ("none: one posterior sample was drawn; set 'Posterior samples' to 2 or more "
                "for a per-pixel standard deviation")
    n = settings.samples
    mean = ("their mean after a final denoising pass" if is_guided(settings)
            and settings.final_noise > 0 else "their mean")
    return (f"per-pixel standard deviation of {n} single posterior samples (photons, divided "
            f"by N − 1); the result is {mean}; a mean's own sampling error is this / √{n}. "
            "Noise and the prior's freedom under the assumed forward model, not errors of "
            "that model (PSF, calibration, background): not a calibrated error bar (README, "
            "'Reading the posterior std')")
