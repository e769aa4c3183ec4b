"""Writing float32 results: plain TIFF, OME-TIFF and OME-Zarr, with their metadata.

Every writer stores the restoration's parameters as JSON: in the ImageJ ``Info`` property of
an ImageJ hyperstack TIFF (:func:`write_result`; for an image whose axes are unknown, in its
description), in the OME ``Image/Description`` element (:func:`write_ome_tiff`),
or in the group attribute ``pkl_dg`` (:func:`write_ome_zarr`); :func:`read_metadata` reads
any of them back. Every writer also stores the axes and the physical pixel sizes, so
napari and Fiji show the result at the right scale. They write to a temporary sibling
(``NAME.partial``) first and rename it at the end, so an interrupted write never leaves a
file that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

OME_SUFFIXES = (".ome.tif", ".ome.tiff")
ZARR_SUFFIX = ".zarr"
#: OME-Zarr chunk side (Y, X) and the smallest side of the coarsest multiscale level
ZARR_CHUNK = 256
ZARR_MIN_LEVEL = 64
_OME_NS = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


def _um(nm: float) -> float:
    """nm → µm as a file states it: rounded to 1 fm, so that 300 nm read back as
    299.99999999999994 is written 0.3, not 0.29999999999999993."""
    return round(float(nm) / 1000.0, 9)


def _check_target(p: Path, overwrite: bool) -> None:
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists: pass --overwrite to replace it")


def _replace(tmp: Path, p: Path) -> None:
    """Move the finished ``tmp`` onto ``p`` (removing an old ``p``)."""
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
    os.replace(tmp, p)


def partial_path(p: Path) -> Path:
    """Where a writer puts ``p`` while it is being written."""
    return p.with_name(p.name + ".partial")


#: the axes an ImageJ hyperstack holds, in its order (Fiji's "plain TIFF")
IMAGEJ_AXES = "TZCYX"


def write_result(path: str | Path, image: np.ndarray, metadata: dict,
                 overwrite: bool = False, *, axes: str | None = None,
                 pixel_size_nm: tuple[float, float] | None = None,
                 z_step_nm: float | None = None,
                 time_interval_s: float | None = None) -> None:
    """Write ``image`` as a float32 ImageJ hyperstack TIFF, ``metadata`` as JSON in its
    ``Info`` property.

    An ImageJ hyperstack is the TIFF Fiji writes and reads with its axes: a (Z, Y, X) result
    opens as a Z-stack with its voxel size, a (C, Z, Y, X) one as channels × slices (a
    TIFF without ImageJ metadata holds only pages: tifffile read a Z-stack back as ``IYX``
    and a (C, Z, Y, X) stack as C·Z pages). ImageJ stores the axes in the order ``TZCYX``:
    a result with both C and Z is written with them swapped (Z before C), as Fiji expects.

    Parameters
    ----------
    path
        A ``.tif`` / ``.tiff`` file.
    image
        The result, axes as ``axes`` names them.
    metadata
        JSON-serialisable parameters of the run (read back by :func:`read_metadata`).
    overwrite
        Replace an existing file (else ``FileExistsError``).
    axes
        One letter per axis of ``image`` from ``TCZYX``; None for an image whose axes are
        unknown (a ``.npy`` input): a 2D one is written as ``YX``, one with more axes as
        plain TIFF pages (the JSON in the image description; tifffile reads such a stack
        back as ``IYX``, several leading axes as one).
    pixel_size_nm
        (Y, X) pixel size in nm, stored as the resolution tags in µm (ImageJ's unit).
    z_step_nm
        Z step in nm (ImageJ ``spacing``).
    time_interval_s
        Time between T points in s (ImageJ ``finterval``).

    Raises
    ------
    ValueError
        Not a TIFF name; ``axes`` not one distinct letter of ``TCZYX`` per axis, ending in
        ``YX``.
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    import tifffile

    p = Path(path)
    _check_target(p, overwrite)
    if p.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"output must be a .tif or .tiff file, got {p.name}")
    arr = np.asarray(image, dtype=np.float32)
    extra: dict[str, Any] = {}
    if axes is None and arr.ndim > 2:  # nothing to name: the planes as pages
        if pixel_size_nm:  # 1 cm = 1e7 nm; the tags are (X, Y)
            extra.update(resolution=(1e7 / pixel_size_nm[1], 1e7 / pixel_size_nm[0]),
                         resolutionunit="CENTIMETER")
        # minisblack: else tifffile stores a stack of 3 or 4 planes as one RGB(A) image
        tmp = partial_path(p)  # an interrupted write leaves no half-written result
        tifffile.imwrite(tmp, arr, photometric="minisblack", metadata=None,
                         description=json.dumps(metadata, sort_keys=True), **extra)
        _replace(tmp, p)
        return
    axes = (axes or "YX").upper()
    if len(axes) != arr.ndim or len(set(axes)) != len(axes) or set(axes) - set(IMAGEJ_AXES) \
            or not axes.endswith("YX"):
        raise ValueError(f"axes {axes!r} do not name the {arr.ndim} axes of the image with "
                         f"distinct letters of {IMAGEJ_AXES} ending in YX")
    order = sorted(range(arr.ndim), key=lambda i: IMAGEJ_AXES.index(axes[i]))
    file_axes = "".join(axes[i] for i in order)
    # the metadata names the axes as the file holds them (the result's own order, e.g.
    # CZYX, is stored as ImageJ's ZCYX)
    record = {**metadata, "file_axes": file_axes}
    if isinstance(record.get("axes"), dict) and "result" in record["axes"]:
        record["axes"] = {**record["axes"], "result": file_axes}
    meta: dict[str, Any] = {"axes": file_axes, "Info": json.dumps(record, sort_keys=True)}
    if pixel_size_nm:  # pixels per µm, (X, Y)
        extra["resolution"] = (1 / _um(pixel_size_nm[1]), 1 / _um(pixel_size_nm[0]))
        meta["unit"] = "um"
    if z_step_nm and "Z" in axes:
        meta["spacing"] = _um(z_step_nm)
    if time_interval_s and "T" in axes:
        meta["finterval"] = float(time_interval_s)
    tmp = partial_path(p)
    tifffile.imwrite(tmp, np.ascontiguousarray(arr.transpose(order)), imagej=True,
                     metadata=meta, **extra)
    _replace(tmp, p)


