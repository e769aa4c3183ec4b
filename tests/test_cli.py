import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tifffile

from pkl_dg import RestoreSettings
from pkl_dg.cli import main
from pkl_dg.imageio import read_metadata


@pytest.fixture
def image_file(tmp_path, scene):
    _, y, _, _ = scene
    p = tmp_path / "in.tif"
    tifffile.imwrite(p, y.astype(np.uint16))
    return p


def test_restore_round_trip(tmp_path, image_file, capsys):
    out = tmp_path / "out.tif"
    rc = main(["restore", str(image_file), "-o", str(out), "--method", "rl",
               "--rl-iterations", "5", "--psf-sigma", "1.5", "--background", "2"])
    assert rc == 0
    img = tifffile.imread(out)
    assert img.dtype == np.float32 and img.shape == (48, 48)
    meta = read_metadata(out)
    assert meta["settings"]["method"] == "rl" and meta["settings"]["psf_sigma"] == 1.5
    assert meta["settings"]["rl_iterations"] == 5 and meta["units"] == "photons"
    assert "5/5" in capsys.readouterr().err  # progress bar on stderr
    # RL's automatic count: the bar counts without a total (it ended at "171/6000")
    assert main(["restore", str(image_file), "-o", str(out), "--method", "rl",
                 "--psf-sigma", "1.5", "--overwrite"]) == 0
    n = read_metadata(out)["rl_auto_iterations"]
    err = capsys.readouterr().err
    assert f"{n}step" in err.replace(" ", "") and "/500" not in err


def test_restore_takes_the_pixel_size_and_z_step_the_file_states(tmp_path):
    """An ImageJ TIFF's pixel size (42.6137 nm) and Z step fill in the settings the user did
    not give: an Airy PSF is computed for the file's pixels, not the default 65 nm."""
    src = tmp_path / "stack.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(src, rng.poisson(20, (3, 40, 40)).astype(np.uint16), imagej=True,
                     resolution=(1 / 0.0426137, 1 / 0.0426137),
                     metadata={"unit": "um", "spacing": 0.25, "axes": "ZYX"})
    flags = ["--method", "rl", "--rl-iterations", "2", "--na", "1.4", "--wavelength", "520",
             "--quiet"]
    out = tmp_path / "out.tif"
    assert main(["restore", str(src), "-o", str(out), *flags]) == 0
    meta = read_metadata(out)
    assert meta["settings"]["pixel_size_nm"] == pytest.approx(42.6137)
    assert meta["settings_from_file"] == {"pixel_size_nm": pytest.approx(42.6137),
                                          "z_step_nm": pytest.approx(250.0)}
    fwhm_nm, fwhm_px = meta["psf"]["fwhm_nm"][-1], meta["psf"]["fwhm_px"][-1]
    assert fwhm_nm / fwhm_px == pytest.approx(42.6137, rel=1e-3)
    with tifffile.TiffFile(out) as tif:  # three planes, not one RGB image
        assert len(tif.pages) == 3 and tif.pages[0].photometric.name == "MINISBLACK"
        assert tif.series[0].shape == (3, 40, 40)
    given = tmp_path / "given.tif"  # a pixel size the user gives wins over the file's
    assert main(["restore", str(src), "-o", str(given), *flags, "--pixel-size", "80"]) == 0
    meta = read_metadata(given)
    assert meta["settings"]["pixel_size_nm"] == 80.0
    assert meta["settings_from_file"] == {"z_step_nm": pytest.approx(250.0)}
    assert "sampling_assumed" not in meta
    bare = tmp_path / "bare.tif"  # states nothing: the 65 nm default is said to be assumed
    tifffile.imwrite(bare, rng.poisson(20, (40, 40)).astype(np.uint16))
    assert main(["restore", str(bare), "-o", str(tmp_path / "b.tif"), *flags]) == 0
    assert read_metadata(tmp_path / "b.tif")["sampling_assumed"] == {"pixel_size_nm": 65.0}


def test_refuses_to_overwrite(tmp_path, image_file, capsys):
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")
    rc = main(["restore", str(image_file), "-o", str(out), "--method", "rl", "--quiet"])
    assert rc == 2 and out.read_bytes() == b"keep me"
    assert "--overwrite" in capsys.readouterr().err
    rc = main(["restore", str(image_file), "-o", str(out), "--method", "rl", "--quiet",
               "--rl-iterations", "2", "--overwrite"])
    assert rc == 0 and tifffile.imread(out).dtype == np.float32


