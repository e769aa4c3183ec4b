"""Which axes of an image are space, and which are channels or time.

Deconvolution acts along space only: Y and X (2D mode) or Z, Y and X (3D mode). Channels
(C, or S for interleaved samples) and time points (T) are separate images, each restored on
its own, never blurred into one another. With the axes known (from the file through
:func:`pkl_dg.io.open_image`, from napari's axis labels through :func:`axes_from_labels`,
or given by the caller), :func:`spatial_last` gives the order that puts every other axis in
front, so the blocks of :func:`pkl_dg.restoration.restore_iter` are one channel's plane or
volume. Without axes, :func:`check_unlabelled_layout` refuses the layouts that are
ambiguous, naming the axis that looks like channels and saying what to do.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: letters an axes string may use: T time, C channel, S interleaved samples (channels),
#: Z, Y, X space, Q an unnamed leading axis (iterated like T or C)
AXIS_LETTERS = "TCSQZYX"
#: a last axis this short (after two image-sized ones) is taken for interleaved channels
MAX_INTERLEAVED = 4
#: in 3D mode, a third-last axis this short with a longer axis before it is ambiguous:
#: it may be the channel axis of an ImageJ ZCYX hyperstack
MAX_AMBIGUOUS_Z = 4


def check_axes(axes: str, shape: Sequence[int], mode: str) -> str:
    """Validate an axes string (one letter per axis) for a restoration; returns it upper-case.

    Raises
    ------
    ValueError
        Wrong length, unknown or repeated letters, Y and X not both present, or 3D mode on an
        image without a Z axis (the message names the channel axis if there is one).
    """
    a = str(axes).upper()
    if len(a) != len(shape):
        raise ValueError(f"axes {axes!r} name {len(a)} axes but the image has {len(shape)} "
                         f"(shape {tuple(shape)})")
    bad = sorted(set(a) - set(AXIS_LETTERS))
    if bad or len(set(a.replace("Q", ""))) != len(a.replace("Q", "")):
        raise ValueError(f"axes {axes!r}: use each of T, C, S, Z, Y, X at most once "
                         f"(Q for unnamed axes)")
    if "Y" not in a or "X" not in a:
        raise ValueError(f"axes {axes!r} must include Y and X")
    if mode == "3d" and "Z" not in a:
        ch = _channel_note(a, shape)
        raise ValueError(f"3D deconvolution needs a Z axis, but the image's axes are {a} "
                         f"(shape {tuple(shape)}){ch}: use 2D mode, which restores every "
                         "YX plane of every channel on its own")
    return a


def _channel_note(axes: str, shape: Sequence[int]) -> str:
    for letter in "CS":
        if letter in axes:
            i = axes.index(letter)
            return f"; axis {i} ({letter}, {shape[i]} channels) is channels, not Z"
    return ""


def spatial_last(axes: str, mode: str) -> tuple[int, ...]:
    """The axis order that puts non-spatial axes first (in their order), then Z (3D mode;
    in 2D mode Z is iterated like the others), then Y, X."""
    block = "ZYX" if mode == "3d" else "YX"
    lead = [i for i, c in enumerate(axes) if c not in block]
    return tuple(lead + [axes.index(c) for c in block])


def channel_count(axes: str, shape: Sequence[int]) -> int:
    """Number of channels (C or S axis; 1 without one)."""
    for letter in "CS":
        if letter in axes:
            return int(shape[axes.index(letter)])
    return 1


def check_unlabelled_layout(shape: Sequence[int], mode: str, min_side: int = 8) -> None:
    """Refuse array layouts whose channel axis would be deconvolved when no axes are given.

    ``(Y, X, C)`` with C ≤ :data:`MAX_INTERLEAVED` (interleaved channels: C would be taken
    for X), and in 3D mode ``(…, Z, C, Y, X)`` with C ≤ :data:`MAX_AMBIGUOUS_Z` after a longer
    axis (an ImageJ hyperstack: C would be taken for Z).

    Raises
    ------
    ValueError
        Naming the axis that looks like channels and what to do.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) >= 3 and shape[-1] <= MAX_INTERLEAVED and min(shape[-3:-1]) >= min_side:
        n = shape[-1]
        colour = " (RGB(A) colour, or interleaved channels)" if n in (3, 4) else ""
        raise ValueError(
            f"image of shape {shape} looks like (Y, X, C): {n} channels interleaved in its "
            f"last axis (axis {len(shape) - 1}){colour}. Deconvolution needs one fluorescence "
            "channel per image: move the channel axis first (numpy: np.moveaxis(image, -1, "
            "0), each channel is then restored on its own) or pass axes='YXC', or split the "
            "channels (napari: right-click the layer > Split Stack).")
    if mode == "3d" and len(shape) >= 4 and shape[-3] <= MAX_AMBIGUOUS_Z < shape[-4]:
        raise ValueError(
            f"image of shape {shape}: the axis taken as Z (axis {len(shape) - 3}) has only "
            f"{shape[-3]} planes after an axis of {shape[-4]}; it looks like the channel axis "
            "of a (Z, C, Y, X) hyperstack, and 3D deconvolution would blur the channels into "
            "each other. Give the axes (e.g. axes='ZCYX'; files read with pkl_dg.io carry "
            "them) or move the channel axis first.")


