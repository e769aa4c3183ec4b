"""Reading an input's blocks on a Dask worker, and the calibration its blocks share (each
channel's own where the input has several).

Messages tifffile logs while a file is opened or read (``ImageJ series metadata invalid
…``) are collected by :func:`reader_notes` instead of printed: a batch says them once per
input, in its own words. Each worker process keeps the latest opened input and the
calibration estimated for each input (for each channel where it has several) in
:data:`_OPEN`. A read that fails says which block of which file and that the file is
truncated or damaged, with the reader's own error in brackets.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

#: per-process cache: the open input, and each input's calibration and its warnings, keyed
#: by (path, channel) (channel None: one estimate for the whole input)
_OPEN: dict[str, dict] = {"images": {}, "calibrations": {}, "calibration_warnings": {}}


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text not in self.into:
            self.into.append(text)


@contextmanager
def reader_notes() -> Iterator[list[str]]:
    """Collect (instead of printing) what tifffile logs in this block; yields the list."""
    notes: list[str] = []
    log = logging.getLogger("tifffile")
    handler, propagate = _Collect(notes), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield notes
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _image(path: str):
    from pkl_dg.io import open_image

    img = _OPEN["images"].get(path)
    if img is None:
        img = open_image(path)
        _OPEN["images"] = {path: img}  # keep only the latest file open
    return img


def read_block(path: str, index: tuple[int, ...],
               box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """One plane/volume of ``path`` at leading ``index`` (optionally a YX box), numpy.

    Raises
    ------
    ValueError
        The file ends early or is damaged where this block lies (the reader's own error in
        brackets).
    OSError
        The file cannot be read from this worker.
    """
    import dask

    img = _image(path)
    sel = tuple(index) + ((Ellipsis,) if box is None else
                          (Ellipsis, slice(box[0], box[1]), slice(box[2], box[3])))
    at = str(index[0]) if len(index) == 1 else str(tuple(index))
    where = f"{'plane/volume ' + at if index else 'the image'} of {os.path.basename(path)}"
    try:
        with dask.config.set(scheduler="synchronous"):  # read here, not through the cluster
            return np.asarray(img.data[sel])
    except OSError as exc:
        raise OSError(f"cannot read {where} ({type(exc).__name__}: {exc}): check that the "
                      "workers see the file") from exc
    except Exception as exc:  # the readers raise many types on a file that ends early
        raise ValueError(f"cannot read {where}: the file is truncated or damaged "
                         f"({type(exc).__name__}: {exc})") from exc


class _Planes:
    """An input (or one channel of it) as :func:`~pkl_dg.inputs.resolve_calibration` reads
    it: its shape and dtype, and a plane at a leading index read only when asked for.

    With ``channel`` = (axis, k), the input's channel k alone: its shape lacks that axis,
    and a plane's index gets k put back in before it is read."""

    def __init__(self, path: str, channel: tuple[int, int] | None = None) -> None:
        data = _image(path).data
        shape = tuple(data.shape)
        if channel is not None:
            shape = shape[:channel[0]] + shape[channel[0] + 1:]
        self.path, self.shape, self.dtype, self.channel = path, shape, data.dtype, channel

    def __getitem__(self, index) -> np.ndarray:
        index = tuple(int(i) for i in index)
        if self.channel is not None:
            c, k = self.channel
            index = index[:c] + (k,) + index[c:]
        return read_block(self.path, index)


def channel_axis(axes: str | None, shape: tuple[int, ...], settings) -> int | None:
    """The position of the C axis among an input's leading axes when each channel gets its
    own calibration estimate: calibration 'auto' and a C axis of more than one channel
    before the block axes (YX, or ZYX in 3D mode), as
    :func:`pkl_dg.inputs.block_calibrations` decides for ``restore``; else None (one
    estimate for the whole input, or the settings' values)."""
    return _channel_axis(axes, shape, settings.mode) if settings.calibration == "auto" \
        else None


def _channel_axis(axes: str | None, shape: tuple[int, ...], mode: str) -> int | None:
    from pkl_dg.inputs import channel_axis as leading_channel_axis

    return leading_channel_axis(axes, shape, 3 if mode == "3d" else 2)


def _calibration_key(path: str, mode: str, index: tuple[int, ...]) -> tuple[str, int | None]:
    """The cache key of a block's calibration estimate: (input, the block's channel, or None
    where one estimate serves the whole input)."""
    img = _image(path)
    c = _channel_axis(img.axes, tuple(img.data.shape), mode)
    return path, (None if c is None or len(index) <= c else int(index[c]))


