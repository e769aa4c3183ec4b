"""The PKL Deconvolution dock widget in a real viewer (needs a display: run under xvfb-run).

A tiny analytic denoiser (``constant_denoiser`` from conftest) stands in for the prior, so
runs take well under a second per step on CPU.
"""

from __future__ import annotations

import time

import numpy as np
import tifffile
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


from pkl_dg.napari.widget import PKLDeconvolutionWidget  # noqa: E402
from pkl_dg.settings import RestoreSettings, field_specs  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("napari_config_dir")]
PLUGIN, WIDGET = "napari-pkl-dg", "PKL Deconvolution"


@pytest.fixture
def viewer_widget(make_napari_viewer, qtbot, constant_denoiser):
    """Viewer with the sample data and the widget docked through the manifest."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells")
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.model_cache.put("", "auto", constant_denoiser)
    widget.controls["steps"].value = 4
    widget.controls["sub_iterations"].value = 2
    yield viewer, widget
    if widget.is_running:
        widget.cancel()
        qtbot.waitUntil(lambda: not widget.is_running, timeout=30000)


def run_and_wait(qtbot, widget, timeout=60000) -> str:
    with qtbot.waitSignal(widget.run_finished, timeout=timeout) as blocker:
        assert widget.run()
    return blocker.args[0]


class SlowDenoiser:
    """Wraps a denoiser and sleeps per call, so a run is long enough to cancel."""

    def __init__(self, inner, delay=0.3):
        self.inner, self.delay = inner, delay

    def __call__(self, x, t):
        time.sleep(self.delay)
        return self.inner(x, t)


# ---------------------------------------------------------------- construction
def test_widget_from_manifest_has_a_control_per_setting(viewer_widget):
    viewer, widget = viewer_widget
    assert isinstance(widget, PKLDeconvolutionWidget)
    names = {s.name for s in field_specs()} - {"psf_kind"}  # "PSF from" replaces psf_kind
    assert set(widget.controls) == names
    for spec in field_specs():
        if spec.name in widget.controls:
            assert spec.help in widget.controls[spec.name].tooltip
    assert "Range 0 – 2147483647." in widget.controls["seed"].tooltip  # not 2.14748e+09
    assert [layer.name for layer in viewer.layers] == ["cells ground truth", "cells PSF",
                                                       "cells"]
    assert widget.input_combo.value.unique_id == viewer.layers["cells"].unique_id
    # the layer's physical scale (0.065 µm) prefills the pixel size
    assert widget.controls["pixel_size_nm"].value == pytest.approx(65.0)
    # calibration 'auto': the fields show the estimate for the selected image
    shown = widget.current_state().settings
    assert shown.calibration == "auto" and widget.calibration_panel.estimate_shown is not None
    assert shown.gain == pytest.approx(widget.calibration_panel.estimate_shown.gain, rel=1e-3)
    assert shown.replace(offset=0.0, gain=1.0, read_noise=0.0) == RestoreSettings(
        pixel_size_nm=65.0, steps=4, sub_iterations=2)


def _shown(ctrl) -> bool:  # the viewer window is not shown in tests: ask "not hidden"
    return not ctrl.native.isHidden()


def _names(combo) -> list[str]:
    return [combo.native.itemText(i) for i in range(combo.native.count())]


def test_layer_pickers_follow_the_layer_list(viewer_widget):
    viewer, widget = viewer_widget
    viewer.layers["cells"].name = "renamed"
    assert "renamed" in _names(widget.input_combo) and "cells" not in _names(widget.input_combo)
    viewer.add_image(np.ones((16, 16)), name="new")
    assert "new" in _names(widget.psf_layer_combo)
    viewer.layers.remove("new")
    assert "new" not in _names(widget.input_combo)


def test_visibility_follows_psf_source_and_method(viewer_widget):
    _viewer, widget = viewer_widget
    c = widget.controls
    assert _shown(c["psf_sigma"]) and not _shown(c["na"]) and not _shown(widget.bead_box)
    widget.psf_source.value = "airy"
    assert not _shown(c["psf_sigma"]) and _shown(c["na"])
    widget.psf_source.value = "beads"
    assert _shown(widget.bead_layer_combo) and _shown(widget.bead_box)
    assert not _shown(c["rl_acceleration"])  # used by Richardson–Lucy only
    widget.controls["method"].value = "rl"
    assert _shown(c["rl_iterations"]) and not _shown(c["steps"])
    assert _shown(c["rl_acceleration"]) and _shown(c["threads"])


def test_settings_persist_and_restore_defaults(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    first = PKLDeconvolutionWidget(viewer)
    first.controls["psf_sigma"].value = 1.7
    first.controls["method"].value = "anscombe"
    first.psf_source.value = "airy"
    second = PKLDeconvolutionWidget(viewer)  # a new session reads the saved file
    state = second.current_state()
    assert state.settings.psf_sigma == 1.7 and state.settings.method == "anscombe"
    assert state.psf_source == "airy"
    second.restore_defaults()
    assert PKLDeconvolutionWidget(viewer).current_state().settings == RestoreSettings()
    assert not [n for n in notes if "ERROR" in n[0].upper()]


def test_corrupt_settings_file_warns(make_napari_viewer, notes, tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "napari-widget.json").write_text("{oops")
    widget = PKLDeconvolutionWidget(make_napari_viewer())
    assert widget.current_state().settings == RestoreSettings()
    assert any("could not be used" in msg for _sev, msg in notes)


def test_show_psf_adds_one_layer(viewer_widget):
    viewer, widget = viewer_widget
    layer = widget.show_psf()
    assert layer is not None and layer.name == "PSF (PKL)"
    assert abs(float(layer.data.sum()) - 1) < 1e-5
    widget.controls["psf_sigma"].value = 3.0
    again = widget.show_psf()
    assert again.unique_id == layer.unique_id
    assert layer.data.shape[0] > 17, layer.data.shape
    assert sum(lyr.name == "PSF (PKL)" for lyr in viewer.layers) == 1


# ---------------------------------------------------------------- runs
def test_run_streams_into_one_layer_with_input_scale(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    source = viewer.layers["cells"]
    before = source.data.copy()
    layers_seen, steps_seen = set(), []

    def on_frame(index):
        layers_seen.add(widget.output_layer.unique_id)
        steps_seen.append(index)
    widget.frame_shown.connect(on_frame)
    assert run_and_wait(qtbot, widget) == "done"
    # frames are shown at most 10 per second: the first always, in order, one layer; 4 steps
    # and the final denoising pass make 5 frames
    assert steps_seen[0] == 1 and steps_seen == sorted(set(steps_seen)) and \
        steps_seen[-1] <= 5 and len(layers_seen) == 1
    assert "restored in" in widget.status_label.text()
    out = viewer.layers["cells [PKL]"]
    assert out.unique_id == widget.output_layer.unique_id
    # the default draws several posterior samples: their std gets its own layer
    assert [lyr.name for lyr in viewer.layers][3:] == ["cells [PKL]", "cells [PKL] std"]
    assert viewer.layers.selection.active is out  # not the hidden std layer
    assert out.data.dtype == np.float32 and out.data.shape == source.data.shape
    np.testing.assert_allclose(out.scale, source.scale)
    np.testing.assert_allclose(out.translate, source.translate)
    assert tuple(map(str, out.units)) == tuple(map(str, source.units))
    lo, hi = out.contrast_limits
    assert lo < hi and lo >= float(out.data.min()) - 1e-3
    md = out.metadata
    assert md["settings"]["steps"] == 4 and md["settings"]["method"] == "pkl"
    assert md["napari"]["input_layer"] == "cells" and "background_photons" in md
    np.testing.assert_array_equal(source.data, before)
    assert not [n for n in notes if "ERROR" in n[0].upper()]


def test_fast_frames_are_throttled_but_counted(viewer_widget, qtbot, monkeypatch):
    """Frames within DISPLAY_INTERVAL_S of the last shown one wait; the newest is shown."""
    import pkl_dg.napari.output as output
    import pkl_dg.napari.run_controller as controller

    viewer, widget = viewer_widget
    shown = []
    real_show = output.show_frame
    monkeypatch.setattr(output, "show_frame",  # counts the frames streamed when shown
                        lambda layer, run, block, image: (shown.append(widget.runner.run.frames),
                                                          real_show(layer, run, block, image)))
    monkeypatch.setattr(controller, "DISPLAY_INTERVAL_S", 3600.0)
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 12
    handled = []
    widget.frame_shown.connect(handled.append)
    assert run_and_wait(qtbot, widget) == "done"
    assert handled == [1] and shown == [1]  # the first frame; the result replaced the rest
    assert widget.runner.run.frames == 12  # every frame counted
    assert widget.progress.value() == widget.progress.maximum()
    assert widget.output_layer.metadata["settings"]["rl_iterations"] == 12
    # without throttling every frame is shown
    shown.clear()
    monkeypatch.setattr(controller, "DISPLAY_INTERVAL_S", 0.0)
    assert run_and_wait(qtbot, widget) == "done"
    assert shown == list(range(1, 13))


def test_second_run_reuses_operator_otf(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    assert run_and_wait(qtbot, widget) == "done"
    (op,) = widget.operator_cache.operators()
    hits, misses = op.cache.hits, op.cache.misses
    assert run_and_wait(qtbot, widget) == "done"
    assert len(widget.operator_cache) == 1 and widget.operator_cache.created == 1
    assert op.cache.misses == misses and op.cache.hits > hits
    assert sum(lyr.name.startswith("cells [") for lyr in viewer.layers) == 1
    # another shape gets its own operator
    viewer.add_image(viewer.layers["cells"].data[:100, :120].copy(), name="crop")
    widget.input_combo.value = viewer.layers["crop"]
    assert run_and_wait(qtbot, widget) == "done"
    assert len(widget.operator_cache) == 2


def test_cancel_stops_early_and_second_run_is_refused(viewer_widget, qtbot, notes,
                                                      constant_denoiser):
    viewer, widget = viewer_widget
    widget.model_cache.put("", "auto", SlowDenoiser(constant_denoiser))
    widget.controls["steps"].value = 40
    frames = []
    widget.frame_shown.connect(frames.append)
    with qtbot.waitSignal(widget.run_finished, timeout=60000) as blocker:
        assert widget.run()
        qtbot.waitUntil(lambda: len(frames) >= 2, timeout=30000)
        assert widget.run() is False  # refused while running
        assert any("already running" in msg for _sev, msg in notes)
        widget.cancel()
    assert blocker.args == ["cancelled"]
    assert len(frames) < 10
    out = widget.output_layer
    assert out.metadata["status"] == "cancelled"
    assert out.metadata["steps_completed"] == widget.runner.run.frames >= len(frames)
    # what the run had established stays with its last estimate: the photon scale is traceable
    md = out.metadata
    assert md["calibration"]["source"] == "estimated" and "psf" in md
    assert md["blocks"][0]["background_photons"] >= 0 and md["napari"]["input_layer"] == "cells"
    assert "Cancelled after" in widget.status_label.text()
    assert not widget.is_running and widget.run_button.isEnabled()


class BrokenDenoiser:
    def __call__(self, x, t):
        raise RuntimeError("the network exploded")


def test_run_warnings_and_unexpected_errors_become_one_notification_each(viewer_widget, qtbot,
                                                                        notes):
    """A warning raised inside the worker thread (saturated pixels) and an exception the run
    does not expect each reach the user as exactly one napari notification (napari 0.9.2's
    thread_worker relays neither)."""
    viewer, widget = viewer_widget
    img = np.asarray(viewer.layers["cells"].data, dtype=np.float64)
    viewer.add_image(np.clip(img / img.max() * 400, 0, 255).astype(np.uint8), name="clipped")
    widget.input_combo.value = viewer.layers["clipped"]
    notes.clear()
    assert run_and_wait(qtbot, widget) == "done"
    assert "saturated" in widget.output_layer.metadata
    qtbot.waitUntil(lambda: any("saturated pixel" in m for _s, m in notes), timeout=5000)
    warned = [m for s, m in notes if "WARNING" in s.upper() and "saturated pixel" in m]
    assert len(warned) == 1, notes
    widget.model_cache.put("", "auto", BrokenDenoiser())
    # a RuntimeError (torch's kind of fault) ends the run too: superqt alone would drop it
    with qtbot.captureExceptions() as raised:
        assert run_and_wait(qtbot, widget) == "error"
        qtbot.waitUntil(lambda: any("network exploded" in m for _s, m in notes), timeout=5000)
    assert any("network exploded" in str(exc) for _t, exc, _tb in raised)
    errors = [m for s, m in notes if "ERROR" in s.upper() and "network exploded" in m]
    assert len(errors) == 1, notes
    assert "network exploded" in widget.status_label.text()


def test_input_removed_during_run_stops_it(viewer_widget, qtbot, notes, constant_denoiser):
    viewer, widget = viewer_widget
    widget.model_cache.put("", "auto", SlowDenoiser(constant_denoiser))
    widget.controls["steps"].value = 40
    frames = []
    widget.frame_shown.connect(frames.append)
    with qtbot.waitSignal(widget.run_finished, timeout=60000) as blocker:
        widget.run()
        qtbot.waitUntil(lambda: len(frames) >= 1, timeout=30000)
        viewer.layers.remove("cells")
    assert blocker.args == ["cancelled"]
    # said in the status line, not in pop-ups (closing the viewer removes every layer)
    assert "input layer 'cells' was removed" in widget.status_label.text()
    assert not [n for n in notes if "WARNING" in n[0].upper() or "ERROR" in n[0].upper()]


def test_nd_layer_restores_displayed_plane(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    plane = viewer.layers["cells"].data[:64, :64].astype(np.float32)
    stack = np.stack([plane * 0 + 1, plane, plane * 2])
    layer = viewer.add_image(stack, name="stack", scale=(2.0, 0.1, 0.1))
    viewer.dims.set_current_step(0, 2)
    widget.input_combo.value = layer
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    widget.controls["calibration"].value = "manual"  # the planes' flux in their own units
    widget.controls["offset"].value, widget.controls["gain"].value = 0.0, 1.0
    widget.controls["background"].value = 0.0  # then RL keeps the plane's flux
    assert run_and_wait(qtbot, widget) == "done"
    out = widget.output_layer
    # the plane keeps its place in the stack: shown at z = 2, not on every plane
    assert out.name == "stack [Richardson–Lucy] @2" and out.data.shape == (1, 64, 64)
    np.testing.assert_allclose(out.scale, (2.0, 0.1, 0.1))
    np.testing.assert_allclose(out.translate, (4.0, 0.0, 0.0))
    assert out.world_to_data((4.0, 1.0, 1.0)) == pytest.approx((0, 10, 10))
    assert out.metadata["napari"]["plane"] == [2]
    assert "assumed: the layer has no physical pixel size" in out.metadata["napari"]["pixel_size"]
    assert out.data.mean() == pytest.approx(2 * plane.mean(), rel=0.05)
    # the input stays where it was (the plane offset was added into napari's own array of
    # the input's translate), so the next run restores the plane shown, not one 2 further
    np.testing.assert_allclose(layer.translate, (0.0, 0.0, 0.0))
    viewer.dims.set_current_step(0, 1)
    assert run_and_wait(qtbot, widget) == "done"
    out = widget.output_layer
    assert out.name == "stack [Richardson–Lucy] @1"
    np.testing.assert_allclose(out.translate, (2.0, 0.0, 0.0))
    np.testing.assert_allclose(layer.translate, (0.0, 0.0, 0.0))
    assert out.data.mean() == pytest.approx(plane.mean(), rel=0.05)


# ---------------------------------------------------------------- errors
def _error_messages(notes):
    return [msg for sev, msg in notes if "ERROR" in sev.upper()]


@pytest.mark.parametrize("case", ["rgb", "nan", "empty", "psf_too_large", "bad_model"])
def test_errors_notify_and_leave_input_unchanged(viewer_widget, qtbot, notes, tmp_path, case):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(0)
    if case == "rgb":
        data = rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)
        layer = viewer.add_image(data, name=case, rgb=True)
        expected = "RGB"
    elif case == "nan":
        data = np.full((32, 32), np.nan, np.float32)  # a few NaN are left out of the fit
        layer = viewer.add_image(data, name=case)
        expected = "all NaN"
    elif case == "empty":
        data = np.zeros((32, 32), np.float32)
        layer = viewer.add_image(data, name=case)
        expected = "all zero"
    elif case == "psf_too_large":
        data = rng.poisson(10, (12, 12)).astype(np.float32)
        layer = viewer.add_image(data, name=case)
        widget.controls["psf_sigma"].value = 3.0
        expected = "larger than the image"
    else:
        bad = tmp_path / "broken.safetensors"
        bad.write_bytes(b"\x00not a model")
        widget.controls["model"].line_edit.value = str(bad)
        data = rng.poisson(10, (32, 32)).astype(np.float32)
        layer = viewer.add_image(data, name=case)
        expected = "broken"
    before = np.array(layer.data, copy=True)
    widget.input_combo.value = layer
    n_layers = len(viewer.layers)
    if widget.run():
        qtbot.waitUntil(lambda: not widget.is_running, timeout=30000)
    qtbot.waitUntil(lambda: bool(_error_messages(notes)), timeout=5000)
    assert any(expected in msg for msg in _error_messages(notes)), notes
    np.testing.assert_array_equal(np.asarray(layer.data), before)
    assert len(viewer.layers) == n_layers  # no half-made output layer
    assert not widget.is_running and widget.run_button.isEnabled()


def test_one_dimensional_data_is_refused(viewer_widget, notes):
    viewer, widget = viewer_widget
    layer = viewer.add_image(np.ones((1, 40), np.float32), name="line")
    widget.input_combo.value = layer
    assert widget.run() is False
    assert any("not an image" in msg for msg in _error_messages(notes))


def test_bead_psf_and_missing_layer(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    widget.psf_source.value = "beads"
    widget.bead_layer_combo.value = None
    assert widget.run() is False
    assert any("bead image layer" in msg for msg in _error_messages(notes))
    beads = np.full((96, 96), 10.0, np.float32)
    yy, xx = np.mgrid[0:96, 0:96]
    for y, x in ((25, 25), (25, 70), (70, 48)):
        beads += 500 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.8 ** 2))
    viewer.add_image(beads, name="beads")
    widget.bead_layer_combo.value = viewer.layers["beads"]
    widget.bead_box.value = 21
    psf_layer = widget.show_psf()
    assert psf_layer is not None and psf_layer.metadata["psf_beads_used"] == 3


def test_whole_stack_fills_one_layer_block_by_block(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    plane = viewer.layers["cells"].data[:48, :48].astype(np.float32)
    stack = np.stack([plane, plane * 2])
    layer = viewer.add_image(stack, name="stack", scale=(3.0, 0.1, 0.1))
    widget.input_combo.value = layer
    assert not widget.stack_combo.native.isHidden()
    widget.stack_combo.value = "all"
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    widget.controls["calibration"].value = "manual"  # the planes' flux in their own units
    widget.controls["offset"].value, widget.controls["gain"].value = 0.0, 1.0
    widget.controls["background"].value = 0.0
    assert run_and_wait(qtbot, widget) == "done"
    out = widget.output_layer
    assert out.name == "stack [Richardson–Lucy]" and out.data.shape == stack.shape
    np.testing.assert_allclose(out.scale, layer.scale)
    assert widget.runner.run.frames == 4  # 2 iterations × 2 planes, into the same layer
    assert out.data[1].mean() == pytest.approx(2 * out.data[0].mean(), rel=0.05)
    np.testing.assert_array_equal(layer.data, stack)


def test_a_hyperstacks_channels_get_their_own_calibration_in_the_widget(viewer_widget, qtbot,
                                                                        tmp_path):
    """Two detectors (1 ADU/e⁻, offset 100; 4 ADU/e⁻, offset 90) in an ImageJ (Z, C, Y, X)
    file opened with napari's own reader: the widget handed the core the array without its
    axes, so the whole stack shared one estimated calibration and channel 0, below channel
    1's offset, came out empty. The file's axes now go with it."""
    from scipy.ndimage import gaussian_filter

    from pkl_dg import restore

    viewer, widget = viewer_widget
    rng = np.random.default_rng(0)
    truth = viewer.layers["cells"].data[:64, :64].astype(np.float64)
    lam = gaussian_filter(truth / truth.max() * 60, 2.0) + 2
    zcyx = np.stack([np.stack([rng.poisson(lam) * 1.0 + 100,
                               rng.poisson(lam * 0.5) * 4.0 + 90]) for _ in range(2)])
    zcyx = zcyx.astype(np.uint16)
    path = tmp_path / "two_detectors.tif"
    tifffile.imwrite(path, zcyx, imagej=True, metadata={"axes": "ZCYX"})
    (layer,) = viewer.open(path, plugin="napari")  # numeric axis labels
    widget.input_combo.value = layer
    widget.stack_combo.value = "all"
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 5
    assert run_and_wait(qtbot, widget) == "done"
    out = widget.output_layer
    assert out.data.shape == zcyx.shape
    assert out.metadata["calibration"]["source"] == "estimated per channel"
    # as the core restores the file with its axes (each channel on its own)
    kw = dict(method="rl", rl_iterations=5, psf_sigma=2.0, threads=1)
    api = restore(zcyx, axes="ZCYX", **kw)
    np.testing.assert_allclose(out.data, api, rtol=1e-4, atol=1e-3 * api.max())
    for c in (0, 1):
        alone = restore(zcyx[:, c], **kw)
        np.testing.assert_allclose(out.data[:, c], alone, rtol=1e-4, atol=1e-3 * alone.max())
    assert out.data[:, 0].max() > 10  # channel 0 is not empty


def test_a_stack_that_fails_part_way_keeps_its_planes_and_says_failed(viewer_widget, qtbot,
                                                                      notes):
    """Whole stack, plane 2 of 3 unusable (all NaN): the run fails there with the reason in a
    notification; the output keeps plane 0 and its metadata says 'failed', why and how
    far it got (it said 'running' for ever)."""
    viewer, widget = viewer_widget
    plane = viewer.layers["cells"].data[:48, :48].astype(np.float32)
    stack = np.stack([plane, plane * 2, plane])
    stack[2] = np.nan  # nothing measured (a few NaN would be left out of the fit)
    widget.input_combo.value = viewer.add_image(stack, name="stack")
    widget.stack_combo.value = "all"
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    assert run_and_wait(qtbot, widget) == "failed"
    out = widget.output_layer
    assert out.metadata["status"] == "failed" and "NaN" in out.metadata["error"]
    assert out.metadata["steps_completed"] == 4 and out.metadata["steps_total"] == 6
    assert "calibration" in out.metadata  # what the run had established
    assert out.data[0].max() > 0 and out.data[1].max() > 0 and np.isnan(out.data[2]).all()
    assert out.name == "stack [Richardson–Lucy] (failed, 2 of 3 planes restored)"
    assert out.metadata["blocks_restored"] == [[0], [1]]
    assert out.metadata["blocks_not_restored"] == {"count": 1, "value": "NaN"}
    assert "holds the planes restored" in widget.status_label.text()
    assert any("NaN" in msg for msg in _error_messages(notes))


def test_a_cancelled_stack_says_so_in_its_name_and_leaves_planes_not_started_nan(
        viewer_widget, qtbot, constant_denoiser):
    """A cancelled whole-stack run looked finished: the layer kept the result's name and
    the planes it never reached were zeros (0 photons). Now the name says how far it got,
    those planes are NaN, the metadata lists what was restored, and the next run writes a
    new layer instead of overwriting what the cancelled one left."""
    viewer, widget = viewer_widget
    plane = viewer.layers["cells"].data[:48, :48].astype(np.float32)
    widget.input_combo.value = viewer.add_image(np.stack([plane] * 4), name="stack")
    widget.stack_combo.value = "all"
    widget.controls["samples"].value = 1
    widget.model_cache.put("", "auto", SlowDenoiser(constant_denoiser, delay=0.1))
    per_plane = widget.controls["steps"].value
    frames = []
    widget.frame_shown.connect(frames.append)
    with qtbot.waitSignal(widget.run_finished, timeout=60000) as blocker:
        assert widget.run()
        qtbot.waitUntil(lambda: bool(frames) and frames[-1] > per_plane, timeout=30000)
        widget.cancel()
    assert blocker.args == ["cancelled"]
    out = widget.output_layer
    md = out.metadata
    assert md["status"] == "cancelled" and md["blocks_restored"][0] == [0]
    assert md["block_in_progress"] in ([1], None)
    missing = md["blocks_not_restored"]["count"]
    assert missing >= 1 and np.isnan(out.data[4 - missing:]).all()
    assert np.isfinite(out.data[0]).all() and out.data[0].max() > 0
    restored = len(md["blocks_restored"])
    assert out.name == f"stack [PKL] (cancelled, {restored} of 4 planes restored)"
    assert "are NaN" in widget.status_label.text()
    if md["block_in_progress"] == [1]:  # said in words, not only in the metadata
        assert "plane 1 part way (an unfinished estimate)" in widget.status_label.text()
    widget.model_cache.put("", "auto", constant_denoiser)
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.output_layer.name == "stack [PKL]"
    assert out.name in viewer.layers and np.isnan(out.data[-1]).all()  # kept as it was


def test_3d_mode_restores_the_volume_and_posterior_std(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(0)
    vol = rng.poisson(20, (9, 32, 32)).astype(np.float32)
    layer = viewer.add_image(vol, name="vol", scale=(0.3, 0.1, 0.1))
    widget.input_combo.value = layer
    widget.controls["mode"].value = "3d"
    widget.controls["psf_sigma"].value = 1.0
    widget.controls["psf_sigma_z"].value = 0.7  # 7 planes
    widget.controls["steps"].value = 2
    widget.controls["samples"].value = 2
    assert run_and_wait(qtbot, widget) == "done"
    out = widget.output_layer
    assert out.data.shape == vol.shape and out.name == "vol [PKL]"
    np.testing.assert_allclose(out.scale, layer.scale)
    std = viewer.layers["vol [PKL] std"]
    assert std.data.shape == vol.shape and float(std.data.max()) >= 0


def _rl_with_bead_psf(viewer, widget):
    """Choose the layer 'bead stack' as the PSF source (11 px box) and 2 RL iterations;
    show the PSF and return its layer."""
    widget.psf_source.value = "beads"
    widget.bead_layer_combo.value = viewer.layers["bead stack"]
    widget.bead_box.value = 11
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    return widget.show_psf()


def test_3d_mode_takes_the_psf_from_a_bead_stack(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    zz, yy, xx = np.mgrid[:15, :48, :48]
    beads = np.full((15, 48, 48), 10.0, np.float32)
    for z, y, x in ((7, 12, 12), (7, 12, 36), (7, 36, 24)):
        beads += 800 * np.exp(-((zz - z) ** 2 / (2 * 2.0 ** 2)
                                + ((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.2 ** 2)))
    viewer.add_image(beads, name="bead stack")
    vol = np.random.default_rng(0).poisson(20, (15, 32, 32)).astype(np.float32)
    widget.input_combo.value = viewer.add_image(vol, name="vol")
    widget.controls["mode"].value = "3d"
    psf_layer = _rl_with_bead_psf(viewer, widget)
    assert psf_layer is not None and psf_layer.data.ndim == 3
    assert psf_layer.metadata["psf_beads_used"] == 3
    assert run_and_wait(qtbot, widget) == "done"
    md = widget.output_layer.metadata
    assert md["napari"]["psf_beads_used"] == 3 and md["psf_shape"][0] > 1
    assert not [n for n in notes if "ERROR" in n[0].upper()]


def test_2d_mode_takes_a_bead_stacks_in_focus_plane_not_the_displayed_one(viewer_widget,
                                                                           qtbot, notes):
    """The viewer's Z slider is the image's: a 2D run on plane 3 of a stack used plane 3
    of the bead stack too, where the beads (in focus at plane 11) are a faint blur or
    noise. The PSF now comes from the bead stack's in-focus plane, said in the status."""
    viewer, widget = viewer_widget
    rng = np.random.default_rng(5)
    zz, yy, xx = np.mgrid[:15, :64, :64]
    beads = np.full((15, 64, 64), 100.0, np.float32)
    for y, x in ((16, 16), (16, 46), (46, 30)):
        width = 1.2 ** 2 * (1 + ((zz - 11) / 2.5) ** 2)  # widens out of focus
        beads += 900 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width)) / (width / 1.44)
    viewer.add_image(rng.poisson(beads).astype(np.float32), name="bead stack")
    stack = rng.poisson(20, (15, 40, 40)).astype(np.float32)
    widget.input_combo.value = viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 3)
    psf_layer = _rl_with_bead_psf(viewer, widget)
    assert psf_layer is not None and psf_layer.data.ndim == 2
    assert psf_layer.metadata["psf_bead_plane"] == 11
    assert psf_layer.metadata["psf_beads_used"] == 3
    fwhm = psf_layer.metadata["psf"]["fwhm_px"]
    assert fwhm == pytest.approx([2.83, 2.83], abs=0.5)  # σ 1.2 px in focus
    assert "(3 beads in focus at plane 11)" in widget.status_label.text()
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.output_layer.metadata["napari"]["psf_bead_plane"] == 11
    assert not [n for n in notes if "ERROR" in n[0].upper()]