def test_threads_option(tmp_path, image_file, capsys):
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "out.tif"
    try:
        rc = main(["restore", str(image_file), "-o", str(out), "--method", "rl", "--quiet",
                   "--rl-iterations", "2", "--threads", "1"])
        assert rc == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for cmd in (["restore", str(image_file), "-o", str(tmp_path / "o2.tif")],
                ["compare", str(image_file), "--csv", str(tmp_path / "t.csv")],
                ["train", "--out", str(tmp_path / "run")],
                ["bench", "speed", "--smoke", "--json", str(tmp_path / "s.json")]):
        assert main([*cmd, "--threads", "-1"]) == 2
        assert "CPU threads must be ≥ 0 (0 = automatic)" in capsys.readouterr().err
        assert torch.get_num_threads() == before
    # the flag is the settings' field: its help, and 0 (the default) = automatic
    from pkl_dg.cli import build_parser
    from pkl_dg.settings import RestoreSettings
    from pkl_dg.threads import default_threads

    assert RestoreSettings().threads == 0
    assert "automatic" in build_parser()._subparsers._group_actions[0].choices[
        "restore"].format_help()
    try:
        assert main(["restore", str(image_file), "-o", str(tmp_path / "o3.tif"), "--method",
                     "rl", "--quiet", "--rl-iterations", "2"]) == 0
        assert torch.get_num_threads() == default_threads()
    finally:
        torch.set_num_threads(before)


def test_psf_file_and_airy_flags(tmp_path, image_file):
    from pkl_dg.cli.restore import settings_from_args
    from pkl_dg.cli import build_parser
    from pkl_dg.physics import gaussian_psf

    psf = tmp_path / "psf.npy"
    np.save(psf, gaussian_psf(1.2))
    out = tmp_path / "o.tif"
    assert main(["restore", str(image_file), "-o", str(out), "--psf", str(psf),
                 "--method", "rl", "--rl-iterations", "2", "--quiet"]) == 0
    assert read_metadata(out)["settings"]["psf_kind"] == "file"
    args = build_parser().parse_args(["restore", "x.tif", "-o", "y.tif", "--na", "1.2",
                                      "--wavelength", "600", "--pixel-size", "80"])
    s = settings_from_args(args)
    assert (s.psf_kind, s.na, s.wavelength_nm, s.pixel_size_nm) == ("airy", 1.2, 600.0, 80.0)


