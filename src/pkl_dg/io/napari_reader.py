"""napari reader for OME-TIFF and OME-Zarr files (the outputs of ``pkl-dg batch``).

Opens the image lazily with :func:`pkl_dg.io.open_image` and gives the layer the file's
physical scale (µm per pixel and per Z plane), its units and axis labels, and the pkl-dg
metadata when there is any; a file with several channels opens as one layer per channel,
named after it. Contributed in ``napari.yaml`` for ``*.ome.tif``,
``*.ome.tiff`` and ``*.zarr``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

SUFFIXES = (".ome.tif", ".ome.tiff", ".zarr")
#: napari's built-in colormaps a saved layer's display may name (the core does not import
#: napari; a test checks napari knows each)
COLORMAPS = ("gray", "gray_r", "red", "green", "blue", "cyan", "magenta", "yellow",
             "inferno", "magma", "plasma", "viridis", "turbo", "twilight", "twilight_shifted",
             "hsv", "bop blue", "bop orange", "bop purple", "I Blue", "I Bordeaux", "I Forest",
             "I Orange", "I Purple")
#: a saved layer of at most this many pixels gets its contrast from its data
CONTRAST_FROM_DATA = 1 << 24


def get_reader(path: str | list[str]) -> Callable | None:
    """The reader function for ``path``, or None when this plugin does not read it."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not str(path).lower().rstrip("/").endswith(SUFFIXES):
        return None
    return read_layers


def layer_kwargs(img) -> dict[str, Any]:
    """Scale, units and axis labels of a :class:`~pkl_dg.io.MicroscopyImage` for napari."""
    scale, units = [], []
    for a in img.axes:
        if a in "YX" and img.pixel_size_nm:
            scale.append(img.pixel_size_nm["YX".index(a)] / 1000.0)
            units.append("micrometer")
        elif a == "Z" and img.z_step_nm:
            scale.append(img.z_step_nm / 1000.0)
            units.append("micrometer")
        elif a == "T" and img.time_interval_s:
            scale.append(img.time_interval_s)
            units.append("second")
        else:
            scale.append(1.0)
            units.append("pixel")
    return {"scale": scale, "units": units, "axis_labels": list(img.axes.lower())}


def read_layers(path: str | list[str]) -> list[tuple]:
    """The file's image layers (lazy data, physical scale, pkl-dg metadata if present):
    one per channel, else one."""
    from pkl_dg.io import open_image, read_metadata

    p = Path(path[0] if isinstance(path, list) else path)
    img = open_image(p)
    kwargs = layer_kwargs(img)
    kwargs["name"] = p.name
    data = img.data
    try:
        kwargs["metadata"] = {"pkl_dg": read_metadata(p)}
    except ValueError:
        kwargs["metadata"] = {}  # a file not written by pkl-dg: no parameters to show
    saved = kwargs["metadata"].get("pkl_dg", {}).get("napari_layer")
    if saved:  # a layer saved by this plugin's writer: its place and geometry come back
        data = _layer_geometry(data, img.axes, saved, kwargs)
    elif "C" in img.axes and data.shape[img.axes.index("C")] > 1:
        _split_channels(img, kwargs)
    return [(data, kwargs, "image")]


def _split_channels(img, kwargs: dict[str, Any]) -> None:
    """One layer per channel (napari's ``channel_axis``), each named after its channel
    ("cells.ome.tif [DAPI]", or "[channel 1]" where the file names none) and coloured by
    napari, as microscopy viewers show channels: each is restored on its own, with its
    own PSF (emission wavelength)."""
    c = img.axes.index("C")
    n = int(img.data.shape[c])
    names = [str(v) for v in img.channel_names] if len(img.channel_names) == n else [""] * n
    # bioio names a channel the file leaves unnamed "Channel:<scene>:<index>"
    names = [v if v and not re.fullmatch(r"Channel:\d+:\d+", v) else f"channel {k}"
             for k, v in enumerate(names)]
    kwargs["name"] = [f"{kwargs['name']} [{v}]" for v in names]
    kwargs["channel_axis"] = c
    for key in ("scale", "units", "axis_labels"):
        kwargs[key] = [v for i, v in enumerate(kwargs[key]) if i != c]


def _layer_geometry(data: Any, axes: str, saved: dict[str, Any], kwargs: dict[str, Any]
                    ) -> Any:
    """The data with the saved layer's single-plane axes put back (the reader drops them)
    and its scale, units, translate and axis labels in ``kwargs``; unchanged when the file
    does not match the record."""
    full = str(saved.get("axes", ""))
    sizes = dict(zip(axes, data.shape))
    if [a for a in full if a in sizes] != list(axes) or \
            not all(len(saved.get(k, [])) == len(full) for k in ("scale", "translate", "units")):
        return data
    kwargs.update(scale=list(saved["scale"]), translate=list(saved["translate"]),
                  units=list(saved["units"]), axis_labels=list(full.lower()))
    data = data.reshape(tuple(sizes.get(a, 1) for a in full))
    kwargs.update(_display(saved.get("display") or {}))
    if "contrast_limits" not in kwargs and int(np.prod(data.shape)) <= CONTRAST_FROM_DATA:
        # napari takes the contrast of lazy data from the slice shown, which for a plane
        # placed at its Z (translate) is empty at first: the plane came back white (0–1)
        values = np.asarray(data, dtype=np.float32)
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = (float(v) for v in np.percentile(finite, (0.1, 99.9)))
            kwargs["contrast_limits"] = [lo, hi if hi > lo else lo + 1.0]
    return data


def _display(saved: dict[str, Any]) -> dict[str, Any]:
    """The saved layer's colormap, contrast limits, gamma and blending as napari keywords
    (a colormap not in :data:`COLORMAPS`, e.g. one made in a session, is left out)."""
    out = {k: saved[k] for k in ("gamma", "blending") if k in saved}
    limits = saved.get("contrast_limits")
    if isinstance(limits, list) and len(limits) == 2 and limits[0] < limits[1]:
        out["contrast_limits"] = [float(v) for v in limits]
    if saved.get("colormap") in COLORMAPS:
        out["colormap"] = saved["colormap"]
    return out