def test_closing_the_dock_stops_the_run(viewer_widget, qtbot, notes, constant_denoiser):
    viewer, widget = viewer_widget
    widget.model_cache.put("", "auto", SlowDenoiser(constant_denoiser))
    widget.controls["steps"].value = 40
    frames = []
    widget.frame_shown.connect(frames.append)
    with qtbot.waitSignal(widget.run_finished, timeout=60000) as blocker:
        widget.run()
        qtbot.waitUntil(lambda: len(frames) >= 1, timeout=30000)
        viewer.window.remove_dock_widget("all")
    assert blocker.args == ["cancelled"] and len(frames) < 10
    assert not [n for n in notes if "WARNING" in n[0].upper() or "ERROR" in n[0].upper()]
    assert len(widget.operator_cache) == 0  # caches freed with the widget


def test_multiscale_layer_restores_full_resolution(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    base = np.asarray(viewer.layers["cells"].data[:64, :64], np.float32)
    layer = viewer.add_image([base, base[::2, ::2]], name="pyramid", multiscale=True)
    widget.input_combo.value = layer
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.output_layer.data.shape == (64, 64)


def test_stack_sample_in_3d_mode(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "stack")
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    stack = viewer.layers["stack"]
    assert widget.input_combo.value.unique_id == stack.unique_id
    widget.controls["mode"].value = "3d"
    widget.controls["psf_sigma_z"].value = 1.5
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    assert run_and_wait(qtbot, widget) == "done"
    out = widget.output_layer
    assert out.data.shape == stack.data.shape and out.name == "stack [Richardson–Lucy]"
    np.testing.assert_allclose(out.scale, stack.scale)


def test_gui_stays_responsive_while_running(viewer_widget, qtbot, constant_denoiser):
    from qtpy.QtCore import QTimer

    _viewer, widget = viewer_widget
    widget.model_cache.put("", "auto", SlowDenoiser(constant_denoiser, delay=1.0))
    widget.controls["steps"].value = 40
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    with qtbot.waitSignal(widget.run_finished, timeout=60000):
        widget.run()
        timer.start(20)
        qtbot.wait(1000)
        timer.stop()
        widget.cancel()
    gaps = np.diff(ticks)
    # each step takes > 1 s in the worker; the event loop never waited for one
    assert len(ticks) >= 10 and gaps.max() < 0.7


def test_model_file_is_loaded_once_and_reused(viewer_widget, qtbot, tmp_path):
    """A real (untrained, tiny) prior saved with model_io, chosen in the Model field."""
    import torch

    from pkl_dg.diffusion.model_io import save_model
    from pkl_dg.diffusion.unet import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(width=8, channel_mult=(1, 2), groups=4)).eval()
    path = save_model(net, None, tmp_path / "prior")
    viewer, widget = viewer_widget
    crop = viewer.add_image(np.asarray(viewer.layers["cells"].data[:48, :48]), name="crop")
    widget.input_combo.value = crop
    widget.controls["model"].line_edit.value = str(path)
    widget.controls["steps"].value = 2
    assert run_and_wait(qtbot, widget) == "done"
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.model_cache.loads == 1
    md = widget.output_layer.metadata
    assert md["napari"]["model"] == str(path) and md["settings"]["model"] == str(path)


