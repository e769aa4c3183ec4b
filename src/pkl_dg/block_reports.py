"""What a restoration reports about its blocks (planes or volumes): the automatic
Richardson–Lucy count's metadata, and warnings given once per run with a summary for
stacks, so that a stack of 100 planes with the same problem says so once, not 100 times."""

from __future__ import annotations

import warnings
from typing import Any, Iterator, TypeVar

from pkl_dg.guidance.stopping import MAX_ITERATIONS as RL_AUTO_MAX
from pkl_dg.guidance.stopping import AutoStop, ModelMismatchWarning, misfit_note
from pkl_dg.inputs import EmptyPlaneWarning
from pkl_dg.missing import MissingDataWarning
from pkl_dg.negatives import NegativeDataWarning
from pkl_dg.saturation import SaturationWarning

__all__ = ["auto_info", "block_list", "block_name", "listed_from_first_frame",
           "say_empty_blocks", "summarise_block_problems"]

Frame = TypeVar("Frame")


def block_name(index: tuple[int, ...], axes: str | None) -> str:
    """How messages name a block: ``"time point 0"``, ``"channel 1, plane 3"`` by the axes
    before the block's (``axes``: the arranged image's, block axes last), ``"plane (0, 3)"``
    without axes, and ``""`` for a single image."""
    if not index:
        return ""
    words = {"T": "time point", "C": "channel", "Z": "plane", "S": "sample"}
    if axes and len(axes) >= len(index) and all(a in words for a in axes[:len(index)]):
        return ", ".join(f"{words[a]} {i}" for a, i in zip(axes, index))
    return f"plane {tuple(int(i) for i in index)}"


def auto_info(rule: AutoStop, where: str = "", warn: bool = True) -> dict[str, Any]:
    """Metadata of an automatic RL count. A fit that stalled far above the noise adds
    ``rl_auto_misfit`` (:func:`~pkl_dg.guidance.stopping.misfit_note`) and, with ``warn``
    (the run's first such block), a :class:`ModelMismatchWarning`."""
    note = misfit_note(rule)
    if note is not None and warn:
        warnings.warn(f"{where + ': ' if where else ''}{note[0].upper()}{note[1:]}",
                      ModelMismatchWarning, stacklevel=5)
    # an accelerated count (PKL's budget pass) also in plain iterations
    plain = ({"rl_auto_plain_equivalent": rule.equivalent} if rule.accelerated else {})
    return {"rl_auto_iterations": rule.k, **plain,
            "rl_auto_deviance_ratio": round(rule.ratio, 4),
            "rl_auto_noise_target": round(rule.target, 4),
            "rl_auto_stop": rule.reason or f"cap of {RL_AUTO_MAX} iterations",
            **({"rl_auto_misfit": note} if note else {})}


def summarise_block_problems(flagged: dict[str, int], blocks: int) -> None:
    """One warning per kind of data problem found in more than one block of a stack."""
    words = {"missing": ("NaN or infinite values (no measurement)", MissingDataWarning),
             "saturated": ("saturated pixels", SaturationWarning),
             "negative_values": ("negative values", NegativeDataWarning),
             "rl_auto_misfit": ("a data fit stalled far above the noise", ModelMismatchWarning)}
    for kind, n in flagged.items():
        if n > 1:
            what, category = words[kind]
            warnings.warn(f"{what} in {n} of {blocks} planes/volumes (handled as warned for "
                          f"the first); each one's numbers are in the metadata (blocks).",
                          category, stacklevel=3)


def block_list(indices: list[list[int]], most: int = 12) -> str:
    """Block indices (into the leading axes) as a message lists them: ``"2, 5"``,
    ``"(0, 2), (1, 2)"``, the first ``most`` and how many more."""
    shown = ", ".join(str(tuple(i)) if len(i) > 1 else str(i[0]) for i in indices[:most])
    return shown + (f" and {len(indices) - most} more" if len(indices) > most else "")


def say_empty_blocks(empty: list[list[int]], blocks: int) -> None:
    """Warn once that ``empty`` (indices into the leading axes) of ``blocks`` planes or
    volumes held only zeros and were written as zeros, not restored."""
    warnings.warn(f"{len(empty)} of {blocks} planes/volumes hold only zeros "
                  f"({block_list(empty)}): they are written as zeros, not restored (listed "
                  "in the metadata as empty_blocks).", EmptyPlaneWarning, stacklevel=3)


def listed_from_first_frame(frames: Iterator[Frame], blocks: list[dict[str, Any]],
                            info: dict[str, Any]) -> Iterator[Frame]:
    """Yield a block's ``frames``, adding its metadata ``info`` to the run's ``blocks`` as
    the first one comes.

    A run cancelled (or failed) while a block was still preparing (calibration,
    background, its first step) then does not list that block: it yielded no frame, and a
    stopped stack names such blocks not started (the napari layer's NaN planes,
    ``blocks_not_restored``). ``info`` is still filled in as the block runs.

    Parameters
    ----------
    frames : iterator
        The block's frames.
    blocks : list of dict
        The run's ``metadata["blocks"]``.
    info : dict
        The block's metadata, appended to ``blocks`` once.

    Yields
    ------
    object
        The frames of ``frames``, unchanged.
    """
    for n, frame in enumerate(frames):
        if n == 0:
            blocks.append(info)
        yield frame
