"""Whether a run has a per-pixel uncertainty output, and the metadata line that says so.

Sampling methods (the guided and unguided diffusion prior) draw posterior samples; their
per-pixel standard deviation shows where the samples disagree. Richardson–Lucy is
deterministic: it has no uncertainty output (no ``_std.tif``, no std layer), and the
metadata's ``posterior_std`` says why instead of writing an empty or NaN image.
"""

from __future__ import annotations

from pkl_dg.settings import RestoreSettings
from pkl_dg.settings_rules import uses_prior


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
    return f"per-pixel standard deviation over {settings.samples} posterior samples (photons)"