def test_pixel_size_note_says_where_the_pixel_size_came_from():
    from types import SimpleNamespace

    from napari.layers import Image

    from pkl_dg.napari.controls import pixel_size_note

    warned = []
    bare = Image(np.zeros((8, 8), np.float32), name="bare")
    airy = SimpleNamespace(pixel_size_nm=65.0, psf_kind="airy")
    note = pixel_size_note(bare, airy, warned.append)
    assert note.startswith("65 nm") and "assumed" in note
    assert len(warned) == 1 and "no physical pixel size" in warned[0]
    gaussian = SimpleNamespace(pixel_size_nm=65.0, psf_kind="gaussian")  # σ in px: no warning
    assert "assumed" in pixel_size_note(bare, gaussian, warned.append) and len(warned) == 1
    um = Image(np.zeros((8, 8), np.float32), scale=(0.1, 0.1), units=("um", "um"))
    assert pixel_size_note(um, SimpleNamespace(pixel_size_nm=100.0, psf_kind="airy"),
                           warned.append) == "100 nm from the layer's scale"
    assert "layer's scale says 100 nm" in pixel_size_note(
        um, SimpleNamespace(pixel_size_nm=65.0, psf_kind="airy"), warned.append)
    assert len(warned) == 1


def test_an_images_pixel_size_is_not_carried_to_an_image_without_one(viewer_widget):
    """A layer's own pixel size fills the field for that layer only: a layer that states
    none gets the user's value back ("assumed"), the settings file keeps the user's value,
    and a new widget (the next session) starts from it."""
    from pkl_dg.napari.state import SettingsStore

    viewer, widget = viewer_widget
    field = widget.controls["pixel_size_nm"]
    other = viewer.add_image(np.ones((32, 32), np.float32), name="other",
                             scale=(0.0426137, 0.0426137), units=("um", "um"))
    bare = viewer.add_image(np.ones((32, 32), np.float32), name="bare")
    widget.input_combo.value = bare
    field.value = 80.0  # the user's own value, typed for an image without one
    assert field.label.endswith(", assumed")
    widget.input_combo.value = other
    assert field.value == pytest.approx(42.6137) and field.label.endswith(", from image")
    assert SettingsStore().load()[0].settings.pixel_size_nm == pytest.approx(80.0)
    widget.input_combo.value = bare
    assert field.value == pytest.approx(80.0) and field.label.endswith(", assumed")
    widget.input_combo.value = other
    field.value = 50.0  # typed over the image's own: the user's value, and saved
    assert field.label.endswith(", set here")
    assert SettingsStore().load()[0].settings.pixel_size_nm == pytest.approx(50.0)
    widget.input_combo.value = bare
    assert field.value == pytest.approx(50.0) and field.label.endswith(", assumed")
    widget.input_combo.value = other
    assert field.value == pytest.approx(42.6137)
    second = PKLDeconvolutionWidget(viewer)  # the next session
    second.input_combo.value = other
    assert second.controls["pixel_size_nm"].value == pytest.approx(42.6137)
    second.input_combo.value = bare
    assert second.controls["pixel_size_nm"].value == pytest.approx(50.0)


