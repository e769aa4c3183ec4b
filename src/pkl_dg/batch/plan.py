"""What a batch will do: its inputs, one output per input, and the blocks and chunks of each.

An input is a file (any format :func:`pkl_dg.io.open_image` reads), a folder (its image
files and OME-Zarr folders, not recursive) or a glob pattern. Every input gives one output
in the output folder with the same name stem: ``NAME.ome.tif`` (OME-TIFF) or
``NAME.ome.zarr`` (OME-Zarr; the default for Zarr inputs). A *block* is what
:func:`pkl_dg.restore` restores on its own: a YX plane in 2D mode, a ZYX volume in 3D mode;
blocks are never cut along T, C or Z. In 2D mode a plane larger than ``chunk`` is cut into
overlapping YX chunks (:mod:`pkl_dg.batch.tiles`).
"""

from __future__ import annotations

import glob
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pkl_dg.batch.tiles import MIN_CHUNK, Chunk, margin_for, plan_chunks
from pkl_dg.inputs import physical_overrides
from pkl_dg.sampling_assumed import assumed_sampling
from pkl_dg.settings import RestoreSettings

FORMATS = ("auto", "ome-tiff", "ome-zarr")
IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr", ".npy", ".czi", ".nd2", ".lif", ".lsm", ".oir",
                  ".ims", ".vsi")
#: image files in an input folder that are skipped with a warning (not silently)
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_STRIP = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr")


@dataclass
class Job:
    """One input and its output, with everything the workers need to restore it."""

    input: Path
    output: Path
    fmt: str
    settings: RestoreSettings
    axes: str = ""
    shape: tuple[int, ...] = ()
    blocks: list[tuple[int, ...]] = field(default_factory=list)
    chunks: list[Chunk] | None = None
    image_meta: dict[str, Any] = field(default_factory=dict)
    reader_notes: list[str] = field(default_factory=list)  # what tifffile logged opening it
    #: the sampling the user gave (nm), written to the output in place of the file's
    given_sampling: dict[str, float] = field(default_factory=dict)
    #: sampling settings (nm) the run takes from the defaults: the file states none
    sampling_assumed: dict[str, float] = field(default_factory=dict)
    status: str = "pending"  # pending → done | skipped | failed
    message: str = ""
    seconds: float = 0.0  # compute time of its blocks on the workers, summed
    finished_s: float = 0.0  # when its output was written (or it failed), from the run's start


def expand_inputs(items: list[str | Path]) -> list[Path]:
    """Files of ``items`` (files, folders, glob patterns), in order, without duplicates.

    Raises
    ------
    FileNotFoundError
        An item matches nothing.
    """
    out: list[Path] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            found = [Path(p) for p in sorted(glob.glob(text))]
            if not found:
                raise FileNotFoundError(f"no file matches {text!r}")
        else:
            p = Path(text)
            if not p.exists():
                raise FileNotFoundError(f"input not found: {p}")
            if p.is_dir() and p.suffix.lower() != ".zarr":
                found = sorted(c for c in p.iterdir() if c.suffix.lower() in IMAGE_SUFFIXES
                               and not c.name.startswith(".") and not c.name.endswith(".partial"))
                photos = sorted(c.name for c in p.iterdir() if c.suffix.lower() in PHOTO_SUFFIXES)
                if photos:  # images a user may expect to be restored: say they are not
                    warnings.warn(f"{len(photos)} file(s) in {p} are not read (photo formats, "
                                  f"not microscopy data): {', '.join(photos[:5])}"
                                  f"{' …' if len(photos) > 5 else ''}", stacklevel=2)
                if not found:
                    raise FileNotFoundError(f"folder {p} holds no image files "
                                            f"({', '.join(IMAGE_SUFFIXES)})")
            else:
                found = [p]
        for f in found:
            if f.resolve() not in {o.resolve() for o in out}:
                out.append(f)
    return out


