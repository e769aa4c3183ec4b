"""Readers with axes and physical sizes, OME writers, and the napari reader."""

import json
import re
import warnings

import numpy as np
import pytest
import tifffile

from pkl_dg.io import open_image, read_image, read_metadata, write_ome_tiff, write_ome_zarr


def test_imagej_hyperstack_comes_back_with_its_axes_and_sizes(tmp_path):
    zcyx = np.arange(4 * 2 * 16 * 24, dtype=np.uint16).reshape(4, 2, 16, 24)
    p = tmp_path / "hyper.tif"
    tifffile.imwrite(p, zcyx, imagej=True, resolution=(1 / 0.065, 1 / 0.065),
                     metadata={"axes": "ZCYX", "spacing": 0.3, "unit": "um"})
    img = open_image(p)
    assert img.axes == "CZYX" and img.shape == (2, 4, 16, 24)
    np.testing.assert_array_equal(img.numpy(), zcyx.transpose(1, 0, 2, 3))
    assert img.pixel_size_nm == pytest.approx((65.0, 65.0))
    assert img.z_step_nm == pytest.approx(300.0)
    assert read_image(p).shape == (2, 4, 16, 24)


def test_plain_tiff_has_no_physical_size_and_singletons_drop(tmp_path):
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, np.ones((1, 20, 30), np.float32))
    ij = tmp_path / "imagej_no_unit.tif"  # ImageJ TIFF without a unit (as the W2S files)
    tifffile.imwrite(ij, np.ones((20, 30), np.uint8), imagej=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no reader's "could not parse pixel size" noise
        img = open_image(p)
        assert open_image(ij).pixel_size_nm is None
    assert img.axes == "YX" and img.shape == (20, 30)
    assert img.pixel_size_nm is None and img.z_step_nm is None
    q = tmp_path / "cm.tif"  # resolution in pixels per centimetre: 0.1 µm pixels
    tifffile.imwrite(q, np.ones((20, 30), np.uint8), resolution=(1e5, 1e5),
                     resolutionunit="CENTIMETER")
    assert open_image(q).pixel_size_nm == pytest.approx((100.0, 100.0))


@pytest.mark.parametrize("make,msg", [
    (lambda p: p.write_bytes(b"not a tiff at all"), "damaged"),
    (lambda p: tifffile.imwrite(p, np.zeros((32, 32, 3), np.uint8)), "RGB"),
])
def test_bad_files_raise_one_clear_error(tmp_path, make, msg):
    p = tmp_path / "bad.tif"
    make(p)
    with pytest.raises(ValueError, match=msg):
        open_image(p)
    with pytest.raises(FileNotFoundError, match="not found"):
        open_image(tmp_path / "missing.tif")


def test_ome_tiff_round_trip_keeps_sizes_and_metadata(tmp_path):
    data = np.random.default_rng(0).random((3, 2, 20, 30)).astype(np.float32)
    meta = {"settings": {"method": "rl"}, "note": 'quotes " and <tags> & σ'}
    p = tmp_path / "r.ome.tif"
    write_ome_tiff(p, data, "TCYX", meta, pixel_size_nm=(80.0, 80.0))
    assert read_metadata(p) == meta
    img = open_image(p)
    assert img.axes == "TCYX" and img.pixel_size_nm == pytest.approx((80.0, 80.0))
    np.testing.assert_array_equal(img.numpy(), data)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_ome_tiff(p, data, "TCYX", meta)
    assert not (tmp_path / "r.ome.tif.partial").exists()


def test_ome_zarr_is_chunked_multiscale_with_sizes(tmp_path):
    import zarr

    data = np.random.default_rng(1).random((2, 3, 300, 260)).astype(np.float32)
    p = tmp_path / "r.ome.zarr"
    write_ome_zarr(p, data, "TZYX", {"k": [1, 2]}, pixel_size_nm=(65.0, 65.0), z_step_nm=250.0)
    root = zarr.open_group(str(p), mode="r")
    levels = root.attrs["ome"]["multiscales"][0]["datasets"]
    assert len(levels) == 3  # 300×260 → 150×130 → 75×65
    assert root["s0"].chunks == (1, 1, 256, 256)
    assert read_metadata(p) == {"k": [1, 2]}
    img = open_image(p)
    assert img.axes == "TZYX" and img.z_step_nm == pytest.approx(250.0)
    assert img.pixel_size_nm == pytest.approx((65.0, 65.0))
    np.testing.assert_allclose(img.numpy(), data)
    q = tmp_path / "nounits.ome.zarr"  # no pixel size: the scale is in pixels, not µm
    write_ome_zarr(q, data[0, 0], "YX", {})
    assert open_image(q).pixel_size_nm is None


@pytest.mark.gui
def test_outputs_open_in_napari_with_the_right_scale(tmp_path, make_napari_viewer):
    data = np.random.default_rng(2).random((3, 96, 96)).astype(np.float32)
    tif, zar = tmp_path / "a.ome.tif", tmp_path / "b.ome.zarr"
    write_ome_tiff(tif, data, "TYX", {"units": "photons"}, pixel_size_nm=(65.0, 65.0))
    write_ome_zarr(zar, np.stack([data, data], axis=1), "TZYX", {"units": "photons"},
                   pixel_size_nm=(100.0, 100.0), z_step_nm=300.0)
    viewer = make_napari_viewer()
    (a,) = viewer.open(tif, plugin="napari-pkl-dg")
    (b,) = viewer.open(zar, plugin="napari-pkl-dg")
    assert tuple(a.scale) == pytest.approx((1.0, 0.065, 0.065))
    assert tuple(b.scale) == pytest.approx((1.0, 0.3, 0.1, 0.1))
    assert str(a.units[-1]) == "micrometer" and str(b.units[1]) == "micrometer"
    assert a.metadata["pkl_dg"] == {"units": "photons"}
    np.testing.assert_array_equal(np.asarray(a.data), data)
    assert json.dumps(b.metadata["pkl_dg"])


@pytest.mark.gui
def test_a_file_with_channels_opens_as_one_named_layer_per_channel(tmp_path,
                                                                   make_napari_viewer):
    """Channels came as one layer with a channel slider and the OME channel names were
    not used; each is a layer of its own now, named after its channel, at the file's
    scale, so each can be restored with its own PSF."""
    rng = np.random.default_rng(3)
    data = rng.random((2, 3, 24, 24)).astype(np.float32)
    p = tmp_path / "cells.ome.tif"
    tifffile.imwrite(p, data, ome=True, metadata={
        "axes": "CZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 0.3,
        "Channel": {"Name": ["DAPI", "GFP"]}})
    viewer = make_napari_viewer()
    layers = viewer.open(p, plugin="napari-pkl-dg")
    assert [layer.name for layer in layers] == ["cells.ome.tif [DAPI]", "cells.ome.tif [GFP]"]
    for k, layer in enumerate(layers):
        assert tuple(layer.scale) == pytest.approx((0.3, 0.1, 0.1))
        assert tuple(layer.axis_labels) == ("z", "y", "x")
        np.testing.assert_array_equal(np.asarray(layer.data), data[k])
    assert layers[0].colormap.name != layers[1].colormap.name
    unnamed = tmp_path / "two.ome.tif"
    write_ome_tiff(unnamed, data[:, 0], "CYX", {})
    assert [layer.name for layer in viewer.open(unnamed, plugin="napari-pkl-dg")] == [
        "two.ome.tif [channel 0]", "two.ome.tif [channel 1]"]


def test_physical_sizes_are_written_without_float_noise(tmp_path):
    """A Z step of 300 nm that arrived as 299.99999999999994 was written as
    PhysicalSizeZ="0.29999999999999993"."""
    p = tmp_path / "z.ome.tif"
    write_ome_tiff(p, np.ones((2, 8, 8), np.float32), "ZYX", {},
                   pixel_size_nm=(64.99999999999999, 65.0), z_step_nm=299.99999999999994)
    with tifffile.TiffFile(p) as tif:
        xml = tif.ome_metadata
    assert 'PhysicalSizeZ="0.3"' in xml and 'PhysicalSizeY="0.065"' in xml


def test_ome_tiff_also_states_its_pixel_size_in_the_tiff_resolution_tags(tmp_path):
    """Plain TIFF readers (napari's built-in one, ImageJ without Bio-Formats) read the
    resolution tags, which said 1 pixel per unit."""
    p = tmp_path / "r.ome.tif"
    write_ome_tiff(p, np.ones((2, 20, 30), np.float32), "ZYX", {}, pixel_size_nm=(80.0, 65.0),
                   z_step_nm=250.0)
    with tifffile.TiffFile(p) as tif:
        tags = tif.pages[0].tags
        x, y = tags["XResolution"].value, tags["YResolution"].value
        assert tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
    assert 1e7 / (x[0] / x[1]) == pytest.approx(65.0) and 1e7 / (y[0] / y[1]) == pytest.approx(80.0)
    img = open_image(p)
    assert img.pixel_size_nm == pytest.approx((80.0, 65.0)) and img.z_step_nm == pytest.approx(250.0)
    q = tmp_path / "plain.tif"  # the same tags as a plain TIFF reader sees them
    tifffile.imwrite(q, np.ones((20, 30), np.float32), resolution=(1e7 / 65.0, 1e7 / 80.0),
                     resolutionunit="CENTIMETER")
    assert open_image(q).pixel_size_nm == pytest.approx((80.0, 65.0))


def test_a_truncated_imagej_stack_is_refused_not_read_as_one_plane(tmp_path):
    """tifffile falls back to the pages it can find when an ImageJ file is cut short (an
    interrupted copy): a 20-plane stack opened as one 2D plane and was restored as such,
    without a word. The header's plane count is now checked."""
    stack = np.random.default_rng(0).integers(0, 1000, (20, 64, 64)).astype(np.uint16)
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, stack, imagej=True, metadata={"axes": "ZYX"})
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    assert open_image(whole).shape == (20, 64, 64)
    with pytest.raises(ValueError, match="truncated: its ImageJ header announces 20 planes"):
        open_image(cut)