def input_calibration(path: str, settings, index: tuple[int, ...] = ()) -> Any:
    """The settings with the calibration one ``restore`` of the whole input would use for
    the block at leading ``index``.

    With calibration 'auto', restore estimates it on the plane nearest the middle of the
    input's leading axes that is not all zero (:func:`pkl_dg.inputs.resolve_calibration`);
    every block and chunk of the input must share it (an estimate per chunk would give each
    its own gain), so it is estimated here once per input and passed on as 'manual' values.
    An input with several channels (a C axis among its leading axes, see
    :func:`channel_axis`) gets one estimate per channel, as restore gives it
    (:func:`pkl_dg.inputs.block_calibrations`: each detector has its own gain and offset),
    on that channel's plane nearest the middle of its other leading axes that is not all
    zero; each block uses its channel's. Cached per process and input (and channel), with
    the warnings the estimate gave (every block it applies to carries them, see
    :func:`input_calibration_warnings`).

    Raises
    ------
    ValueError
        Every plane of the input (or of the block's channel) is all zero: there is nothing
        to restore.
    """
    if settings.calibration != "auto":
        return settings
    from pkl_dg.inputs import resolve_calibration

    key = _calibration_key(path, settings.mode, index)
    cal = _OPEN["calibrations"].get(key)
    if cal is None:
        img = _image(path)
        channel = None if key[1] is None else (
            _channel_axis(img.axes, tuple(img.data.shape), settings.mode), key[1])
        planes = _Planes(path, channel)
        if len(planes.shape) > 2:
            image = planes
        else:  # the input (or its channel) is one plane
            image = read_block(path, () if channel is None else (channel[1],))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cal = resolve_calibration(image, settings)
            except ValueError as exc:
                if channel is None:
                    raise
                cal = exc  # a channel all zero: its blocks are empty; not read again per block
        _OPEN["calibrations"][key] = cal
        _OPEN["calibration_warnings"][key] = {w.category.__name__: str(w.message)
                                               for w in caught}
    if isinstance(cal, Exception):
        raise ValueError(str(cal))
    return settings.replace(calibration="manual", gain=cal.gain, offset=cal.offset,
                            read_noise=cal.read_noise)


def input_calibration_warnings(path: str, index: tuple[int, ...] = (),
                               mode: str = "2d") -> dict[str, str]:
    """The warnings of the calibration estimate (after :func:`input_calibration`) of the
    input, or of the channel of the block at leading ``index`` (``mode``: the settings'
    mode, which decides the leading axes) where the input has several: kind → text; empty
    if none."""
    return dict(_OPEN["calibration_warnings"].get(_calibration_key(path, mode, index), {}))


def calibration_channel(path: str, settings, index: tuple[int, ...]) -> int | None:
    """The channel whose own calibration estimate the block at leading ``index`` uses
    (:func:`channel_axis`), or None (one estimate for the whole input, or the settings'
    values)."""
    return _calibration_key(path, settings.mode, index)[1] \
        if settings.calibration == "auto" else None


def input_calibration_estimate(path: str, index: tuple[int, ...] = (),
                               mode: str = "2d") -> Any:
    """The :class:`~pkl_dg.calibration.Calibration` estimate (after
    :func:`input_calibration`) of the input, or of the channel of the block at ``index``
    (see :func:`input_calibration_warnings`); its source ("estimated" or "assumed …")
    included. None for a channel that holds only zeros (nothing to estimate on)."""
    cal = _OPEN["calibrations"][_calibration_key(path, mode, index)]
    return None if isinstance(cal, Exception) else cal


def input_calibration_dict(path: str, index: tuple[int, ...] = (),
                           mode: str = "2d") -> dict[str, Any] | None:
    """The input's (or the block's channel's) calibration estimate as metadata (after
    :func:`input_calibration`); None for a channel that holds only zeros."""
    cal = input_calibration_estimate(path, index, mode)
    return None if cal is None else cal.to_dict()


def calibration_record(axes: str | None, shape: tuple[int, ...], settings: Any,
                       blocks_meta: list[dict]) -> dict[str, Any]:
    """The output metadata's ``calibration``, as restore records it, from the blocks'.

    Where the input's channels were estimated one by one (:func:`channel_axis`):
    ``{"source": "estimated per channel", "channels": [...]}``, a channel that holds only
    zeros (nothing estimated) None in its place; else the input's one estimate (every block
    carries it) or, with calibration 'manual', the values given.
    """
    from pkl_dg.calibration import Calibration

    c = channel_axis(axes, shape, settings)
    if c is None:
        return next((b["calibration"] for b in blocks_meta if "calibration" in b),
                    Calibration(gain=settings.gain, offset=settings.offset,
                                read_noise=settings.read_noise).to_dict())
    found: dict[int, dict] = {}
    for b in blocks_meta:
        if "calibration" in b:
            found.setdefault(int(b["index"][c]), b["calibration"])
    return {"source": "estimated per channel",
            "channels": [found.get(k) for k in range(shape[c])]}