def test_a_stacks_z_step_fills_the_field_and_is_not_carried_to_the_next(viewer_widget):
    """The Z step a stack states (its layer's scale) fills 'Z step' for that stack only, as
    the pixel size does; a stack that states none gets the user's value back (0: not
    given), and the saved settings keep the user's."""
    from pkl_dg.napari.state import SettingsStore

    viewer, widget = viewer_widget
    field = widget.controls["z_step_nm"]
    stated = viewer.add_image(np.ones((5, 32, 32), np.float32), name="stated",
                              scale=(0.25, 0.065, 0.065), units=("um", "um", "um"))
    bare = viewer.add_image(np.ones((5, 32, 32), np.float32), name="bare stack")
    widget.input_combo.value = stated
    assert field.value == pytest.approx(250.0) and field.label.endswith(", from image")
    assert SettingsStore().load()[0].settings.z_step_nm == 0.0
    widget.input_combo.value = bare
    assert field.value == 0.0 and field.native.specialValueText() == "not given"
    assert not field.label.endswith((", assumed", ", from image"))
    field.value = 300.0
    assert field.label.endswith(", assumed")
    widget.input_combo.value = stated
    assert field.value == pytest.approx(250.0)
    widget.input_combo.value = bare
    assert field.value == pytest.approx(300.0)
    assert SettingsStore().load()[0].settings.z_step_nm == pytest.approx(300.0)