def axes_from_labels(labels: Sequence[str]) -> str | None:
    """Axes letters from napari axis labels (``'z'``, ``'c'``/``'channel'``, ``'t'``/
    ``'time'``, ``'y'``, ``'x'``; napari's default numeric labels give None)."""
    names = {"t": "T", "time": "T", "c": "C", "ch": "C", "channel": "C", "channels": "C",
             "s": "S", "z": "Z", "y": "Y", "x": "X"}
    out = []
    for label in labels:
        letter = names.get(str(label).strip().lower())
        if letter is None:
            if str(label).lstrip("-").isdigit():
                return None
            letter = "Q"
        out.append(letter)
    a = "".join(out)
    return a if "Y" in a and "X" in a else None


def arrange(image, axes: str | None, mode: str, min_side: int = 8):
    """The image with its spatial axes last, for :func:`pkl_dg.restoration.restore_iter`.

    Returns ``(view, axes, back)``: ``view`` is ``image`` transposed (lazily for dask) so
    that channels, time and other axes come first and the block axes (YX, or ZYX in 3D mode)
    last; ``axes`` the validated axes of ``view`` (None when none were given); ``back`` the
    permutation that restores the caller's order (None when nothing moved). Without axes the
    layout is checked by :func:`check_unlabelled_layout`.
    """
    shape = tuple(int(n) for n in np.shape(image))
    if axes is None:
        check_unlabelled_layout(shape, mode, min_side)
        return image, None, None
    a = check_axes(axes, shape, mode)
    order = spatial_last(a, mode)
    if order == tuple(range(len(a))):
        return image, a, None
    view = image.transpose(order) if hasattr(image, "transpose") else np.transpose(image, order)
    back = tuple(int(i) for i in np.argsort(order))
    return view, "".join(a[i] for i in order), back


def put_back(arr, back: tuple[int, ...] | None):
    """Undo :func:`arrange`'s permutation on a result array (None passes through)."""
    if arr is None or back is None:
        return arr
    return np.ascontiguousarray(np.transpose(arr, back))


def result_axes(axes: str, back: tuple[int, ...] | None) -> str:
    """The axes of a result put back by :func:`put_back` (the caller's order), from the
    arranged ``axes`` and the permutation ``back``."""
    return axes if back is None else "".join(axes[i] for i in back)


def layer_axes_problem(name: str, labels: Sequence[str], shape: Sequence[int], mode: str
                       ) -> str | None:
    """Why a napari layer cannot be restored as laid out (None when it can).

    The widget restores the last two axes as Y, X (and the third-last as Z in 3D mode).
    Axis labels that name a channel or time axis there (``'c'``, ``'channel'``, ``'t'``, …),
    or, without labels, a (Z, C, Y, X)-looking shape in 3D mode, would make it deconvolve
    along channels: the message names the axis and says what to do in napari.
    """
    shape = tuple(int(n) for n in shape)
    labels = [str(x) for x in labels][-len(shape):] if len(shape) else []
    axes = axes_from_labels(labels) if labels else None
    block = 3 if mode == "3d" else 2
    what = {"C": "channels", "S": "channels", "T": "time points"}
    split = ("split the channels into their own layers (right-click the layer > Split "
             "Stack on that axis, or open the file with its channel axis split)")
    if axes is not None:
        for i, letter in enumerate(axes[-block:]):
            if letter in what:
                pos = len(shape) - block + i
                return (f"'{name}' has axes ({', '.join(labels)}): axis {pos} ('{labels[pos]}', "
                        f"{shape[pos]} {what[letter]}) is where deconvolution expects "
                        f"{'ZYX'[-block:][i]}, so it would blur the {what[letter]} into each "
                        f"other. {'Choose 2D, or ' if block == 3 else ''}{split}.")
        return None
    try:
        check_unlabelled_layout(shape, mode)
    except ValueError:
        if mode == "3d" and len(shape) >= 4 and shape[-3] <= MAX_AMBIGUOUS_Z < shape[-4]:
            return (f"'{name}' ({' × '.join(map(str, shape))}): the axis taken as Z (axis "
                    f"{len(shape) - 3}) has only {shape[-3]} planes after an axis of "
                    f"{shape[-4]}; it looks like the channel axis of a (Z, C, Y, X) "
                    f"hyperstack, and 3D deconvolution would blur the channels into each "
                    f"other: {split}, or choose 2D.")
        return (f"'{name}' ({' × '.join(map(str, shape))}) looks like (Y, X, C), with "
                f"{shape[-1]} channels in its last axis: {split}.")
    return None