@pytest.mark.parametrize("make,msg", [
    (lambda p: None, "not found"),
    (lambda p: tifffile.imwrite(p, np.zeros((32, 32, 3), np.uint8)), "RGB"),
    (lambda p: tifffile.imwrite(p, np.full((32, 32), np.nan, np.float32)), "NaN"),
    (lambda p: p.write_bytes(b"not a tiff"), "cannot read"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, make, msg):
    src = tmp_path / "bad.tif"
    make(src)
    proc = subprocess.run([sys.executable, "-m", "pkl_dg.cli", "restore", str(src), "-o",
                           str(tmp_path / "o.tif"), "--method", "rl"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and msg in err


def test_psf_too_large_and_bad_value_exit_2(tmp_path, image_file, capsys):
    rc = main(["restore", str(image_file), "-o", str(tmp_path / "o.tif"), "--method", "rl",
               "--psf-sigma", "12"])
    assert rc == 2 and "larger than the image" in capsys.readouterr().err
    rc = main(["restore", str(image_file), "-o", str(tmp_path / "o.tif"), "--gain", "-1"])
    assert rc == 2 and "Gain" in capsys.readouterr().err


def test_cli_does_not_import_qt_or_napari():
    code = ("import sys, pkl_dg, pkl_dg.cli; pkl_dg.cli.build_parser(); "
            "import pkl_dg.restoration; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'magicgui')]; "
            "print(json.dumps(bad))")
    proc = subprocess.run([sys.executable, "-c", "import json; " + code],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == []


def test_stack_and_samples(tmp_path, scene, monkeypatch):
    import torch

    _, y, _, _ = scene
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.stack([y, y]).astype(np.float32))
    out = tmp_path / "o.tif"
    assert main(["restore", str(src), "-o", str(out), "--method", "rl",
                 "--rl-iterations", "2", "--quiet"]) == 0
    assert tifffile.imread(out).shape == (2, 48, 48)

    conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def fake_load(path, device="cpu"):
        return (lambda x, t: conv(x)), {"name": "test"}

    monkeypatch.setattr("pkl_dg.diffusion.model_io.load_model", fake_load)
    out2 = tmp_path / "s.tif"
    assert main(["restore", str(src), "-o", str(out2), "--steps", "2", "--samples", "3",
                 "--eta", "1", "--quiet"]) == 0
    std = tifffile.imread(tmp_path / "s_std.tif")
    assert std.shape == (2, 48, 48) and std.mean() > 0
    assert read_metadata(out2)["std_file"].endswith("s_std.tif")


def test_restore_to_an_ome_tiff_keeps_axes_and_physical_sizes(tmp_path, capsys):
    """-o NAME.ome.tif writes an OME-TIFF with the input's axes and the pixel size and Z
    step the input states (its std beside it as NAME_std.ome.tif); napari's pkl-dg reader
    and bioio read them back."""
    from pkl_dg.io import open_image

    src = tmp_path / "stack.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(src, rng.poisson(20, (3, 40, 40)).astype(np.uint16), imagej=True,
                     resolution=(1 / 0.0426137, 1 / 0.0426137),
                     metadata={"unit": "um", "spacing": 0.25, "axes": "ZYX"})
    out = tmp_path / "out.ome.tif"
    assert main(["restore", str(src), "-o", str(out), "--steps", "2", "--samples", "2",
                 "--quiet", "--threads", "1"]) == 0
    img = open_image(out)
    assert img.axes == "ZYX" and img.shape == (3, 40, 40) and img.numpy().dtype == np.float32
    assert img.pixel_size_nm == pytest.approx((42.6137, 42.6137), rel=1e-4)
    assert img.z_step_nm == pytest.approx(250.0)
    assert read_metadata(out)["settings"]["pixel_size_nm"] == pytest.approx(42.6137)
    std = tmp_path / "out_std.ome.tif"
    assert read_metadata(out)["std_file"] == str(std) and open_image(std).axes == "ZYX"
    npy = tmp_path / "plain.npy"
    np.save(npy, rng.poisson(20, (2, 40, 40)).astype(np.float32))  # axes unknown: Q, Y, X
    assert main(["restore", str(npy), "-o", str(tmp_path / "x.ome.tif"), "--quiet"]) == 2
    assert "OME-TIFF output needs the input's axes" in capsys.readouterr().err


def test_a_plain_tiff_result_is_an_imagej_hyperstack_with_its_axes_and_sizes(tmp_path):
    """-o NAME.tif of a (C, Z, Y, X) stack wrote C·Z plain pages: tifffile read the result
    back as 6 unnamed planes (a Z-stack as IYX), Fiji as one stack with the channels among
    the slices. It is now an ImageJ hyperstack (Fiji's order Z, C, Y, X) with the pixel
    size, Z step and the run's parameters; the pkl-dg reader gives back the input's axes."""
    from pkl_dg.io import open_image

    src = tmp_path / "czyx.ome.tif"
    rng = np.random.default_rng(2)
    stack = rng.poisson(20, (2, 3, 40, 40)).astype(np.uint16)
    stack[1] *= 3  # the channels differ, so a swap of C and Z shows
    tifffile.imwrite(src, stack, ome=True, metadata={
        "axes": "CZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 0.3})
    out = tmp_path / "out.tif"
    assert main(["restore", str(src), "-o", str(out), "--method", "rl", "--rl-iterations",
                 "2", "--psf-sigma", "1.5", "--quiet", "--threads", "1"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZCYX"
        assert tif.series[0].shape == (3, 2, 40, 40)
        ij = tif.imagej_metadata
        assert ij["unit"] == "um" and ij["spacing"] == pytest.approx(0.3)
        data = tif.asarray()
    assert data[:, 1].mean() > 2 * data[:, 0].mean()  # channel 1 is the brighter one
    back = open_image(out)
    assert back.axes == "CZYX" and back.shape == (2, 3, 40, 40)
    assert back.pixel_size_nm == pytest.approx((100.0, 100.0), rel=1e-4)
    assert back.z_step_nm == pytest.approx(300.0)
    meta = read_metadata(out)
    assert meta["input_axes"] == "CZYX" and meta["settings"]["method"] == "rl"
    # the metadata names the axes in the file's order (it said the result was CZYX)
    assert meta["file_axes"] == "ZCYX" and meta["axes"]["result"] == "ZCYX"


def test_non_square_pixels_are_warned_of(tmp_path):
    """An OME-TIFF of 0.2 × 0.1 µm pixels got a PSF built on square 100 nm pixels, twice
    too wide along Y, without a word; the widget read the X size only, too."""
    from napari.layers import Image

    from pkl_dg.napari.controls import pixel_size_note
    from pkl_dg.physics.psf_cleaning import PSFWarning

    src = tmp_path / "aniso.ome.tif"
    img = np.random.default_rng(5).poisson(20, (40, 40)).astype(np.uint16)
    tifffile.imwrite(src, img, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.1,
                                                   "PhysicalSizeY": 0.2})
    with pytest.warns(PSFWarning, match="200 × 100 nm .* not square"):
        assert main(["restore", str(src), "-o", str(tmp_path / "o.tif"), "--psf-kind", "airy",
                     "--method", "rl", "--rl-iterations", "2", "--quiet", "--threads", "1"]) == 0
    said = []
    layer = Image(img.astype(np.float32), scale=(0.2, 0.1), units=("um", "um"), name="aniso")
    pixel_size_note(layer, RestoreSettings(pixel_size_nm=100.0), said.append)
    assert len(said) == 1 and "not square" in said[0]
    square = Image(img.astype(np.float32), scale=(0.1, 0.1), units=("um", "um"))
    said.clear()
    pixel_size_note(square, RestoreSettings(pixel_size_nm=100.0), said.append)
    assert said == []


def test_a_plain_tiff_result_states_the_pixel_size_given_never_an_assumed_one(tmp_path):
    """-o NAME.tif stores the pixel size the input states (or the user gives) in the TIFF
    resolution tags, so Fiji and bioio read it back; one the run only assumed is not
    written (the file then has no physical size, as its input had none)."""
    from pkl_dg.io import open_image

    rng = np.random.default_rng(1)
    src = tmp_path / "cal.tif"
    tifffile.imwrite(src, rng.poisson(20, (40, 44)).astype(np.uint16), imagej=True,
                     resolution=(1 / 0.0426137, 1 / 0.0426137), metadata={"unit": "um"})
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, rng.poisson(20, (40, 44)).astype(np.uint16))
    runs = {"from_file": (src, []), "given": (plain, ["--pixel-size", "80"]),
            "assumed": (plain, [])}
    for name, (inp, extra) in runs.items():
        out = tmp_path / f"{name}.tif"
        assert main(["restore", str(inp), "-o", str(out), "--method", "rl", "--quiet",
                     *extra]) == 0
        runs[name] = open_image(out).pixel_size_nm
    assert runs["from_file"] == pytest.approx((42.6137, 42.6137), rel=1e-5)
    assert runs["given"] == pytest.approx((80.0, 80.0))
    assert runs["assumed"] is None


def test_a_missing_output_folder_is_refused_before_the_run(tmp_path, image_file, capsys):
    """Found only when writing, after the whole run, it cost that run."""
    out = tmp_path / "nowhere" / "out.tif"
    assert main(["restore", str(image_file), "-o", str(out), "--method", "rl"]) == 2
    err = capsys.readouterr().err
    assert f"the output folder {out.parent} does not exist" in err
    # no progress bar: nothing ran (it said '"1/" not in err', which failed whenever
    # pytest's temporary folder was numbered like pytest-161/)
    assert "step/s" not in err and "|" not in err
    assert main(["compare", str(image_file), "--methods", "rl", "--png", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "done in" not in err


def test_warnings_read_as_the_commands_own_lines(tmp_path):
    """Not Python's "path/module.py:66: CalibrationWarning: … <source line>"."""
    src = tmp_path / "flat.tif"  # noise that does not grow with the signal: no calibration
    tifffile.imwrite(src, np.full((32, 32), 7, np.uint16))
    proc = subprocess.run([sys.executable, "-m", "pkl_dg.cli", "restore", str(src), "-o",
                           str(tmp_path / "o.tif"), "--method", "rl", "--rl-iterations", "2",
                           "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and all(line.startswith("pkl-dg restore: warning: ") for line in lines)
    assert "Warning:" not in proc.stderr and ".py:" not in proc.stderr


def test_a_bad_flag_value_is_one_line_not_the_whole_usage(capsys):
    """argparse printed restore's 20-line usage above the one line that says what is
    wrong; now the error and a pointer to --help."""
    with pytest.raises(SystemExit) as exc:
        main(["restore", "in.tif", "--steps", "abc"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" not in err and len(err.strip().splitlines()) == 2
    assert "pkl-dg restore: error: argument --steps: invalid int value: 'abc'" in err
    assert "pkl-dg restore --help" in err


def test_compare_says_an_frc_without_crossing_in_words_and_gives_nm():
    from pkl_dg.cli.compare import frc_text

    assert frc_text({"frc_px": float("inf"), "frc_nm": float("inf")}).startswith("none")
    assert frc_text({"frc_px": 2.5, "frc_nm": 162.5}) == "2.50 px (162 nm)"
    assert frc_text({"frc_px": 2.5, "frc_nm": None}) == "2.50 px"


def test_restore_says_what_it_assumed_and_refuses_early(tmp_path, capsys):
    """From a new user's trial: an optical PSF silently took the default 65 nm pixel for a
    file that states none (the 130 nm DAPI stack got a PSF twice too wide, and only a
    misfit warning followed); an .ome.zarr output was refused after the whole analysis; a
    warning given mid-run was glued to the progress bar; blocks were named 'block (0,)'."""
    rng = np.random.default_rng(2)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, rng.poisson(30, (48, 48)).astype(np.uint16))
    out = tmp_path / "o.tif"
    with pytest.warns(UserWarning, match="plain.tif states no pixel size and none was given: "
                      "the airy PSF is computed for 65 nm pixels .* give --pixel-size"):
        assert main(["restore", str(plain), "-o", str(out), "--psf-kind", "airy", "--na",
                     "1.2", "--method", "rl", "--rl-iterations", "2", "--quiet"]) == 0
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert main(["restore", str(plain), "-o", str(out), "--psf-kind", "airy", "--na",
                     "1.2", "--pixel-size", "100", "--method", "rl", "--rl-iterations", "2",
                     "--quiet", "--overwrite"]) == 0
    assert not [w for w in said if "states no pixel size" in str(w.message)]
    assert main(["restore", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "r.ome.zarr"),
                 "--quiet"]) == 2  # the name is checked before the input is even opened
    assert "output must be a .tif, .tiff or .ome.tif file, got r.ome.zarr (OME-Zarr: " \
           "pkl-dg batch --format ome-zarr)" in capsys.readouterr().err
    stack = rng.poisson(100, (3, 48, 48)).astype(np.uint16)
    stack[:, 10:13, 10:13] = 65535
    src = tmp_path / "tl.tif"
    tifffile.imwrite(src, stack, imagej=True, metadata={"axes": "TYX"})
    proc = subprocess.run([sys.executable, "-m", "pkl_dg.cli", "restore", str(src), "-o",
                           str(tmp_path / "tl_r.tif"), "--method", "rl", "--rl-iterations",
                           "3", "--threads", "1"],  # with the progress bar, as on a terminal
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.replace("\r", "\n").splitlines()
    assert any(line.startswith("pkl-dg restore: warning: 9 saturated pixel(s) in time "
                               "point 0 ") for line in lines)
    assert any(line.startswith("pkl-dg restore: warning: saturated pixels in 3 of 3") for
               line in lines)  # on a line of its own, not after the bar
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert main(["restore", str(png), "-o", str(out), "--overwrite", "--quiet"]) == 2
    assert "pip install bioio-imageio" in capsys.readouterr().err


def test_psf_flags_of_two_models_are_refused_not_half_ignored(tmp_path, image_file, capsys):
    """--psf FILE with --psf-sigma ran the Gaussian and warned that the file was ignored
    (exit 0): which PSF the user meant is theirs to say."""
    psf = tmp_path / "psf.tif"
    tifffile.imwrite(psf, np.pad(np.ones((3, 3), np.float32), 4))
    rc = main(["restore", str(image_file), "-o", str(tmp_path / "o.tif"), "--psf", str(psf),
               "--psf-sigma", "2", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "the PSF flags given describe different PSF models (--psf-sigma: " \
        "gaussian, --psf: file)" in err and "--psf-kind" in err
    assert not (tmp_path / "o.tif").exists()
    assert main(["restore", str(image_file), "-o", str(tmp_path / "o.tif"), "--psf", str(psf),
                 "--psf-sigma", "2", "--psf-kind", "file", "--method", "rl",
                 "--rl-iterations", "2", "--quiet"]) == 0  # chosen: the other is ignored
    assert "--psf-sigma is ignored" in capsys.readouterr().err
