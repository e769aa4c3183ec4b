"""``pkl-dg restore``: restore a 2D image file headlessly.

Its flags are generated from :func:`pkl_dg.settings.field_specs` (flag = field name with
'_' → '-' and a trailing '_nm' dropped), so CLI, widget and metadata share one schema. The
schema also says when a setting applies (:func:`pkl_dg.settings.applies`): the PSF model
follows from the PSF flags given, and a flag that has no effect on the run is reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pkl_dg.settings import IMAGE_FIELDS, PSF_KINDS, RestoreSettings, field_specs
from pkl_dg.settings_rules import applies, applies_text, calibration_implied

_TYPES = {"float": float, "int": int, "str": str}
#: the PSF models a flag can select (an array is passed from Python, not from the CLI)
_CLI_PSF_KINDS = tuple(k for k in PSF_KINDS if k != "array")
#: settings that describe one PSF model (not a supplied PSF array): giving one selects it
_MODEL_FIELDS = tuple(s.name for s in field_specs() if s.applies_when and all(
    "array" not in alt.get("psf_kind", ("array",)) for alt in s.applies_when))


def flag_for(name: str) -> str:
    """The command-line flag of a setting (``psf_path``: ``--psf``, also ``--psf-path``)."""
    return "--psf" if name == "psf_path" else "--" + name.removesuffix("_nm").replace("_", "-")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, default None (= the schema's default), grouped as in the GUI;
    its help says when the setting applies."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in field_specs():
        if spec.name == "threads":  # every command has --threads (add_threads_argument)
            continue
        group = groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        flags = [flag_for(spec.name)]
        if spec.name == "psf_path":
            flags.append("--psf-path")
        unit = f" [{spec.unit}]" if spec.unit else ""
        when = applies_text(spec.name)
        when = f" Applies with {when}." if when else ""
        group.add_argument(*flags, dest=spec.name, type=_TYPES[spec.type], default=None,
                           choices=_CLI_PSF_KINDS if spec.name == "psf_kind" else spec.choices,
                           metavar=None if spec.choices else spec.type.upper(),
                           help=f"{spec.help}{unit}{when} (default: {spec.default!r})")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (not the defaults), with the PSF model they describe
    when ``--psf-kind`` is not given: the first of gaussian, airy, vectorial, file to which
    every given PSF-model flag applies (``--na`` → airy, ``--psf`` → file, ``--sample-ri``
    → vectorial). Model none (no blur: denoising only) has no flags of its own; only
    ``--psf-kind none`` selects it.

    Raises
    ------
    ValueError
        PSF flags of two models and no ``--psf-kind`` (``--psf FILE --psf-sigma 2``).
    """
    given = {s.name: getattr(args, s.name) for s in field_specs()
             if getattr(args, s.name, None) is not None}
    models = [n for n in given if n in _MODEL_FIELDS]
    if "psf_kind" not in given and models:
        base = {**RestoreSettings().to_dict(), **given}
        kinds = {n: [k for k in _CLI_PSF_KINDS if applies(n, {**base, "psf_kind": k})]
                 for n in models}
        kinds = {n: k for n, k in kinds.items() if k}  # none here (σ Z in 2D): reported
        fits = [k for k in _CLI_PSF_KINDS if all(k in ks for ks in kinds.values())]
        if not fits:  # e.g. --psf FILE and --psf-sigma: which PSF did the user mean?
            raise ValueError("the PSF flags given describe different PSF models ("
                             + ", ".join(f"{flag_for(n)}: {'/'.join(k)}"
                                         for n, k in kinds.items())
                             + "): keep those of one model, or choose it with --psf-kind")
        given["psf_kind"] = fits[0]
    return calibration_implied(given)


def settings_from_args(args: argparse.Namespace) -> RestoreSettings:
    """Settings from parsed flags (:func:`given_settings`)."""
    return RestoreSettings.from_dict(given_settings(args))


