"""Issue 13, item 6: channels and time are never deconvolved along; axes from files and
napari labels; clear messages for (Y, X, C) and ambiguous hyperstacks."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from cases import case_dir, read
from pkl_dg.axes import axes_from_labels, check_axes
from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf_3d
from pkl_dg.restoration import restore_iter

RL = dict(method="rl", rl_iterations=20, calibration="manual")  # compare channels alike


def zcyx_beads() -> np.ndarray:
    """(Z=14, C=2, 40, 40) counts: a bead in channel 0 only, a dimmer one in channel 1."""
    obj = np.zeros((2, 14, 40, 40), np.float32)
    obj[0, 7, 12, 12] = 2000.0
    obj[1, 6, 28, 26] = 800.0
    fm = ForwardModel(PSFConvolution(gaussian_psf_3d(1.5, 1.2)), 2.0)
    mu = fm.mean(torch.from_numpy(obj))
    y = torch.poisson(mu, generator=torch.Generator().manual_seed(0)).numpy()
    return np.ascontiguousarray(np.moveaxis(y, 0, 1))  # ZCYX, as ImageJ stores it


def test_hyperstack_channels_restored_one_by_one():
    y = zcyx_beads()
    kw = dict(mode="3d", psf_sigma=1.5, psf_sigma_z=1.2, background=2.0, **RL)
    result = restore_iter(y, axes="ZCYX", **kw).finish()
    assert result.image.shape == y.shape
    for c in range(2):
        alone = restore_iter(np.ascontiguousarray(y[:, c]), **kw).finish().image
        assert np.allclose(result.image[:, c], alone, rtol=1e-5, atol=1e-4)
    # nothing of channel 0's bead leaks into channel 1
    assert result.image[7, 1, 12, 12] < 0.05 * result.image[7, 0, 12, 12]
    assert result.metadata["axes"] == {"restored_as": "CZYX", "channels": 2,
                                       "block_axes": "ZYX", "result": "ZCYX"}


def test_each_channel_gets_its_own_estimated_calibration():
    """Two detectors (1 ADU/e⁻, offset 100; 4 ADU/e⁻, offset 90) in one (C, Y, X) image:
    one calibration estimated for both put every pixel of channel 0 below channel 1's
    offset and restored it as an empty image. Each channel is estimated on its own now
    and restores as it does alone."""
    from scipy.ndimage import gaussian_filter

    from pkl_dg.napari.sample_data import make_sample

    rng = np.random.default_rng(0)
    truth = make_sample()[1][:96, :96].astype(np.float64)
    lam = gaussian_filter(truth / truth.max() * 60, 2.0) + 2
    cyx = np.stack([rng.poisson(lam) * 1.0 + 100,
                    rng.poisson(lam * 0.5) * 4.0 + 90]).astype(np.uint16)
    kw = dict(method="rl", psf_sigma=2.0, threads=1)
    both = restore_iter(cyx, axes="CYX", **kw).finish()
    cal = both.metadata["calibration"]
    assert cal["source"] == "estimated per channel" and len(cal["channels"]) == 2
    assert cal["channels"][0]["offset"] == pytest.approx(100, abs=4)
    assert cal["channels"][1]["offset"] == pytest.approx(90, abs=6)
    for c in (0, 1):
        alone = restore_iter(cyx[c], **kw).finish().image
        np.testing.assert_allclose(both.image[c], alone, rtol=1e-5, atol=1e-4 * alone.max())
    assert both.image[0].max() > 10  # not empty


def test_the_result_records_its_own_axes_order_and_the_napari_writer_uses_it():
    """A (Z, C, Y, X) image restored in 3D mode is arranged as CZYX and given back as ZCYX;
    the metadata said only restored_as 'CZYX', and the napari writer labelled a saved
    layer without axis labels C = 6, Z = 2 (the truth: Z = 6, C = 2)."""
    from pkl_dg.io.napari_writer import layer_axes

    zcyx = np.random.default_rng(4).poisson(20, (6, 2, 24, 24)).astype(np.float32)
    res = restore_iter(zcyx, axes="ZCYX", mode="3d", psf_sigma=1.0, psf_sigma_z=0.6,
                       **RL).finish()
    assert res.image.shape == zcyx.shape
    assert res.metadata["axes"]["restored_as"] == "CZYX"
    assert res.metadata["axes"]["result"] == "ZCYX"
    assert layer_axes([], 4, res.metadata) == "ZCYX"


def test_unlabelled_hyperstack_in_3d_is_refused_naming_the_channel_axis():
    with pytest.raises(ValueError, match=r"channel axis.*ZCYX"):
        next(restore_iter(zcyx_beads(), mode="3d", psf_sigma_z=1.2, **RL))


def test_3d_mode_without_z_names_the_channels():
    with pytest.raises(ValueError, match=r"axis 0 \(C, 2 channels\) is channels, not Z"):
        next(restore_iter(np.ones((2, 32, 32)), axes="CYX", mode="3d", psf_sigma_z=1.0, **RL))


def test_interleaved_channels_message_and_axes():
    rng = np.random.default_rng(0)
    yxc = rng.poisson(20, (40, 48, 2)).astype(np.uint16)
    with pytest.raises(ValueError, match=r"\(Y, X, C\): 2 channels .*last axis"):
        next(restore_iter(yxc, **RL))
    result = restore_iter(yxc, axes="YXC", psf_sigma=1.5, **RL).finish()
    assert result.image.shape == yxc.shape
    ref = restore_iter(np.ascontiguousarray(yxc[..., 1]), psf_sigma=1.5, **RL).finish()
    assert np.allclose(result.image[..., 1], ref.image, rtol=1e-5, atol=1e-4)


def test_axes_validation_and_napari_labels():
    assert check_axes("zcyx", (3, 2, 8, 8), "3d") == "ZCYX"
    with pytest.raises(ValueError, match="name 3 axes"):
        check_axes("ZYX", (2, 3, 8, 8), "2d")
    with pytest.raises(ValueError, match="at most once"):
        check_axes("ZZYX", (2, 3, 8, 8), "2d")
    assert axes_from_labels(["z", "channel", "y", "x"]) == "ZCYX"
    assert axes_from_labels(["t", "c", "y", "x"]) == "TCYX"
    assert axes_from_labels(["-2", "-1"]) is None  # napari's default labels


def test_cli_reads_hyperstack_axes_from_the_file(tmp_path):
    from pkl_dg.cli import main
    from pkl_dg.imageio import read_metadata

    y = zcyx_beads().astype(np.uint16)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, y, imagej=True, metadata={"axes": "ZCYX"})
    out = tmp_path / "out.tif"
    assert main(["restore", str(src), "-o", str(out), "--mode", "3d", "--psf-sigma", "1.5",
                 "--psf-sigma-z", "1.2", "--background", "2", "--method", "rl",
                 "--rl-iterations", "20", "--quiet", "--threads", "1",
                 "--calibration", "manual"]) == 0
    meta = read_metadata(out)
    # an ImageJ hyperstack, as the input: Z before C (it held C·Z unnamed pages)
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZCYX"
        res = np.moveaxis(tif.asarray(), 1, 0)
    assert meta["input_axes"] == "CZYX" and res.shape == (2, 14, 40, 40)
    alone = restore_iter(np.ascontiguousarray(y[:, 0]), mode="3d", psf_sigma=1.5,
                         psf_sigma_z=1.2, background=2.0, **RL).finish().image
    assert np.allclose(res[0], alone, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["08_hyperstack_zcyx", "08b_hyperstack_4ch"])
def test_cases_08_hyperstacks(name):
    y = read(name, "input_ZCYX.tif")
    with pytest.raises(ValueError, match="channel axis"):
        next(restore_iter(y, mode="3d", psf_sigma_z=1.0, **RL))
    if name == "08b_hyperstack_4ch":
        gt = read(name, "gt_ZCYX.tif")
        psf = read(name, "psf_3x9x9.tif")
        res = restore_iter(y, psf=psf, mode="3d", axes="ZCYX", method="rl",
                           rl_iterations=50).finish().image
        z, c, yy, xx = np.unravel_index(np.argmax(gt), gt.shape)
        profile = res[z - 1:z + 2, c, yy, xx]
        assert profile[1] > 8 * max(profile[0], profile[2]), profile  # sharp in Z
    else:
        res = restore_iter(y, mode="3d", psf_sigma_z=1.0, axes="ZCYX", **RL).finish()
        assert res.image.shape == y.shape


def test_case_08_via_cli(tmp_path):
    from pkl_dg.cli import main

    src = case_dir("08_hyperstack_zcyx") / "input_ZCYX.tif"
    out = tmp_path / "o.tif"
    assert main(["restore", str(src), "-o", str(out), "--mode", "3d", "--psf-sigma-z", "1",
                 "--method", "rl", "--rl-iterations", "3", "--quiet", "--threads", "1"]) == 0
    from pkl_dg.imageio import read_metadata

    meta = read_metadata(out)
    assert meta["input_axes"] == "CZYX" and meta["input_shape"] == [2, 12, 64, 64]
    assert meta["axes"]["block_axes"] == "ZYX"  # each channel a volume of its own
    assert tifffile.imread(out).size == 2 * 12 * 64 * 64


def test_case_11_interleaved_channels():
    y = read("11_interleaved_channels", "two_channel_interleaved.tif")
    with pytest.raises(ValueError, match=r"2 channels interleaved in its last axis"):
        next(restore_iter(y, **RL))
    res = restore_iter(y, axes="YXC", **RL).finish()
    assert res.image.shape == y.shape and res.metadata["axes"]["channels"] == 2


def test_napari_layer_axes_are_respected():
    from pkl_dg.axes import layer_axes_problem

    msg = layer_axes_problem("cells", ("z", "c", "y", "x"), (12, 2, 64, 64), "3d")
    assert "axis 1 ('c', 2 channels)" in msg and "Split Stack" in msg
    assert layer_axes_problem("cells", ("z", "c", "y", "x"), (12, 2, 64, 64), "2d") is None
    assert layer_axes_problem("cells", ("c", "z", "y", "x"), (2, 12, 64, 64), "3d") is None
    # napari's default labels say nothing: the shape decides, as for arrays
    assert "(Z, C, Y, X)" in layer_axes_problem("s", ("-4", "-3", "-2", "-1"),
                                                 (12, 2, 64, 64), "3d")
    assert "(Y, X, C)" in layer_axes_problem("s", ("-3", "-2", "-1"), (64, 64, 2), "2d")
    assert layer_axes_problem("s", ("-3", "-2", "-1"), (31, 96, 96), "3d") is None


def test_a_hyperstack_opened_with_naparis_reader_keeps_its_files_axes(tmp_path,
                                                                      make_napari_viewer):
    """napari's built-in reader gives an ImageJ (Z, C, Y, X) hyperstack numeric labels;
    with 5 channels after 10 planes the shape rule saw nothing wrong, and 3D mode blurred
    the channels as Z planes without a word. The file's own axes now decide."""
    from pkl_dg.napari.layer_input import axis_labels, selected_block

    data = np.random.default_rng(0).poisson(20, (10, 5, 48, 48)).astype(np.uint16)
    path = tmp_path / "zc.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    viewer = make_napari_viewer()
    layer = viewer.open(path, plugin="napari")[0]
    assert tuple(layer.axis_labels) == ("-4", "-3", "-2", "-1")
    assert axis_labels(layer) == ("z", "c", "y", "x")
    with pytest.raises(ValueError, match=r"axis 1 \('c', 5 channels\) is where deconvolution "
                                         "expects Z"):
        selected_block(viewer, layer, "3d")
    assert selected_block(viewer, layer, "2d")[0].shape == (48, 48)
    other = viewer.add_image(data.astype(np.float32), name="array")  # no file: as before
    assert axis_labels(other) == ("-4", "-3", "-2", "-1")


