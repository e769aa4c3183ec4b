"""Reading microscopy files with their axes and physical pixel sizes (through bioio).

:func:`open_image` opens a file lazily and returns a :class:`MicroscopyImage`: a dask array
whose axes are a subset of ``TCZYX`` in that order (axes of size 1 dropped, Y and X always
kept), the pixel size and z-step in nm when the file states them, and the channel names.
TIFF (plain, ImageJ hyperstack, OME-TIFF) and OME-Zarr readers ship with the package; other
formats (CZI, ND2, LIF, …) open when their bioio plugin is installed (``pip install
bioio-czi`` etc.). ``.npy`` files are read with numpy (no axes or sizes: leading axes are
named ``Q``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: canonical axis order of every image returned here
AXES = "TCZYX"
TIFF_SUFFIXES = (".tif", ".tiff")
#: file endings :func:`open_image` reads without extra plugins
KNOWN_SUFFIXES = (".tif", ".tiff", ".zarr", ".npy")


@dataclass
class MicroscopyImage:
    """A lazily read image with its axes and physical sizes.

    Attributes
    ----------
    data
        dask array (numpy for ``.npy``) in camera units, axes as in ``axes``.
    axes
        One letter per axis of ``data``: a subset of ``TCZYX`` in that order, ending in
        ``YX`` (``Q`` for the unnamed leading axes of a ``.npy`` file).
    pixel_size_nm
        (Y, X) pixel size in nm, or ``None`` when the file does not state it in physical
        units.
    z_step_nm
        Distance between Z planes in nm, or ``None`` (no Z axis or not stated).
    channel_names
        One name per channel of the file (also when C has size 1).
    path
        The file read.
    scenes
        Number of scenes (series / positions) in the file; scene 0 is the one read.
    time_interval_s
        Time between time points in seconds (OME ``TimeIncrement``, an OME-Zarr ``t``
        scale with a time unit, ImageJ ``finterval``), or ``None`` (no T axis or not stated).
    """

    data: Any
    axes: str
    pixel_size_nm: tuple[float, float] | None
    z_step_nm: float | None
    channel_names: list[str] = field(default_factory=list)
    path: Path | None = None
    scenes: int = 1
    time_interval_s: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    def numpy(self) -> np.ndarray:
        """The whole image as a numpy array (reads everything)."""
        return np.asarray(self.data)

    def physical_metadata(self) -> dict[str, Any]:
        """Axes, pixel size, z-step and time interval as JSON-able metadata."""
        return {"axes": self.axes, "pixel_size_nm": list(self.pixel_size_nm)
                if self.pixel_size_nm else None, "z_step_nm": self.z_step_nm,
                "time_interval_s": self.time_interval_s,
                "channel_names": list(self.channel_names)}


#: the bioio plugin that reads a file suffix (the error for a missing reader names it)
PLUGIN_FOR = {".png": "bioio-imageio", ".jpg": "bioio-imageio", ".jpeg": "bioio-imageio",
              ".gif": "bioio-imageio", ".bmp": "bioio-imageio", ".czi": "bioio-czi",
              ".nd2": "bioio-nd2", ".lif": "bioio-lif", ".dv": "bioio-dv",
              ".sldy": "bioio-sldy"}


def _tiff_reader(p: Path):
    """The bioio reader class for a TIFF, after checking tifffile can parse it."""
    import tifffile

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # its warnings about a damaged file become our one error
    try:
        with warnings.catch_warnings(), tifffile.TiffFile(p) as tif:
            warnings.simplefilter("ignore")
            if not len(tif.pages):
                raise ValueError("it has no image pages")
            _check_imagej_planes(tif)
            is_ome = tif.is_ome
            unit_known = _tiff_states_units(tif)
    except Exception as exc:  # tifffile raises many types on damaged files
        raise ValueError(f"cannot read TIFF {p}: the file is damaged or not a TIFF "
                         f"({type(exc).__name__}: {exc})") from None
    finally:
        log.setLevel(level)
    if is_ome:
        from bioio_ome_tiff import Reader
    else:
        from bioio_tifffile import Reader
    return Reader, unit_known or is_ome


def _check_imagej_planes(tif) -> None:
    """Raise if an ImageJ TIFF holds fewer planes than its header announces: tifffile then
    logs "ImageJ series metadata invalid or corrupted file" and falls back to the pages it
    finds (a truncated 20-plane stack opened as one 2D plane, silently)."""
    if not tif.is_imagej:
        return
    announced = int((tif.imagej_metadata or {}).get("images", 1) or 1)
    series = tif.series[0]
    found = int(np.prod(series.shape[:-2])) if len(series.shape) > 2 else 1
    if series.shape and series.shape[-1] in (3, 4) and len(series.shape) > 3 and \
            str(getattr(series, "axes", "")).endswith("S"):
        found = int(np.prod(series.shape[:-3]))  # RGB samples are not planes
    if found < announced:
        raise ValueError(f"the file is truncated: its ImageJ header announces {announced} "
                         f"planes and {found} can be read")


def _tiff_states_units(tif) -> bool:
    """Whether a non-OME TIFF gives its pixel size in physical units."""
    if tif.is_imagej:
        unit = str((tif.imagej_metadata or {}).get("unit", "")).strip().lower()
        return unit not in ("", "pixel", "pixels", "px")
    tag = tif.pages[0].tags.get("ResolutionUnit")
    return tag is not None and int(tag.value) in (2, 3)  # inch, centimetre


def _zarr_states_units(p: Path) -> bool:
    """Whether an OME-Zarr gives its Y and X axes a physical unit (else its scale is in
    pixels and bioio's 1.0 would read as 1 µm)."""
    units = {a.get("name", "").lower(): a.get("unit")
             for a in _zarr_multiscale(p).get("axes", []) if isinstance(a, dict)}
    return bool(units.get("y")) and bool(units.get("x"))


def _zarr_multiscale(p: Path) -> dict[str, Any]:
    """The first ``multiscales`` entry of an OME-Zarr's attributes (NGFF 0.4 or 0.5)."""
    import zarr

    attrs = dict(zarr.open_group(str(p), mode="r").attrs)
    return (attrs.get("ome", attrs).get("multiscales") or [{}])[0]


def _is_zarr(p: Path) -> bool:
    return p.is_dir() and (p.suffix.lower() == ".zarr" or (p / "zarr.json").is_file()
                           or (p / ".zattrs").is_file())


def open_image(path: str | Path, what: str = "input image") -> MicroscopyImage:
    """Open a microscopy file lazily, with its axes and physical pixel sizes.

    Parameters
    ----------
    path
        TIFF / OME-TIFF / ImageJ TIFF, OME-Zarr folder, ``.npy``, or any format a bioio
        plugin installed here reads.
    what
        Names the file in error messages (e.g. "PSF file").

    Returns
    -------
    MicroscopyImage
        Axes in ``TCZYX`` order (size-1 axes dropped); a file's other order (e.g. an ImageJ
        ``ZCYX`` hyperstack) is transposed lazily.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        The file is damaged, of a type no installed reader handles, or RGB(A) colour.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"cannot read {p}: {exc}") from None
        axes = "Q" * max(arr.ndim - 2, 0) + "YX"[-arr.ndim:] if arr.ndim else ""
        return MicroscopyImage(arr, axes, None, None, [], p)
    units_known = True
    if p.is_file() and suffix in TIFF_SUFFIXES:
        reader, units_known = _tiff_reader(p)
    elif _is_zarr(p):
        from bioio_ome_zarr import Reader as reader

        try:
            units_known = _zarr_states_units(p)
        except Exception as exc:  # zarr raises many types on damaged stores
            raise ValueError(f"cannot read {what} {p}: not a readable OME-Zarr "
                             f"({type(exc).__name__}: {exc})") from None
    elif p.is_dir():
        raise ValueError(f"{what} {p} is a folder but not an OME-Zarr image")
    else:
        reader = None
    return _from_bioimage(p, reader, units_known, what)


def _from_bioimage(p: Path, reader, units_known: bool, what: str) -> MicroscopyImage:
    from bioio import BioImage
    from bioio_base.exceptions import UnsupportedFileFormatError

    try:
        img = BioImage(p, reader=reader) if reader is not None else BioImage(p)
        dims = img.dims
    except UnsupportedFileFormatError:
        plugin = PLUGIN_FOR.get(p.suffix.lower())
        hint = (f"pip install {plugin}" if plugin else
                "install the bioio plugin for the format (e.g. pip install bioio-czi, "
                "bioio-nd2, bioio-lif)")
        raise ValueError(f"{what} {p}: no reader for {p.suffix or 'this'} files is installed: "
                         f"{hint}, or convert it to OME-TIFF") from None
    except Exception as exc:
        raise ValueError(f"cannot read {what} {p}: the file is damaged or not an image "
                         f"({type(exc).__name__}: {exc})") from None
    sizes = dict(zip(dims.order, dims.shape))
    if sizes.get("S", 1) > 1:
        n = sizes["S"]
        planes = ("; if they are the PSF's Z planes, save them as a stack of pages (e.g. "
                  "tifffile.imwrite(path, psf, photometric='minisblack'))" if what == "PSF file"
                  else "")
        raise ValueError(f"{what} {p} holds {n} samples per pixel (axis S: RGB colour, or {n} "
                         "channels stored interleaved in each pixel): pkl-dg restores "
                         "fluorescence channels one at a time along a channel axis C. Save "
                         "them as channels (an ImageJ hyperstack or OME-TIFF with a C axis), "
                         f"or split them and restore each one{planes}")
    scenes = len(img.scenes)
    if scenes > 1:
        warnings.warn(f"{p.name} holds {scenes} scenes (series/positions); only the first, "
                      f"{img.scenes[0]!r}, is read", UserWarning, stacklevel=3)
    data = img.get_image_dask_data(AXES)
    keep = [a for a in AXES if a in "YX" or sizes.get(a, 1) > 1]
    index = tuple(slice(None) if a in keep else 0 for a in AXES)
    data = data[index]
    pixel, z_step = None, None
    if units_known:  # else bioio's sizes are pixels read as µm (and its reader warns)
        pps = img.physical_pixel_sizes
        if pps.X and pps.Y:
            pixel = (float(pps.Y) * 1000.0, float(pps.X) * 1000.0)  # bioio gives µm
        z_step = float(pps.Z) * 1000.0 if pps.Z and "Z" in keep else None
    try:
        channels = [str(c) for c in img.channel_names]
    except (NotImplementedError, AttributeError, KeyError, IndexError, ValueError):
        # some readers cannot name channels; names are informative only
        channels = []
    dt = _time_interval_s(p, img) if "T" in keep else None
    return MicroscopyImage(data, "".join(keep), pixel, z_step, channels, p, scenes, dt)


def in_unit(value: Any, unit: Any, target: str) -> float | None:
    """``value`` given in ``unit`` (a pint unit or its name: "µm", "micrometer", "ms") as a
    number in ``target`` ("nm", "s"); None when either is missing, the value is not
    positive, or the unit is no unit of that kind (pixels, a time for a length)."""
    import pint

    if unit is None or str(unit) in ("", "pixel", "px"):
        return None
    try:
        v = float(value)
        if not v > 0:
            return None
        return float((v * pint.get_application_registry()(str(unit))).to(target).magnitude)
    except (TypeError, ValueError, pint.errors.DimensionalityError,
            pint.errors.UndefinedUnitError, AttributeError):
        return None


def _time_interval_s(p: Path, img: Any) -> float | None:
    """The time between time points the file states (bioio's readers give none): OME-TIFF
    ``Pixels/TimeIncrement``, an OME-Zarr's ``t`` scale with a time unit, ImageJ's
    ``finterval`` (seconds)."""
    if p.is_dir():
        ms = _zarr_multiscale(p)
        axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", [])]
        names = [a.get("name") for a in axes]
        scale = next((t.get("scale") for t in (ms.get("datasets") or [{}])[0]
                      .get("coordinateTransformations", []) if t.get("type") == "scale"), None)
        if "t" not in names or not scale:
            return None
        return in_unit(scale[names.index("t")], axes[names.index("t")].get("unit"), "s")
    try:
        pixels = img.ome_metadata.images[0].pixels  # bioio's OME readers
        unit = getattr(pixels.time_increment_unit, "value", pixels.time_increment_unit)
        return in_unit(pixels.time_increment, unit, "s")
    except (AttributeError, IndexError, NotImplementedError, ValueError, TypeError):
        pass
    if p.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(p) as tif:
            return in_unit((tif.imagej_metadata or {}).get("finterval"), "s", "s")
    return None


def read_image(path: str | Path, what: str = "input image") -> np.ndarray:
    """Read a whole image as numpy, axes in ``TCZYX`` order (see :func:`open_image`)."""
    return open_image(path, what).numpy()