def test_a_layer_saved_from_napari_keeps_its_scale_place_and_parameters(tmp_path,
                                                                       make_napari_viewer):
    """napari's own TIFF writer kept only the pixels: a restored plane saved from the
    viewer reopened at scale 1, at the origin, without its parameters. *.ome.tif now goes
    through this plugin's writer (physical sizes, metadata, the layer's place), and its
    reader gives it all back."""
    rng = np.random.default_rng(3)
    viewer = make_napari_viewer()
    plane = viewer.add_image(
        (rng.random((1, 40, 50)) * 3000).astype(np.float32), name="cells [PKL] @2",
        scale=(0.3, 0.065, 0.065), translate=(0.6, 0.0, 0.0), units=("um",) * 3,
        axis_labels=("z", "y", "x"),
        metadata={"status": "done", "calibration": {"gain": np.float32(2.5)}})
    path = tmp_path / "saved.ome.tif"
    assert plane.save(str(path)) == [str(path)]  # no plugin named: the .ome.tif writer
    saved = open_image(path)  # the OME header's sizes (the single Z plane is dropped)
    assert saved.pixel_size_nm == pytest.approx((65.0, 65.0))
    with tifffile.TiffFile(path) as tif:
        z = float(re.search(r'PhysicalSizeZ="([0-9.e+-]+)"', tif.ome_metadata).group(1))
    assert z == pytest.approx(0.3)
    (back,) = viewer.open(path, plugin="napari-pkl-dg")
    np.testing.assert_array_equal(np.asarray(back.data), plane.data)
    assert tuple(back.scale) == pytest.approx((0.3, 0.065, 0.065))
    assert tuple(back.translate) == pytest.approx((0.6, 0.0, 0.0))
    # its contrast from its data (a plane placed at its Z came back white, limits 0–1)
    lo, hi = back.contrast_limits
    assert 2000 < hi <= float(np.max(plane.data)) and lo < hi
    assert [str(u) for u in back.units] == ["micrometer"] * 3
    assert back.metadata["pkl_dg"]["status"] == "done"
    assert back.metadata["pkl_dg"]["calibration"]["gain"] == pytest.approx(2.5)  # a number
    # an ImageJ-ordered (Z, C, Y, X) layer is stored in OME order (C, Z, Y, X)
    zc = viewer.add_image(rng.random((4, 2, 16, 16)).astype(np.float32),
                          axis_labels=("z", "c", "y", "x"))
    zc.save(str(tmp_path / "zc.ome.tif"))
    img = open_image(tmp_path / "zc.ome.tif")
    assert img.axes == "CZYX"
    np.testing.assert_array_equal(img.numpy(), np.transpose(zc.data, (1, 0, 2, 3)))
    unnamed = viewer.add_image(rng.random((2, 3, 16, 16)).astype(np.float32))
    with pytest.warns(UserWarning, match="could not save .* 4 axes without names: set its"):
        unnamed.save(str(tmp_path / "unnamed.ome.tif"))  # napari hides the writer's error
    assert not (tmp_path / "unnamed.ome.tif").exists()


