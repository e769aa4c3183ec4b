"""When a setting has an effect, and what follows from that.

Each field of :class:`~pkl_dg.settings.RestoreSettings` says in its ``applies_when`` when it
has an effect (see :mod:`pkl_dg.settings`). :func:`applies` evaluates it; the widget shows a
control only where its field applies, the CLI warns about a flag given where it does not, and
a result's metadata records :func:`effective` settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pkl_dg.settings import (CAMERA_FIELDS, GUIDED_METHODS, IMAGE_FIELDS, PRIOR_METHODS,
                             RestoreSettings)

_APPLIES_WHEN = {f.name: f.metadata["applies_when"] for f in dataclasses.fields(RestoreSettings)}


def _value(settings: RestoreSettings | Mapping[str, Any], name: str) -> Any:
    return settings[name] if isinstance(settings, Mapping) else getattr(settings, name)


def uses_prior(settings: RestoreSettings | Mapping[str, Any]) -> bool:
    """True when the method runs the diffusion prior (every method but Richardson–Lucy)."""
    return _value(settings, "method") in PRIOR_METHODS


def is_guided(settings: RestoreSettings | Mapping[str, Any]) -> bool:
    """True when the method pulls the prior's samples toward the data (PKL, Anscombe, L2)."""
    return _value(settings, "method") in GUIDED_METHODS


def uses_proximal_step(settings: RestoreSettings | Mapping[str, Any]) -> bool:
    """True when guidance takes PKL's proximal step (method 'pkl', step rule 'proximal'),
    which starts from RL with the automatic stop (other methods take Poisson steps)."""
    return _value(settings, "method") == "pkl" and _value(settings, "step_rule") == "proximal"


def applies(name: str, settings: RestoreSettings | Mapping[str, Any]) -> bool:
    """Whether setting ``name`` has an effect on a run with ``settings``.

    Parameters
    ----------
    name
        A field of :class:`RestoreSettings`.
    settings
        The settings of the run, or a mapping holding at least the settings that
        ``name``'s ``applies_when`` names (e.g. a widget's current choices).
    """
    alternatives = _APPLIES_WHEN[name]
    return not alternatives or any(
        all(_value(settings, key) in allowed for key, allowed in alt.items())
        for alt in alternatives)


def applies_text(name: str) -> str:
    """When setting ``name`` applies, in words ("method rl", "method anscombe/l2 with
    step_rule poisson/adaptive; or …"); "" when always."""
    return "; or ".join(" with ".join(f"{key} {'/'.join(allowed)}" for key, allowed in alt.items())
                        for alt in _APPLIES_WHEN[name])


def calibration_implied(given: dict[str, Any]) -> dict[str, Any]:
    """``given`` (settings a user set, e.g. CLI flags or keyword overrides) with
    ``calibration = "manual"`` added when it sets a camera value (offset, gain, read noise)
    but not the calibration: a user who types a gain means it to be used."""
    if "calibration" not in given and any(k in given for k in CAMERA_FIELDS):
        return {**given, "calibration": "manual"}
    return given


def effective(settings: RestoreSettings) -> RestoreSettings:
    """A copy of ``settings`` with every setting that has no effect on the run (see
    :func:`applies`) at its default, but for the image's own sampling
    (:data:`~pkl_dg.settings.IMAGE_FIELDS`): what a result's metadata records, so that a
    value left over from an earlier choice (a PSF file, then the Gaussian model) does not
    read as used."""
    unused = {f.name: f.default for f in dataclasses.fields(settings)
              if f.name not in IMAGE_FIELDS and not applies(f.name, settings)
              and getattr(settings, f.name) != f.default}
    return dataclasses.replace(settings, **unused) if unused else settings


def settings_record(settings: RestoreSettings) -> dict[str, Any]:
    """What a result's metadata records of its settings: ``settings``, the
    :func:`effective` ones, and ``settings_without_effect``, the names of those that had no
    effect on this run (recorded at their defaults): with the automatic calibration the
    camera fields read e.g. gain 1 while the gain used is in the metadata's
    ``calibration``."""
    return {"settings": effective(settings).to_dict(),
            "settings_without_effect": [f.name for f in dataclasses.fields(settings)
                                        if f.name not in IMAGE_FIELDS
                                        and not applies(f.name, settings)]}