def report_not_applied(args: argparse.Namespace, settings: RestoreSettings) -> list[str]:
    """Print a warning for every flag given that has no effect on a run with ``settings``
    (e.g. ``--samples`` with ``--method rl``); return those settings' names."""
    specs = {s.name: s for s in field_specs()}
    # the image's sampling is never ignored: recorded with the result, written as an
    # OME-TIFF's physical size, the FRC's nm
    ignored = [n for n in given_settings(args)
               if not applies(n, settings) and n not in IMAGE_FIELDS]
    for name in ignored:
        keys = dict.fromkeys(k for alt in specs[name].applies_when for k in alt)
        here = ", ".join(f"{k} {getattr(settings, k)}" for k in keys)
        print(f"pkl-dg {args.command}: warning: {flag_for(name)} is ignored: it applies with "
              f"{applies_text(name)} (here {here})", file=sys.stderr)
    return ignored


def check_output_folders(paths: list[Path]) -> None:
    """Refuse, before any computing, outputs whose folder does not exist (found only when
    writing, after the whole run, they cost that run)."""
    for p in paths:
        if not p.parent.is_dir():
            raise FileNotFoundError(f"the output folder {p.parent} does not exist: create it "
                                    "or choose another")


def check_not_inputs(outputs: list[Path], inputs: list[Path]) -> None:
    """Refuse outputs that are one of the input files (the image, the PSF file).

    Parameters
    ----------
    outputs
        The files the command will write (the result, its std file).
    inputs
        The files it reads.

    Raises
    ------
    ValueError
        An output is an input: with ``--overwrite`` the measurement would be replaced by
        its restoration.
    """
    for out in outputs:
        for src in inputs:
            same = out.exists() and src.exists() and out.samefile(src)
            if same or out.resolve() == src.resolve():
                raise ValueError(f"the output {out} is the input file {src}: it would be "
                                 "replaced by the result; choose another output name")


def std_path_for(output: Path) -> Path:
    """Where the posterior std goes: ``NAME_std`` beside ``output``, same suffix
    (``.ome.tif`` kept whole)."""
    from pkl_dg.io.write import OME_SUFFIXES

    name = output.name
    suffix = next((x for x in OME_SUFFIXES if name.lower().endswith(x)), output.suffix)
    stem = name[: len(name) - len(suffix)]
    return output.with_name(f"{stem}_std{name[len(stem):]}")


