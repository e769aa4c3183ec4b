"""Restoring a multichannel image channel by channel, each channel with its own PSF.

Each fluorophore has its own emission wavelength, so its own PSF. :func:`restore_channels`
splits the channel axis, restores every channel with :func:`pkl_dg.restoration.restore_iter`
(its PSF, or the settings' PSF where none is given for it) and puts the results back along
the same axis. Channels are never deconvolved along; their metadata are kept per channel.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from pkl_dg.axes import check_axes
from pkl_dg.restoration import RestoreResult, restore_iter
from pkl_dg.settings import RestoreSettings
from pkl_dg.settings_rules import settings_record


def restore_channels(image: Any, axes: str, psfs: Sequence[np.ndarray | None] | None = None,
                     settings: RestoreSettings | None = None, *,
                     progress: Callable | None = None, **overrides: Any) -> RestoreResult:
    """Restore every channel of ``image`` on its own, each with its own PSF.

    Parameters
    ----------
    image
        Array in camera units with a channel axis (``C`` or ``S`` in ``axes``).
    axes
        One letter per axis, e.g. ``"ZCYX"`` (see :func:`pkl_dg.axes.check_axes`).
    psfs
        One PSF per channel (an array, or None for the settings' PSF model); None uses the
        settings' PSF for every channel.
    settings, overrides
        As for :func:`~pkl_dg.restoration.restore_iter` (the same for every channel).
    progress
        Called with every ``StepRecord`` of every channel.

    Returns
    -------
    RestoreResult
        ``image`` (and ``std`` where every channel has one) in the input's axis order;
        ``metadata["channels"]`` holds each channel's metadata, in channel order.

    Raises
    ------
    ValueError
        No channel axis in ``axes``, or a number of PSFs that is not the number of channels.
    """
    s = settings or RestoreSettings()
    if overrides:
        s = s.replace(**overrides)
    a = check_axes(axes, np.shape(image), s.mode)
    letter = next((c for c in "CS" if c in a), None)
    if letter is None:
        raise ValueError(f"axes {a} have no channel axis (C): restore the image directly")
    axis = a.index(letter)
    n = int(np.shape(image)[axis])
    psfs = list(psfs) if psfs is not None else [None] * n
    if len(psfs) != n:
        raise ValueError(f"{len(psfs)} PSFs given for {n} channels (axis {axis}, "
                         f"{letter}): give one per channel, None for the settings' PSF")
    rest = a.replace(letter, "")
    results = []
    for c in range(n):
        index = tuple(slice(None) if i != axis else c for i in range(len(a)))
        channel = np.asarray(image[index])
        results.append(restore_iter(channel, s, psf=psfs[c], axes=rest).finish(progress))
    out = np.stack([r.image for r in results], axis=axis)
    stds = [r.std for r in results]
    std = np.stack(stds, axis=axis) if all(x is not None for x in stds) else None
    meta = {"channels": [{"channel": c, "psf_given": psfs[c] is not None, **r.metadata}
                         for c, r in enumerate(results)],
            "axes": a, "channel_axis": axis, **settings_record(s),
            "units": "photons",
            "seconds": round(sum(r.metadata.get("seconds", 0.0) for r in results), 3)}
    return RestoreResult(out, s, meta, std)
