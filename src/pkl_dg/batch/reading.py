"""Reading an input's blocks on a Dask worker, and the calibration all its blocks share.

Messages tifffile logs while a file is opened or read (``ImageJ series metadata invalid
…``) are collected by :func:`reader_notes` instead of printed: a batch says them once per
input, in its own words. Each worker process keeps the latest opened input and the calibration estimated for each
input in :data:`_OPEN`. A read that fails says which block of which file and that the file
is truncated or damaged, with the reader's own error in brackets.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

#: per-process cache: the open input, and each input's calibration and its warnings
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
    """An input as :func:`~pkl_dg.inputs.resolve_calibration` reads it: its shape and
    dtype, and a plane at a leading index read only when asked for."""

    def __init__(self, path: str) -> None:
        data = _image(path).data
        self.path, self.shape, self.dtype = path, tuple(data.shape), data.dtype

    def __getitem__(self, index) -> np.ndarray:
        return read_block(self.path, tuple(int(i) for i in index))


def input_calibration(path: str, settings) -> Any:
    """The settings with the calibration one ``restore`` of the whole input would use.

    With calibration 'auto', restore estimates it on the plane nearest the middle of the
    input's leading axes that is not all zero (:func:`pkl_dg.inputs.resolve_calibration`);
    every block and chunk of the input must share it (an estimate per chunk would give each
    its own gain), so it is estimated here once per input and passed on as 'manual' values.
    Cached per process and input, with the warnings the estimate gave (every block of the
    input carries them, see :func:`input_calibration_warnings`).

    Raises
    ------
    ValueError
        Every plane of the input is all zero: there is nothing to restore.
    """
    if settings.calibration != "auto":
        return settings
    from pkl_dg.inputs import resolve_calibration

    cal = _OPEN["calibrations"].get(path)
    if cal is None:
        planes = _Planes(path)
        image = read_block(path, ()) if len(planes.shape) == 2 else planes
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cal = resolve_calibration(image, settings)
        _OPEN["calibrations"][path] = cal
        _OPEN["calibration_warnings"][path] = {w.category.__name__: str(w.message)
                                                for w in caught}
    return settings.replace(calibration="manual", gain=cal.gain, offset=cal.offset,
                            read_noise=cal.read_noise)


def input_calibration_warnings(path: str) -> dict[str, str]:
    """The warnings of the input's calibration estimate (kind → text; empty if none)."""
    return dict(_OPEN["calibration_warnings"].get(path, {}))


def input_calibration_estimate(path: str) -> Any:
    """The input's :class:`~pkl_dg.calibration.Calibration` estimate (after
    :func:`input_calibration`), its source ("estimated" or "assumed …") included."""
    return _OPEN["calibrations"][path]


def input_calibration_dict(path: str) -> dict[str, Any]:
    """The input's calibration estimate as metadata (after :func:`input_calibration`)."""
    return input_calibration_estimate(path).to_dict()