def test_a_saved_layer_keeps_its_camera_counts_type_and_its_display(tmp_path,
                                                                     make_napari_viewer):
    """The plugin's writer wrote every layer as float32: a raw uint16 camera image saved
    from the viewer doubled in size and was no longer counts; and a reopened layer came
    back grey with its contrast recomputed, whatever colormap and limits it was saved with."""
    from napari.utils.colormaps import AVAILABLE_COLORMAPS

    from pkl_dg.io.napari_reader import COLORMAPS

    assert set(COLORMAPS) <= set(AVAILABLE_COLORMAPS)  # the reader's list is napari's
    rng = np.random.default_rng(5)
    viewer = make_napari_viewer()
    raw = viewer.add_image(rng.integers(90, 4000, (32, 40)).astype(np.uint16), name="raw",
                           scale=(0.1, 0.1), units=("um", "um"), colormap="magenta",
                           contrast_limits=(100, 2500), gamma=0.8, blending="additive")
    path = tmp_path / "raw.ome.tif"
    raw.save(str(path))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].dtype == np.uint16
    (back,) = viewer.open(path, plugin="napari-pkl-dg")
    assert np.asarray(back.data).dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(back.data), raw.data)
    assert back.colormap.name == "magenta"
    assert tuple(back.contrast_limits) == pytest.approx((100, 2500))
    assert back.gamma == pytest.approx(0.8) and str(back.blending) == "additive"
    # a float64 layer is written as float32 (results are float32 photons)
    f64 = viewer.add_image(rng.random((16, 16)), name="f64")
    f64.save(str(tmp_path / "f64.ome.tif"))
    with tifffile.TiffFile(tmp_path / "f64.ome.tif") as tif:
        assert tif.pages[0].dtype == np.float32