def test_pixel_size_of_a_tiff_opened_by_naparis_own_reader(tmp_path, viewer_widget):
    """napari's built-in TIFF reader leaves an ImageJ TIFF's resolution out of the layer's
    scale; the widget reads it from the file and says so."""
    from types import SimpleNamespace

    import tifffile

    from pkl_dg.napari.controls import pixel_size_nm_of, pixel_size_note

    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, np.zeros((32, 32), np.uint16), imagej=True,
                     resolution=(1 / 0.0426137, 1 / 0.0426137), metadata={"unit": "um"})
    viewer, widget = viewer_widget
    (layer,) = viewer.open(path, plugin="napari")
    assert str(layer.units[-1]) == "pixel"  # what the built-in reader gives
    assert pixel_size_nm_of(layer) == pytest.approx(42.6137)
    widget.input_combo.value = layer
    shown = widget.controls["pixel_size_nm"].value  # to the field's decimals, as a run takes it
    assert shown == pytest.approx(42.6137)
    warned = []
    note = pixel_size_note(layer, SimpleNamespace(pixel_size_nm=shown, psf_kind="airy"),
                           warned.append)
    assert note == "42.6137 nm from the metadata of the layer's file" and not warned


def test_a_long_layer_name_does_not_widen_the_widgets(make_napari_viewer):
    """A layer picker's width follows no layer name: one long file name used to widen the
    whole dock beyond the window and cut off every control's right edge."""
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((16, 16), np.float32), name="a_very_long_file_name_" * 12)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    _dock, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare methods")
    pickers = [widget.input_combo.native, widget.psf_layer_combo.native,
               widget.bead_layer_combo.native, compare.input_combo, compare.gt_combo]
    assert widget.input_combo.native.count() == 1  # the long name is among the choices
    assert max(p.sizeHint().width() for p in pickers) < 300
    assert widget.sizeHint().width() < 600 and compare.sizeHint().width() < 600


def test_a_psf_layer_with_its_own_pixel_size_is_resampled_to_the_images(viewer_widget,
                                                                          qtbot):
    """In the widget: an image at 65 nm and a PSF layer at 100 nm (both with a physical
    scale): the run resamples the PSF to the image's pixels and records where from."""
    from pkl_dg.physics import gaussian_psf

    viewer, widget = viewer_widget
    image = viewer.add_image(np.random.default_rng(0).poisson(20, (64, 64)).astype(np.float32),
                             name="at 65 nm", scale=(0.065, 0.065), units=("um", "um"))
    viewer.add_image(gaussian_psf(2.0, size=31), name="psf at 100 nm", scale=(0.1, 0.1),
                     units=("um", "um"))
    widget.input_combo.value = image
    widget.psf_source.value = "layer"
    widget.psf_layer_combo.value = viewer.layers["psf at 100 nm"]
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    assert run_and_wait(qtbot, widget) == "done"
    md = widget.output_layer.metadata
    assert md["napari"]["psf_sampling_from_source"] == {"psf_pixel_size_nm": 100.0}
    assert md["psf"]["resampled"]["from_spacing_nm"] == [100.0, 100.0]
    assert md["psf"]["resampled"]["to_spacing_nm"] == [65.0, 65.0]