def register(subparsers) -> None:
    from pkl_dg.cli import add_threads_argument

    p = subparsers.add_parser(
        "restore", help="restore an image or stack (TIFF or .npy) to a float32 TIFF",
        description="Deconvolve a fluorescence image or stack (last two axes YX; --mode 3d "
                    "treats the last three as a ZYX volume). Output: float32 photon counts, "
                    "all parameters as JSON in the file (ImageJ Info or OME description); "
                    "with --samples N > 1 "
                    "also OUT_std.tif, the per-pixel posterior standard deviation (not for "
                    "--method rl, which draws no samples).")
    p.add_argument("input", type=Path, help="input image (TIFF, OME-TIFF, OME-Zarr, .npy, or "
                   "any format a bioio plugin reads)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output .tif (an ImageJ hyperstack, as Fiji writes: the input's axes and "
                   "physical sizes, the metadata as JSON in its Info), or .ome.tif (an "
                   "OME-TIFF with the input's axes and the physical sizes the input states "
                   "or you give, the metadata as JSON too)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_arguments(p)
    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pkl_dg.imageio import write_result
    from pkl_dg.io.write import OME_SUFFIXES, write_ome_tiff
    from pkl_dg.inputs import physical_overrides
    from pkl_dg.sampling_assumed import assumed_sampling
    from pkl_dg.io import open_image
    from pkl_dg.restoration import restore_iter
    from pkl_dg.uncertainty import has_posterior_std

    settings = settings_from_args(args)
    ignored = report_not_applied(args, settings)
    name = args.output.name.lower()
    if not name.endswith((".tif", ".tiff")):  # said before any work, not after the run
        zarr = " (OME-Zarr: pkl-dg batch --format ome-zarr)" if ".zarr" in name else ""
        raise ValueError(f"output must be a .tif, .tiff or .ome.tif file, got "
                         f"{args.output.name}{zarr}")
    outputs = [args.output]
    with_std = has_posterior_std(settings)
    std_path = std_path_for(args.output)
    if with_std:
        outputs.append(std_path)
    check_not_inputs(outputs, [args.input] + ([Path(settings.psf_path)]
                                              if settings.psf_path else []))
    for out in outputs:
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    check_output_folders(outputs)
    source = open_image(args.input)
    image = source.numpy()
    # axes from the file's metadata (TCZYX order): channels and time are never deconvolved
    # along; a .npy file has none ("Q" axes): its layout is then checked as unlabelled
    axes = None if "Q" in source.axes else source.axes
    ome = args.output.name.lower().endswith(OME_SUFFIXES)
    if ome and axes is None:
        raise ValueError(f"an OME-TIFF output needs the input's axes, and {args.input.name} "
                         "names none: write a .tif")
    # the sampling the image's and the PSF file's metadata state
    given = set(given_settings(args))
    from_file = physical_overrides(source, given, settings)
    settings = settings.replace(**from_file)
    from_psf = [n for n, v in (("pixel_size_nm", source.pixel_size_nm),
                               ("z_step_nm", source.z_step_nm)) if n in from_file and not v]
    if from_psf:
        print(f"pkl-dg restore: note: {args.input.name} states no "
              f"{' or '.join(n[:-3].replace('_', ' ') for n in from_psf)}: taken from the PSF "
              f"file ({', '.join(f'{from_file[n]:g} nm' for n in from_psf)})", file=sys.stderr)
    assumed = assumed_sampling(args.input.name, settings, given, from_file)
    run = restore_iter(image, settings, axes=axes)
    bars = []  # created on the first frame, so input errors print only their message

    # RL's automatic count ends when the fit reaches the noise: no total to show (it
    # showed its cap, the bar ending at "171/6000")
    open_count = settings.method == "rl" and settings.rl_iterations == 0

    def progress(rec) -> None:
        if not bars:
            bars.append(tqdm(total=None if open_count else rec.total, desc=settings.method,
                             unit="step", file=sys.stderr, disable=args.quiet))
        bar = bars[0]
        bar.update(1)
        if rec.nll is not None:
            bar.set_postfix_str(f"misfit {rec.nll:.4g}", refresh=False)

    try:
        result = run.finish(progress)
    finally:
        for bar in bars:
            bar.close()
    meta = {**result.metadata, "input_file": str(args.input), "input_axes": source.axes}
    if from_file:
        meta["settings_from_file"] = from_file
    if from_psf:
        meta["image_sampling_from_psf_file"] = from_psf
    if assumed:  # the nm figures of the metadata (PSF FWHM, spacing) rest on a default
        meta["sampling_assumed"] = assumed
    if ignored:  # given, but without effect on this run
        meta["settings_not_applied"] = ignored
    with_std = with_std and result.std is not None
    if with_std:
        meta["std_file"] = str(std_path)

    # physical sizes the user gave (those the PSF was built at) or the file states, never
    # an assumed one (the file's alone were written, whatever the PSF was built at)
    px = (settings.pixel_size_nm,) * 2 if "pixel_size_nm" in given else source.pixel_size_nm
    z = settings.z_step_nm if "z_step_nm" in given and settings.z_step_nm else source.z_step_nm
    for flag, mine, theirs in (("--pixel-size", px and px[1], source.pixel_size_nm
                                and source.pixel_size_nm[1]), ("--z-step", z, source.z_step_nm)):
        if mine and theirs and abs(mine - theirs) > 1e-6 * theirs:
            print(f"pkl-dg restore: note: {flag} {mine:g} nm replaces the {theirs:g} nm "
                  f"{args.input.name} states (used for the PSF and written to the output)",
                  file=sys.stderr)

    def write(path: Path, image, metadata: dict) -> None:
        if not ome:
            write_result(path, image, metadata, overwrite=args.overwrite, axes=axes,
                         pixel_size_nm=px, z_step_nm=z,
                         time_interval_s=source.time_interval_s)
            return
        write_ome_tiff(path, image, source.axes, metadata, pixel_size_nm=px, z_step_nm=z,
                       time_interval_s=source.time_interval_s, overwrite=args.overwrite,
                       channel_names=source.channel_names)

    write(args.output, result.image, meta)
    if with_std:
        write(std_path, result.std, {**meta, "content": "per-pixel standard deviation of "
                                     "single posterior samples, photons (not a calibrated "
                                     "error bar: see posterior_std)"})
    if not args.quiet:
        shape = "×".join(map(str, result.image.shape))
        extra = f" and {std_path}" if with_std else ""
        print(f"wrote {args.output}{extra} ({shape} float32, {meta['seconds']} s)",
              file=sys.stderr)
    return 0