def test_a_time_lapse_keeps_its_time_interval_through_restore_and_napari(tmp_path,
                                                                         make_napari_viewer):
    """A time-lapse's interval (OME TimeIncrement, an OME-Zarr t scale, ImageJ finterval)
    was dropped: outputs had none and napari gave T a scale of 1 pixel. It is now read,
    written by the OME writers and `pkl-dg restore -o NAME.ome.tif`, and shown in seconds."""
    from pkl_dg.cli import main

    rng = np.random.default_rng(4)
    frames = rng.poisson(30, (3, 40, 40)).astype(np.uint16)
    ome = tmp_path / "tl.ome.tif"
    tifffile.imwrite(ome, frames, ome=True, metadata={
        "axes": "TYX", "TimeIncrement": 250, "TimeIncrementUnit": "ms",
        "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1})
    ij = tmp_path / "tl_ij.tif"
    tifffile.imwrite(ij, frames, imagej=True, metadata={"axes": "TYX", "finterval": 3.0})
    zar = tmp_path / "tl.ome.zarr"
    write_ome_zarr(zar, frames.astype(np.float32), "TYX", {}, time_interval_s=0.5)
    assert open_image(ome).time_interval_s == pytest.approx(0.25)
    assert open_image(ij).time_interval_s == pytest.approx(3.0)
    assert open_image(zar).time_interval_s == pytest.approx(0.5)
    assert open_image(tmp_path / "tl_ij.tif").physical_metadata()["time_interval_s"] == 3.0
    out = tmp_path / "r.ome.tif"
    assert main(["restore", str(ome), "-o", str(out), "--method", "rl", "--rl-iterations",
                 "2", "--quiet"]) == 0
    assert open_image(out).time_interval_s == pytest.approx(0.25)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(out, plugin="napari-pkl-dg")
    assert layer.scale[0] == pytest.approx(0.25) and str(layer.units[0]) == "second"
    layer.save(str(tmp_path / "again.ome.tif"))  # the plugin's writer keeps it too
    assert open_image(tmp_path / "again.ome.tif").time_interval_s == pytest.approx(0.25)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, frames, photometric="minisblack")
    assert open_image(plain).time_interval_s is None


def test_channel_names_go_into_ome_tiff_and_ome_zarr_outputs(tmp_path):
    """A trial's DAPI/GFP OME-TIFF came out of restore and batch with unnamed channels."""
    data = np.random.default_rng(2).random((2, 3, 24, 20)).astype(np.float32)
    write_ome_tiff(tmp_path / "c.ome.tif", data, "CZYX", {}, channel_names=["DAPI", "GFP"])
    assert open_image(tmp_path / "c.ome.tif").channel_names == ["DAPI", "GFP"]
    write_ome_zarr(tmp_path / "c.ome.zarr", data, "CZYX", {}, channel_names=["DAPI", "GFP"])
    assert open_image(tmp_path / "c.ome.zarr").channel_names == ["DAPI", "GFP"]
    # names that do not fit the C axis are not written (a wrong name is worse than none)
    write_ome_tiff(tmp_path / "n.ome.tif", data, "CZYX", {}, channel_names=["only one"])
    assert "only one" not in open_image(tmp_path / "n.ome.tif").channel_names


def test_a_stack_without_axes_is_written_through_a_partial_file(tmp_path, monkeypatch):
    """The page-stack branch (a .npy input's result) wrote straight to its final name: an
    interrupted write left a half-written result there."""
    from pkl_dg.io import write_result

    seen = []
    real = tifffile.imwrite
    monkeypatch.setattr(tifffile, "imwrite", lambda p, *a, **k: (seen.append(str(p)),
                                                                  real(p, *a, **k))[1])
    out = tmp_path / "r.tif"
    write_result(out, np.zeros((3, 8, 8), np.float32), {"k": 1})
    assert seen and seen[0].endswith(".partial") and out.exists()
    assert not (tmp_path / "r.tif.partial").exists()


def test_restore_keeps_the_inputs_channel_names(tmp_path):
    from pkl_dg.cli import main

    rng = np.random.default_rng(3)
    data = (100 + rng.poisson(20, (2, 32, 32))).astype(np.uint16)
    src = tmp_path / "in.ome.tif"
    tifffile.imwrite(src, data, ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    out = tmp_path / "out.ome.tif"
    assert main(["restore", str(src), "-o", str(out), "--method", "rl", "--rl-iterations",
                 "2", "--psf-sigma", "1.5", "--quiet", "--threads", "1"]) == 0
    assert open_image(out).channel_names == ["DAPI", "GFP"]


def test_samples_per_pixel_are_named_as_channels_and_a_psf_as_planes(tmp_path):
    """A (Y, X, 2) two-channel camera file was called 'RGB(A) colour'; a 3-plane float PSF
    saved by tifffile's default as planar RGB got no hint how to save it as planes."""
    from pkl_dg.physics.psf import load_psf

    two = tmp_path / "two.tif"
    tifffile.imwrite(two, np.zeros((32, 40, 2), np.uint16), photometric="minisblack",
                     extrasamples=["unspecified"])
    with pytest.raises(ValueError, match=r"2 samples per pixel .*channels stored interleaved"
                                         r".* channel axis C"):
        read_image(two)
    psf = tmp_path / "psf.tif"
    tifffile.imwrite(psf, np.ones((3, 9, 9), np.float32), photometric="rgb", planarconfig=2)
    with pytest.raises(ValueError, match=r"PSF's Z planes, save them as a stack of pages"):
        load_psf(psf)
