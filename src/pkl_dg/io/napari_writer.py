"""napari writer: an image layer as an OME-TIFF with its physical scale and metadata.

napari's own TIFF writer keeps only the pixels: a restored layer saved with it reopens at
scale 1, at the origin, without its parameters. This writer (contributed in
``napari.yaml`` for ``*.ome.tif`` / ``*.ome.tiff``; in napari's *Save Selected Layer(s)*
dialog choose "OME-TIFF with physical scale (pkl-dg)") writes the layer's data with
:func:`pkl_dg.io.write_ome_tiff` (camera counts keep their integer type, anything else is
float32): axes from its axis labels, pixel size and Z step from its scale where its units
are lengths (a time axis's in seconds), its metadata as JSON (a pkl-dg result's
parameters), its translate and its display (colormap, contrast limits, gamma, blending),
which the pkl-dg reader gives back, so a plane restored at Z = 2 reopens at Z = 2 and
looks as it did.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np

from pkl_dg.axes import axes_from_labels
from pkl_dg.io.read import in_unit

#: the OME axis order the writer stores
OME_ORDER = "TCZYX"
#: the layer's display settings kept in the file (the reader gives them back)
DISPLAY_KEYS = ("colormap", "contrast_limits", "gamma", "blending")


def layer_axes(labels: list[str], ndim: int, metadata: dict[str, Any]) -> str:
    """The layer's axes as letters of ``TCZYX``: from its axis labels, else from a pkl-dg
    result's own axes, else ``YX`` / ``ZYX`` for 2 / 3 axes.

    Raises
    ------
    ValueError
        When the axes cannot be known (4 or more unlabelled axes) or are not T, C, Z, Y, X.
    """
    axes = axes_from_labels(labels[-ndim:]) if labels else None
    if axes is None:
        # the result's own order (a run with axes 'ZCYX' in 3D mode restores as CZYX
        # and puts the result back as ZCYX); results of older versions have restored_as
        recorded = metadata.get("axes") if isinstance(metadata.get("axes"), dict) else {}
        restored = recorded.get("result") or recorded.get("restored_as")
        if restored and len(restored) == ndim:
            axes = restored
        elif ndim in (2, 3):
            axes = "ZYX"[-ndim:]
        else:
            raise ValueError(f"the layer has {ndim} axes without names: set its axis labels "
                             "(e.g. t, c, z, y, x) before saving it as OME-TIFF")
    if set(axes) - set(OME_ORDER) or len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes!r}: an OME-TIFF stores T, C, Z, Y, X once each; name "
                         "the layer's axes with those (axis labels t, c, z, y, x)")
    return axes


def write_ome_tiff_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one image layer (napari's single-layer writer signature).

    Parameters
    ----------
    path
        Target ``*.ome.tif`` / ``*.ome.tiff`` (replaced if it exists: napari has asked).
    data
        The layer's data (numpy or dask); integer camera counts are written as they are,
        anything else as float32.
    meta
        The layer's state from napari: ``axis_labels``, ``scale``, ``units``,
        ``translate``, ``metadata``, ``name``.

    Returns
    -------
    list[str]
        ``[path]``.

    Raises
    ------
    ValueError
        Unknown axes (:func:`layer_axes`), RGB data, a multiscale layer; also given as a
        warning first, since napari replaces a writer's error by "No data written! A
        plugin could not be found".
    """
    try:
        return _write(path, data, meta)
    except ValueError as exc:
        warnings.warn(f"pkl-dg could not save '{meta.get('name', '')}' as OME-TIFF: {exc}",
                      UserWarning, stacklevel=2)
        raise


def _write(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    from pkl_dg.io.write import write_ome_tiff

    if meta.get("rgb"):
        raise ValueError("an RGB layer is not a fluorescence image: save it with napari's "
                         "own TIFF writer (a .tif name)")
    if meta.get("multiscale"):
        raise ValueError("a multiscale layer: save its full-resolution level (or write "
                         "OME-Zarr with pkl-dg batch)")
    arr = np.asarray(data)
    layer_meta = dict(meta.get("metadata") or {})
    stored = layer_meta.get("pkl_dg", layer_meta)  # as the pkl-dg reader put it, or a result's
    axes = layer_axes(list(meta.get("axis_labels") or []), arr.ndim, stored)
    scale = list(meta.get("scale") or [1.0] * arr.ndim)
    units = list(meta.get("units") or [None] * arr.ndim)
    sizes = {a: in_unit(s, u, "s" if a == "T" else "nm")
             for a, s, u in zip(axes, scale, units)}
    order = sorted(range(arr.ndim), key=lambda i: OME_ORDER.index(axes[i]))
    arr = np.transpose(arr, order)
    ome_axes = "".join(axes[i] for i in order)
    translate = [float(t) for t in (meta.get("translate") or [0.0] * len(axes))]
    # numpy numbers as numbers, anything else JSON has no type for (paths) as text
    out = json.loads(json.dumps(stored, default=lambda o: o.item() if isinstance(
        o, np.generic) else str(o)))
    out["napari_layer"] = {"name": meta.get("name", ""), "axes": ome_axes,
                           "translate": [translate[i] for i in order],
                           "scale": [float(scale[i]) for i in order],
                           "units": [str(units[i] or "pixel") for i in order],
                           "display": _display(meta)}
    pixel = (sizes["Y"], sizes["X"]) if sizes.get("Y") and sizes.get("X") else None
    write_ome_tiff(path, arr, ome_axes, out, pixel_size_nm=pixel, z_step_nm=sizes.get("Z"),
                   time_interval_s=sizes.get("T"), overwrite=True)
    return [str(path)]


def _display(meta: dict[str, Any]) -> dict[str, Any]:
    """The layer's colormap (by name), contrast limits, gamma and blending, as JSON."""
    out: dict[str, Any] = {}
    for key in DISPLAY_KEYS:
        value = meta.get(key)
        if key == "colormap" and not isinstance(value, str):  # napari gives its state
            value = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
        if key == "contrast_limits" and value is not None:
            value = [float(v) for v in value]
        if key == "gamma" and value is not None:
            value = float(value)
        if value is not None:
            out[key] = value if key != "blending" else str(value)
    return out
