"""Issue 13, items 4–5: one cleaning pipeline for every measured PSF (file, array, layer,
beads) with its diagnostics, and PSF resampling to the image's voxel size in 2D and 3D."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from cases import read
from pkl_dg import RestoreSettings
from pkl_dg.physics import ForwardModel, PSFConvolution, fwhm_of, gaussian_psf, gaussian_psf_3d
from pkl_dg.physics.psf_cleaning import PSFWarning, clean_psf
from pkl_dg.psf_source import psf_from_settings
from pkl_dg.restoration import restore_iter

SIGMA = 1.8
BEADS = np.array([[20, 20], [20, 70], [70, 20], [70, 70], [45, 47]])


def raw_bead_crop(offset=(4.0, -3.6), seed=0) -> np.ndarray:
    """A 41×41 uint16 bead crop as a camera gives it: baseline 100 ADU, read noise 3 ADU,
    the bead ``offset`` px off the crop centre."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((41, 41))
    canvas[20, 20] = 40000.0
    canvas = ndimage.shift(ndimage.gaussian_filter(canvas, SIGMA), offset, order=3)
    noisy = rng.poisson(np.clip(canvas, 0, None)) + 100 + rng.normal(0, 3, canvas.shape)
    return np.clip(np.round(noisy), 0, 65535).astype(np.uint16)


def bead_scene(seed=1) -> np.ndarray:
    obj = np.zeros((96, 96), np.float32)
    obj[tuple(BEADS.T)] = 3000.0
    fm = ForwardModel(PSFConvolution(gaussian_psf(SIGMA)), 5.0)
    mu = fm.mean(torch.from_numpy(obj))
    return torch.poisson(mu, generator=torch.Generator().manual_seed(seed)).numpy()


def bead_positions(img: np.ndarray, near: np.ndarray, r: int = 4) -> np.ndarray:
    out = []
    for p in near:
        sl = tuple(slice(int(c) - r, int(c) + r + 1) for c in p)
        w = np.clip(img[sl] - np.median(img), 0, None)
        out.append([s.start + c for s, c in zip(sl, ndimage.center_of_mass(w))])
    return np.array(out)