def test_each_channel_with_its_own_psf():
    from pkl_dg.channels import restore_channels
    from pkl_dg.physics import gaussian_psf

    rng = np.random.default_rng(1)
    obj = np.zeros((48, 48), np.float32)
    obj[20, 20] = obj[30, 34] = 1500.0
    planes = []
    for sigma in (1.2, 2.4):  # a blue and a far-red channel
        fm = ForwardModel(PSFConvolution(gaussian_psf(sigma)), 3.0)
        planes.append(rng.poisson(fm.mean(torch.from_numpy(obj)).numpy()))
    cyx = np.stack(planes).astype(np.uint16)
    psfs = [gaussian_psf(1.2), gaussian_psf(2.4)]
    res = restore_channels(cyx, "CYX", psfs, method="rl", rl_iterations=30, background=3.0)
    assert res.image.shape == cyx.shape and len(res.metadata["channels"]) == 2
    for c in range(2):
        alone = restore_iter(cyx[c], psf=psfs[c], method="rl", rl_iterations=30,
                             background=3.0).finish().image
        assert np.allclose(res.image[c], alone, rtol=1e-5, atol=1e-4)
    # the far-red channel needed its own, wider PSF: with the blue one it stays blurred
    blue_psf = restore_iter(cyx[1], psf=psfs[0], method="rl", rl_iterations=30,
                            background=3.0).finish().image
    assert res.image[1][20, 20] > 1.5 * blue_psf[20, 20]
    with pytest.raises(ValueError, match="one per channel"):
        restore_channels(cyx, "CYX", psfs[:1], method="rl")