#: integer types an OME-TIFF keeps as they are (a camera's counts); others become float32
KEPT_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "int16", "uint32", "int32"))


def write_ome_tiff(path: str | Path, image: np.ndarray, axes: str, metadata: dict, *,
                   pixel_size_nm: tuple[float, float] | None = None,
                   z_step_nm: float | None = None, time_interval_s: float | None = None,
                   overwrite: bool = False, channel_names: list[str] | None = None) -> None:
    """Write an OME-TIFF with physical sizes and ``metadata`` as JSON.

    Parameters
    ----------
    image
        Array with one axis per letter of ``axes`` (a subset of ``TCZYX`` in that order).
        Integer data (camera counts: uint8, uint16, int16, uint32, int32) keep their type;
        anything else is written as float32 (results are float32 photons).
    pixel_size_nm, z_step_nm
        (Y, X) pixel size and z-step in nm; stored in µm as OME ``PhysicalSize*``. The
        pixel size also goes into the TIFF resolution tags (pixels per centimetre), so
        readers that ignore the OME-XML (napari's built-in TIFF reader, ImageJ without
        Bio-Formats) do not see 1-unit pixels.
    time_interval_s
        Time between time points in s, stored as OME ``TimeIncrement`` (with a T axis).
    overwrite
        Replace an existing file (else ``FileExistsError``).
    channel_names
        The input's channel names (OME ``Channel/@Name``), one per channel of a C axis;
        ignored when they do not match it (see :func:`_names_for`).
    """
    import tifffile

    p = Path(path)
    _check_target(p, overwrite)
    if not p.name.lower().endswith(OME_SUFFIXES):
        raise ValueError(f"an OME-TIFF name must end in .ome.tif, got {p.name}")
    arr = np.asarray(image)
    if arr.dtype not in KEPT_DTYPES:
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim != len(axes):
        raise ValueError(f"image has {arr.ndim} axes but axes {axes!r} name {len(axes)}")
    meta: dict[str, Any] = {"axes": axes, "Description": json.dumps(metadata, sort_keys=True)}
    if pixel_size_nm:
        meta.update(PhysicalSizeY=_um(pixel_size_nm[0]), PhysicalSizeYUnit="µm",
                    PhysicalSizeX=_um(pixel_size_nm[1]), PhysicalSizeXUnit="µm")
    if z_step_nm and "Z" in axes:
        meta.update(PhysicalSizeZ=_um(z_step_nm), PhysicalSizeZUnit="µm")
    if time_interval_s and "T" in axes:
        meta.update(TimeIncrement=float(time_interval_s), TimeIncrementUnit="s")
    names = _names_for(channel_names, axes, arr.shape)
    if names:
        meta["Channel"] = {"Name": names}
    extra: dict[str, Any] = {}
    if pixel_size_nm:  # 1 cm = 1e7 nm; the tags are (X, Y)
        extra.update(resolution=(1e7 / pixel_size_nm[1], 1e7 / pixel_size_nm[0]),
                     resolutionunit="CENTIMETER")
    tmp = partial_path(p)
    tifffile.imwrite(tmp, arr, ome=True, photometric="minisblack", metadata=meta, **extra)
    _replace(tmp, p)