def stem_of(path: Path) -> str:
    name = path.name
    for suffix in _STRIP:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_for(path: Path, outdir: Path, fmt: str) -> tuple[Path, str]:
    """Output path and resolved format of input ``path``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        fmt = "ome-zarr" if path.suffix.lower() == ".zarr" else "ome-tiff"
    ext = ".ome.zarr" if fmt == "ome-zarr" else ".ome.tif"
    return outdir / (stem_of(path) + ext), fmt


def without_psf_file(inputs: list[Path], settings: RestoreSettings) -> list[Path]:
    """``inputs`` less the PSF file the settings name (a folder of images often holds it
    too), with a warning where it was among them.

    Parameters
    ----------
    inputs
        The expanded inputs (:func:`expand_inputs`).
    settings
        The run's settings; a PSF file counts with PSF model 'file'.

    Returns
    -------
    list of Path
        The inputs to restore.

    Raises
    ------
    FileNotFoundError
        The PSF file was the only input.
    """
    if settings.psf_kind != "file" or not settings.psf_path:
        return inputs
    psf = Path(settings.psf_path).resolve()
    kept = [p for p in inputs if p.resolve() != psf]
    if len(kept) < len(inputs):
        if not kept:
            raise FileNotFoundError(f"the only input is the PSF file {settings.psf_path}: "
                                    "give the images to restore")
        warnings.warn(f"{Path(settings.psf_path).name} is the PSF file (--psf): it is not "
                      "restored as an image", stacklevel=2)
    return kept


def check_run_wide(settings: RestoreSettings, chunk: int) -> None:
    """Refuse, once for the whole run, what would fail every input alike.

    Parameters
    ----------
    settings
        The run's settings; with PSF model 'file' the PSF file is read and cleaned here
        (:func:`~pkl_dg.physics.psf_cleaning.clean_psf`; its warnings are said later, once,
        by the blocks' report).
    chunk
        The chunk side (px; 0 = never cut).

    Raises
    ------
    ValueError
        ``chunk`` between 1 and :data:`~pkl_dg.batch.tiles.MIN_CHUNK` − 1; a PSF file that
        cannot be read or holds no usable PSF, or a 2D PSF in 3D mode.
    FileNotFoundError
        The PSF file does not exist.
    """
    from pkl_dg.physics.psf import load_psf
    from pkl_dg.physics.psf_cleaning import clean_psf

    if 0 < chunk < MIN_CHUNK:
        raise ValueError(f"--chunk {chunk} px is too small: use at least {MIN_CHUNK} "
                         "(or 0: never cut)")
    if settings.psf_kind != "file" or not settings.psf_path:
        return
    kernel = load_psf(settings.psf_path)
    three_d = settings.mode == "3d"
    if three_d and kernel.ndim != 3:
        raise ValueError(f"3D mode needs a 3D PSF (Z, Y, X); {settings.psf_path} has shape "
                         f"{kernel.shape}: pick a PSF stack or use 2D mode")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            clean_psf(kernel, keep_3d=three_d)
        except ValueError as exc:
            raise ValueError(f"PSF file {settings.psf_path}: {exc}") from None


def plan_outputs(inputs: list[Path], outdir: Path, fmt: str,
                 settings: RestoreSettings) -> list[Job]:
    """One job per input; refuses two inputs that would write the same output."""
    jobs, seen = [], {}
    for p in inputs:
        out, f = output_for(p, outdir, fmt)
        if out.resolve() == p.resolve():
            raise ValueError(f"the output {out} would replace its input: choose another -o")
        if out in seen:
            raise ValueError(f"{seen[out]} and {p} would both be written to "
                             f"{out.name}: rename one or run them in separate batches")
        seen[out] = p
        jobs.append(Job(p, out, f, settings))
    return jobs


def plan_job(job: Job, given: set[str], chunk: int) -> None:
    """Open the job's input, fill in its axes, blocks, chunks and physical settings.

    Raises
    ------
    ValueError
        The file cannot be read, or its axes do not fit the mode (3D mode needs a Z axis).
        What tifffile logs while opening it is kept in ``job.reader_notes``.
    """
    from pkl_dg.batch.reading import reader_notes
    from pkl_dg.io import open_image
    from pkl_dg.psf_source import psf_from_settings
    from pkl_dg.restoration import check_image_shape

    with reader_notes() as notes:  # said once by the batch, not printed by tifffile
        img = open_image(job.input)
    job.reader_notes = notes
    s = job.settings
    over = physical_overrides(img, given, s)
    if over:
        s = s.replace(**over)
    job.sampling_assumed = assumed_sampling(job.input.name, s, given, over)
    if s.mode == "3d" and "Z" not in img.axes:
        raise ValueError(f"3D mode needs a Z-stack, but {job.input.name} has axes "
                         f"{img.axes} (no Z axis): restore it in 2D mode")
    check_image_shape(img.shape, s.mode)
    block_ndim = 3 if s.mode == "3d" else 2
    lead = img.shape[: len(img.shape) - block_ndim]
    job.settings, job.axes, job.shape = s, img.axes, img.shape
    job.blocks = list(np.ndindex(*lead))
    job.image_meta = img.physical_metadata()
    job.given_sampling = {n: getattr(s, n) for n in ("pixel_size_nm", "z_step_nm")
                          if n in given and getattr(s, n)}
    job.image_meta["scenes"] = img.scenes
    h, w = img.shape[-2:]
    if chunk and s.mode == "2d" and max(h, w) > chunk:
        with warnings.catch_warnings():  # its warnings: said once by the blocks' report
            warnings.simplefilter("ignore")
            psf = psf_from_settings(s, img.shape).kernel
        job.chunks = plan_chunks(h, w, chunk, margin_for(psf.shape, s.method))