def test_clean_psf_removes_baseline_centres_and_reports():
    raw = raw_bead_crop()
    with pytest.warns(PSFWarning, match="centre of mass"):
        psf, diag = clean_psf(raw)
    assert np.allclose(diag.centroid_offset_px, [4.0, -3.6], atol=0.1)
    assert abs(diag.baseline - 100) < 1 and 2 < diag.noise_sigma < 4.5
    assert diag.energy_kept > 0.99
    assert all(abs(f - 2.355 * SIGMA) < 0.3 for f in diag.fwhm_px)
    cy, cx = ndimage.center_of_mass(psf)
    assert abs(cy - psf.shape[0] // 2) < 0.05 and abs(cx - psf.shape[1] // 2) < 0.05
    ref = gaussian_psf(SIGMA, size=min(psf.shape))
    h = [(n - min(psf.shape)) // 2 for n in psf.shape]
    core = psf[h[0]:h[0] + ref.shape[0], h[1]:h[1] + ref.shape[1]]
    assert np.abs(core - ref).sum() < 0.06  # the flat baseline is gone


def _widefield_psf_stack(focus=8, planes=21, seed=0):
    """A measured-style widefield PSF stack: a spot that widens out of focus, each plane
    with about the same light (a little more far from focus, as a background gradient
    gives), on a baseline of 5 counts with Poisson noise; in focus at ``focus``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-20:21, -20:21]
    stack = []
    for z in range(planes):
        sigma = 1.2 + 0.8 * abs(z - focus)
        spot = np.exp(-(yy ** 2 + xx ** 2) / (2 * sigma ** 2))
        stack.append(spot / spot.sum() * (1 + 0.02 * abs(z - focus)))
    stack = np.array(stack)
    return rng.poisson(stack / stack[focus].max() * 200 + 5).astype(np.float32)


def test_a_3d_psf_in_2d_mode_gives_its_in_focus_plane_and_says_which():
    """A 3D PSF (file, array, layer) restoring a 2D image gave the plane of most energy:
    in a widefield stack every plane holds about the same light, so that plane was out of
    focus (on a measured-style stack 1 µm off, 4 % of the in-focus peak: a kernel far too
    wide) and the metadata did not say which plane was taken."""
    stack = _widefield_psf_stack()
    energy = np.clip(stack, 0, None).reshape(len(stack), -1).sum(axis=1)
    assert int(np.argmax(energy)) != 8  # the old rule's pick is out of focus
    kernel, diag = clean_psf(stack)
    assert diag.in_focus_plane == [8, 21]
    assert all(2.0 < w < 3.6 for w in diag.fwhm_px)  # in focus: 2.355 × 1.2 px
    psf = psf_from_settings(RestoreSettings(psf_kind="array"), (64, 64), stack)
    assert psf.info["cleaning"]["in_focus_plane"] == [8, 21]


def test_computed_psfs_pass_unchanged():
    tight = gaussian_psf_3d(1.5, 1.0)[3:6, 2:11, 2:11]  # truncated: a pedestal at its edge
    for g in (gaussian_psf(1.5), gaussian_psf(2.0, 1.3), gaussian_psf_3d(1.5, 2.0), tight):
        g = g / g.sum()
        out, diag = clean_psf(g, keep_3d=True)
        assert out.shape == g.shape and np.allclose(out, g, atol=1e-7)
        assert diag.baseline == 0 and diag.energy_kept == 1.0


def test_every_source_gives_the_same_psf_and_beads_stay_put(tmp_path):
    raw = raw_bead_crop()
    f = tmp_path / "psf.tif"
    tifffile.imwrite(f, raw)
    s = RestoreSettings(method="rl", rl_iterations=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSFWarning)
        from_array = psf_from_settings(s.replace(psf_kind="array"), (96, 96), raw).kernel
        from_file = psf_from_settings(s.replace(psf_kind="file", psf_path=str(f)),
                                      (96, 96)).kernel
        from_float = psf_from_settings(s, (96, 96), raw.astype(np.float32) - 100.0).kernel
    assert np.array_equal(from_array, from_file)
    assert from_float.shape == from_array.shape
    assert np.abs(from_float - from_array).sum() < 0.02
    y = bead_scene()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSFWarning)
        result = restore_iter(y, s, psf=raw).finish()
    err = np.abs(bead_positions(result.image, BEADS) - BEADS)
    assert err.max() < 0.25, err
    cleaning = result.metadata["psf"]["cleaning"]
    assert np.allclose(cleaning["centroid_offset_px"], [4.0, -3.6], atol=0.1)
    assert result.metadata["psf"]["source"] == "array"


def test_bead_image_psf_goes_through_the_same_cleaning():
    from pkl_dg.napari.psf_sources import psf_from_beads

    rng = np.random.default_rng(3)
    obj = np.zeros((128, 128))
    for p in ([30, 30], [30, 90], [90, 30], [90, 90]):
        obj[p[0], p[1]] = 20000.0
    img = rng.poisson(ndimage.gaussian_filter(obj, SIGMA) + 50) + rng.normal(0, 3, obj.shape)
    avg, n = psf_from_beads(img, 25)
    assert n == 4
    info = psf_from_settings(RestoreSettings(psf_kind="array"), (128, 128), avg).info
    assert all(abs(f - 2.355 * SIGMA) < 0.3 for f in info["fwhm_px"])
    assert info["cleaning"]["energy_kept"] > 0.99
    assert max(abs(v) for v in info["cleaning"]["centroid_offset_px"]) < 0.1


def test_case_04_raw_bead_psf_every_path():
    y = read("04_raw_bead_psf", "input.tif")
    truth = read("04_raw_bead_psf", "bead_positions.npy")
    for name in ("psf_raw_uint16.tif", "psf_bgsub_float32.tif"):
        psf = read("04_raw_bead_psf", name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PSFWarning)
            result = restore_iter(y, psf=psf, method="rl", rl_iterations=50).finish()
        err = np.abs(bead_positions(result.image, truth) - truth)
        assert err.max() < 0.25, (name, err)
        assert result.metadata["psf"]["cleaning"]["energy_kept"] > 0.99


# ------------------------------------------------------------------ voxel size (item 5)
def test_3d_psf_resampled_laterally_and_axially():
    fine = gaussian_psf_3d(4.0, 4.0)  # σ 4 px at 32.5 nm, σ 4 planes at 100 nm
    s = RestoreSettings(mode="3d", psf_kind="array", pixel_size_nm=65.0, z_step_nm=200.0,
                        psf_pixel_size_nm=32.5, psf_z_step_nm=100.0)
    built = psf_from_settings(s, (40, 64, 64), fine)
    psf, info = built.kernel, built.info
    c = [n // 2 for n in psf.shape]
    assert abs(fwhm_of(psf[:, c[1], c[2]]) - 2.355 * 2) < 0.4  # σ 2 planes at 200 nm
    assert abs(fwhm_of(psf[c[0], c[1], :]) - 2.355 * 2) < 0.4  # σ 2 px at 65 nm
    assert info["spacing_nm"] == [200.0, 65.0, 65.0]
    assert info["resampled"]["from_spacing_nm"] == [100.0, 32.5, 32.5]
    assert info["kernel_shape"] == list(psf.shape) and "not_applied" not in info


def test_axial_resampling_needs_the_image_z_step():
    s = RestoreSettings(mode="3d", psf_kind="array", psf_z_step_nm=100.0)
    with pytest.raises(ValueError, match="image Z step"):
        psf_from_settings(s, (40, 64, 64), gaussian_psf_3d(2.0, 2.0))


def test_metadata_never_claims_an_unused_psf_setting():
    s = RestoreSettings(psf_kind="gaussian", psf_pixel_size_nm=32.5)
    info = psf_from_settings(s, (64, 64)).info
    assert info["not_applied"] == ["psf_pixel_size_nm"] and "resampled" not in info


def test_case_07_psf_voxel_size_3d():
    y = read("07_psf_voxel_size_3d", "input.tif")
    fine = read("07_psf_voxel_size_3d", "psf_32p5nm.tif")
    coarse = read("07_psf_voxel_size_3d", "psf_65nm.tif")
    s = RestoreSettings(mode="3d", psf_kind="array", psf_pixel_size_nm=32.5,
                        pixel_size_nm=65.0)
    built = psf_from_settings(s, y.shape, fine)
    psf, info = built.kernel, built.info
    ref = coarse / coarse.sum()
    assert psf.shape[1:] == ref.shape[1:] or abs(psf.shape[1] - ref.shape[1]) <= 2
    fw = info["fwhm_px"]
    ref_fw = [fwhm_of(ref[:, 8, 8]), fwhm_of(ref[6, 8, :]), fwhm_of(ref[6, :, 8])]
    assert abs(fw[2] - ref_fw[1]) < 0.2 and abs(fw[1] - ref_fw[2]) < 0.2, (fw, ref_fw)
    result = restore_iter(y, s, psf=fine, method="rl", rl_iterations=3).finish()
    assert result.metadata["psf"]["resampled"]["to_spacing_nm"][1:] == [65.0, 65.0]
    assert result.metadata["psf"]["kernel_shape"] == list(psf.shape)


def test_widget_core_reports_psf_diagnostics():
    from pkl_dg.napari.psf_sources import describe_diagnostics
    from pkl_dg.napari.worker import PsfRequest, resolve_psf

    raw = raw_bead_crop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSFWarning)
        _r, psf, _s, notes = resolve_psf(RestoreSettings(), PsfRequest("layer", raw, 25, "bead"),
                                         (96, 96))
    cleaning = notes["psf"]["cleaning"]
    assert np.allclose(cleaning["centroid_offset_px"], [4.0, -3.6], atol=0.1)
    text = describe_diagnostics(notes["psf"])
    assert "centred from (+4.0" in text and "% of its energy kept" in text and "FWHM" in text


def test_cli_takes_the_z_step_from_the_file(tmp_path):
    from pkl_dg.cli import main
    from pkl_dg.imageio import read_metadata

    rng = np.random.default_rng(0)
    stack = rng.poisson(10, (20, 48, 48)).astype(np.uint16)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack, imagej=True, resolution=(1 / 0.065, 1 / 0.065),
                     metadata={"axes": "ZYX", "spacing": 0.2, "unit": "um"})
    psf = tmp_path / "psf.tif"
    tifffile.imwrite(psf, gaussian_psf_3d(2.0, 4.0))  # σ 4 planes at 100 nm
    out = tmp_path / "out.tif"
    assert main(["restore", str(src), "-o", str(out), "--mode", "3d", "--psf", str(psf),
                 "--psf-z-step", "100", "--method", "rl", "--rl-iterations", "2", "--quiet",
                 "--threads", "1"]) == 0
    meta = read_metadata(out)
    assert meta["settings_from_file"] == {"pixel_size_nm": 65.0, "z_step_nm": 200.0}
    assert meta["psf"]["spacing_nm"][0] == 200.0
    assert meta["psf"]["resampled"]["from_spacing_nm"][0] == 100.0


def _widefield_like(shape):
    """A 3D PSF stored at an image's size, as DeconvolutionLab2 and flowdec ship them: a
    Gaussian core plus, in every plane, a defocus disk that widens away from focus (about
    the same light per plane); its peak at the array's centre pixel, so that cleaning
    centres it on an odd grid one plane and pixel larger than the array."""
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    c = [n // 2 for n in shape]
    r2 = (y - c[1]) ** 2 + (x - c[2]) ** 2
    radius = 1.5 + 1.2 * np.abs(z - c[0])
    psf = np.exp(-r2 / (2 * radius ** 2)) / radius ** 2
    return (psf / psf.sum()).astype(np.float32)


def test_a_measured_psf_as_large_as_the_image_is_cropped_to_fit_with_a_warning():
    shape = (16, 32, 32)
    psf = _widefield_like(shape)
    rng = np.random.default_rng(0)
    obj = np.zeros(shape)
    obj[6:10, 10:22, 12:20] = 50.0
    blurred = PSFConvolution(psf[1:, 1:, 1:]).A(torch.from_numpy(obj)).numpy() + 1.0
    y = rng.poisson(blurred).astype(np.float32)
    with pytest.warns(PSFWarning, match=r"cropped around its centre to 15×31×31"):
        run = restore_iter(y, psf=psf, mode="3d", method="rl", rl_iterations=20,
                           calibration="manual", gain=1.0, offset=0.0, background=1.0)
        result = run.finish()
    cropped = result.metadata["psf"]["cropped_to_image"]
    assert cropped["from"] == [17, 33, 33] and cropped["to"] == [15, 31, 31]
    assert 0 < cropped["light_removed"] < 0.25
    assert result.metadata["psf"]["kernel_shape"] == [15, 31, 31]
    inside = result.image[6:10, 10:22, 12:20].sum() / result.image.sum()
    assert inside > (y - 1.0)[6:10, 10:22, 12:20].sum() / (y - 1.0).sum()  # deblurred


def test_a_cropped_psf_is_centred_again_so_objects_stay_in_place():
    """A widefield PSF with more light on one side of focus, cut to a shallow stack, had its
    centroid 0.86 plane off the centre (RedLionfish's 61-plane PSF on 30 planes), and every
    restored bead sat that far off in Z; only the light lost was said."""
    from scipy import ndimage

    from pkl_dg.physics.psf import crop_to_fit

    zz, yy, xx = np.mgrid[-15:16, -6:7, -6:7].astype(float)
    width = 1.0 + 0.15 * np.abs(zz) + 0.1 * np.clip(zz, 0, None)  # wider above focus
    psf = np.exp(-(yy ** 2 + xx ** 2) / (2 * width ** 2)) / width ** 2
    psf *= np.where(zz > 0, 1.0 + 0.06 * zz, 1.0)  # and more light there
    psf, _ = clean_psf(psf, keep_3d=True)  # centred on its centroid, as a run does
    centre = (np.array(psf.shape) - 1) / 2
    assert np.allclose(ndimage.center_of_mass(psf), centre, atol=0.05)
    kernel, info = crop_to_fit(psf, (27, 40, 40))
    assert kernel.shape[0] == 27 and info["light_removed"] < 0.25
    com = np.array(ndimage.center_of_mass(kernel))
    assert np.abs(com - (np.array(kernel.shape) - 1) / 2).max() <= 0.03
    assert abs(info["recentred_px"][0]) > 0.3  # the cut had moved it
    # the model blurs a point around its own plane (in a volume deep enough that the
    # reflect padding does not fold light back)
    obj = np.zeros((81, 40, 40))
    obj[40, 20, 20] = 1.0
    blurred = PSFConvolution(kernel).A(torch.from_numpy(obj)).numpy()
    assert abs(ndimage.center_of_mass(blurred)[0] - 40.0) < 0.05


def test_a_measured_psf_that_would_lose_much_light_to_the_crop_is_refused():
    with pytest.raises(ValueError,
                       match=r"would remove \d+ % of its light: pick a larger image"):
        psf_from_settings(RestoreSettings(), (32, 32), array=np.ones((61, 61)))


def test_the_epfl_bars_restore_with_the_psf_they_ship(realdata):
    """flowdec's copy of the EPFL hollow bars: data, ground truth and a PSF of the data's
    size (32×64×64). It used to be refused ("PSF larger than the image")."""
    from pkl_dg.metrics import care_scores

    folder = realdata / "flowdec" / "bars-25pct"
    y, gt = (tifffile.imread(folder / f) for f in ("data.tif", "actual.tif"))
    with pytest.warns(PSFWarning, match="cropped"):
        result = restore_iter(y, psf=tifffile.imread(folder / "kernel.tif"), mode="3d",
                              method="rl", calibration="manual", gain=1.0, offset=0.0,
                              background=0.0).finish()
    assert result.metadata["psf"]["cropped_to_image"]["light_removed"] < 0.05
    assert care_scores(result.image, gt)["psnr"] > care_scores(y, gt)["psnr"] + 1.0


def test_cli_takes_a_psf_files_own_voxel_size(tmp_path, capsys):
    """A PSF file that states its voxel size (PSFGenerator's, Huygens') is resampled from it
    to the image's; an image that states none takes the PSF file's (no resampling to an
    assumed 65 nm), and the user is told."""
    from pkl_dg.cli import main
    from pkl_dg.imageio import read_metadata

    stack = np.random.default_rng(0).poisson(10, (20, 48, 48)).astype(np.uint16)
    psf = tmp_path / "psf.tif"
    tifffile.imwrite(psf, gaussian_psf_3d(1.5, 2.0), imagej=True,
                     resolution=(1 / 0.1, 1 / 0.1),
                     metadata={"axes": "ZYX", "spacing": 0.25, "unit": "um"})
    flags = ["--mode", "3d", "--psf", str(psf), "--method", "rl", "--rl-iterations", "2",
             "--quiet", "--threads", "1"]
    stated = tmp_path / "stated.tif"
    tifffile.imwrite(stated, stack, imagej=True, resolution=(1 / 0.065, 1 / 0.065),
                     metadata={"axes": "ZYX", "spacing": 0.2, "unit": "um"})
    out = tmp_path / "out.tif"
    assert main(["restore", str(stated), "-o", str(out), *flags]) == 0
    meta = read_metadata(out)
    assert meta["settings_from_file"] == {"pixel_size_nm": 65.0, "z_step_nm": 200.0,
                                          "psf_pixel_size_nm": 100.0, "psf_z_step_nm": 250.0}
    assert meta["psf"]["resampled"]["from_spacing_nm"] == [250.0, 100.0, 100.0]
    assert meta["psf"]["spacing_nm"] == [200.0, 65.0, 65.0]
    assert "image_sampling_from_psf_file" not in meta
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, stack)
    capsys.readouterr()
    assert main(["restore", str(bare), "-o", str(out), *flags, "--overwrite"]) == 0
    meta = read_metadata(out)
    assert meta["image_sampling_from_psf_file"] == ["pixel_size_nm", "z_step_nm"]
    assert meta["settings"]["pixel_size_nm"] == 100.0 and "resampled" not in meta["psf"]
    assert "states no pixel size or z step: taken from the PSF file (100 nm, 250 nm)" in \
        capsys.readouterr().err