def _scale_factors(shape_yx: tuple[int, int]) -> list[int]:
    """Downsampling factors 2, 4, … while the coarsest level keeps ≥ ZARR_MIN_LEVEL px."""
    out, f = [], 2
    while min(shape_yx) // f >= ZARR_MIN_LEVEL:
        out.append(f)
        f *= 2
    return out


def write_ome_zarr(path: str | Path, image: Any, axes: str, metadata: dict, *,
                   pixel_size_nm: tuple[float, float] | None = None,
                   z_step_nm: float | None = None, time_interval_s: float | None = None,
                   overwrite: bool = False, channel_names: list[str] | None = None) -> None:
    """Write a float32 OME-Zarr (NGFF 0.5) image with multiscales, chunked per plane.

    Chunks are one plane of at most ``ZARR_CHUNK``² pixels (never across T, C or Z); the
    pyramid halves Y and X until the coarsest level is below ``2·ZARR_MIN_LEVEL`` pixels.
    ``metadata`` goes to the group attribute ``pkl_dg``. ``image`` may be numpy or dask.
    ``channel_names`` (one per channel of a C axis) become the ``omero`` channel labels.
    """
    import zarr
    from ome_zarr.writer import write_image

    p = Path(path)
    _check_target(p, overwrite)
    if p.suffix.lower() != ZARR_SUFFIX:
        raise ValueError(f"an OME-Zarr name must end in .zarr, got {p.name}")
    if image.ndim != len(axes):
        raise ValueError(f"image has {image.ndim} axes but axes {axes!r} name {len(axes)}")
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if pixel_size_nm:
        scale.update(y=_um(pixel_size_nm[0]), x=_um(pixel_size_nm[1]))
        units.update(y="micrometer", x="micrometer")
    if "Z" in axes:
        scale["z"] = _um(z_step_nm) if z_step_nm else 1.0
        if z_step_nm:
            units["z"] = "micrometer"
    if "T" in axes and time_interval_s:  # the t scale in seconds
        scale["t"], units["t"] = float(time_interval_s), "second"
    for a in axes:  # axes without a physical size: scale 1 (no unit)
        scale.setdefault(a.lower(), 1.0)
    chunks = tuple(1 for _ in axes[:-2]) + tuple(min(ZARR_CHUNK, n) for n in image.shape[-2:])
    tmp = partial_path(p)
    if tmp.exists():
        shutil.rmtree(tmp)
    root = zarr.open_group(str(tmp), mode="w")
    data = image if hasattr(image, "compute") else np.asarray(image, dtype=np.float32)
    write_image(data.astype(np.float32), root, axes=axes.lower(),
                scale_factors=_scale_factors(tuple(image.shape[-2:])), scale=scale,
                axes_units=units or None, storage_options={"chunks": chunks},
                name=p.name.removesuffix(ZARR_SUFFIX).removesuffix(".ome"))
    root.attrs["pkl_dg"] = metadata
    names = _names_for(channel_names, axes, tuple(image.shape))
    if names:  # NGFF keeps its metadata under "ome" (0.5) or at the top (0.4)
        omero = {"channels": [{"label": n, "active": True} for n in names]}
        if "ome" in root.attrs:
            root.attrs["ome"] = {**root.attrs["ome"], "omero": omero}
        else:
            root.attrs["omero"] = omero
    _replace(tmp, p)


def _names_for(names: list[str] | None, axes: str, shape: tuple[int, ...]) -> list[str]:
    """``names`` when they name each channel of the C axis (not all empty), else []."""
    if not names or "C" not in axes or len(names) != shape[axes.index("C")] or \
            not any(str(n) for n in names):
        return []
    return [str(n) for n in names]


def _ome_description(xml: str) -> str:
    root = ET.fromstring(xml)
    node = root.find(f"{_OME_NS}Image/{_OME_NS}Description")
    if node is None or not node.text:
        raise ValueError("the OME-XML has no pkl-dg description")
    return node.text


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of a result written by any writer of this module.

    Raises
    ------
    ValueError
        The file holds no pkl-dg metadata (not written here, or damaged).
    """
    p = Path(path)
    if p.is_dir():
        import zarr

        try:
            return dict(zarr.open_group(str(p), mode="r").attrs["pkl_dg"])
        except Exception as exc:
            raise ValueError(f"{p} has no pkl-dg metadata ({type(exc).__name__}: {exc})") from None
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            text = tif.pages[0].description
            if tif.is_ome:
                text = _ome_description(tif.ome_metadata)
            elif tif.is_imagej:  # write_result's ImageJ hyperstack
                text = (tif.imagej_metadata or {})["Info"]
        return json.loads(text)
    except Exception as exc:
        raise ValueError(f"{p} has no pkl-dg metadata ({type(exc).__name__}: {exc})") from None
