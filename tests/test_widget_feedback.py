"""What the calibration panel tells its user (needs a display: xvfb-run).

Faults found by a new-user trial: the panel kept the displayed plane's estimate after a
whole-stack run that used another one (offset 2197.69 shown, 2199.56 used); calibration
messages overwrote the 'Show PSF' line; an image already in photons got an absurd gain
estimate (33658 e⁻/ADU) without a word.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("napari_config_dir")]
PLUGIN, WIDGET = "napari-pkl-dg", "PKL Deconvolution"

from test_napari_calibration import _camera_image  # noqa: E402 (the same camera frame)


def _restored_like(seed=0):
    """A PKL result: photons, float32, smooth, with far less noise than photon counts have
    (the estimate's gain comes out near 3·10⁴ e⁻/ADU, as in the trial)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    smooth = (3000 * np.exp(-((yy - 64) ** 2 + (xx - 50) ** 2) / 200.0)
              + 800 * np.exp(-((yy - 30) ** 2 + (xx - 95) ** 2) / 60.0) + 20)
    return (smooth + rng.normal(0, 1, smooth.shape) * np.sqrt(smooth) / 180).astype(np.float32)


@pytest.fixture
def docked(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return viewer, widget


# ---------------------------------------------------------------- what a run used
def test_after_a_whole_stack_run_the_panel_shows_the_calibration_it_used(docked, qtbot):
    """Three planes with gains 0.5, 1, 2; the displayed plane is the first, a whole-stack
    run calibrates on the middle one. The panel showed the first plane's estimate after the
    run (the trial: offset 2197.69 shown, 2199.56 used)."""
    viewer, widget = docked
    planes = [_camera_image(gain=g, offset=100.0 + 3 * i, seed=i)
              for i, g in enumerate((0.5, 1.0, 2.0))]
    widget.input_combo.value = viewer.add_image(np.stack(planes), name="stack")
    viewer.dims.set_point(0, 0)
    qtbot.waitUntil(lambda: widget.controls["gain"].value == pytest.approx(0.5, rel=0.15),
                    timeout=5000)
    widget.stack_combo.value = "all"
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    with qtbot.waitSignal(widget.run_finished, timeout=60000) as blocker:
        assert widget.run()
    assert blocker.args[0] == "done"
    used = widget.output_layer.metadata["calibration"]
    assert used["gain"] == pytest.approx(1.0, rel=0.15)  # the middle plane's
    panel, c = widget.calibration_panel, widget.controls
    assert c["calibration"].value == "auto"
    assert (c["gain"].value, c["offset"].value, c["read_noise"].value) == pytest.approx(
        (used["gain"], used["offset"], used["read_noise"]), abs=0.005)  # as the fields round
    label = panel.label.text()
    assert "stack [Richardson–Lucy]" in label and "used" in label
    assert f"gain {used['gain']:.4g}" in label and f"offset {used['offset']:.2f}" in label


def test_the_panel_lists_each_channel_a_run_calibrated(docked):
    """A run that estimated each channel on its own: the panel names every channel's values
    (the fields hold one calibration, so they are left as they are)."""
    viewer, widget = docked
    widget.input_combo.value = viewer.add_image(_camera_image(), name="two")
    before = {n: widget.controls[n].value for n in ("offset", "gain", "read_noise")}
    record = {"source": "estimated per channel", "channels": [
        {"gain": 0.5, "offset": 100.25, "read_noise": 1.5, "source": "estimated"},
        {"gain": 2.0, "offset": 90.0, "read_noise": 3.0, "source": "estimated"}]}
    widget.calibration_panel.show_used(record, "two [PKL]")
    label = widget.calibration_panel.label.text()
    assert "channel 1: gain 0.5 e⁻/ADU, offset 100.25 ADU" in label
    assert "channel 2: gain 2 e⁻/ADU, offset 90.00 ADU" in label
    assert {n: widget.controls[n].value for n in before} == before


def test_before_a_whole_stack_run_the_panel_estimates_as_the_run_will(docked, qtbot):
    viewer, widget = docked
    from pkl_dg.inputs import resolve_calibration
    from pkl_dg.settings import RestoreSettings

    stack = np.stack([_camera_image(gain=g, offset=100.0, seed=i)
                      for i, g in enumerate((0.5, 1.0, 2.0))])
    widget.input_combo.value = viewer.add_image(stack, name="stack")
    viewer.dims.set_point(0, 0)
    qtbot.waitUntil(lambda: widget.controls["gain"].value == pytest.approx(0.5, rel=0.15),
                    timeout=5000)
    widget.stack_combo.value = "all"
    assert widget.calibration_panel.estimate_shown.gain == \
        resolve_calibration(stack, RestoreSettings()).gain
    assert "middle plane" in widget.calibration_panel.label.text()


# ---------------------------------------------------------------- the PSF line stays
def test_the_psf_message_stays_when_the_calibration_cannot_estimate(docked, qtbot):
    viewer, widget = docked
    ramp = np.tile(np.linspace(0, 100, 64, dtype=np.float32), (64, 1))
    widget.input_combo.value = viewer.add_image(np.stack([ramp] * 5), name="ramp")
    widget.show_psf()
    psf_line = widget.status_label.text()
    assert psf_line.startswith("PSF: ")
    viewer.dims.set_point(0, 3)  # the user looks at another plane: estimated again
    qtbot.wait(3 * widget.calibration_panel.SETTLE_MS)
    assert "no noise" in widget.calibration_panel.label.text()
    assert widget.status_label.text() == psf_line


# ---------------------------------------------------------------- implausible gain
def test_an_image_already_in_photons_gets_a_warning_not_silence(docked, monkeypatch):
    shown = []
    monkeypatch.setattr("pkl_dg.napari.calibration_panel.show_warning", shown.append)
    viewer, widget = docked
    viewer.add_image(_restored_like(), name="cells [PKL]")
    widget.input_combo.value = viewer.layers["cells [PKL]"]
    cal = widget.calibration_panel.estimate_shown
    assert cal is not None and cal.gain > 1000
    # the numbers are the estimate, unchanged, and still the ones an 'auto' run uses
    assert widget.controls["gain"].value == pytest.approx(cal.gain)
    assert widget.controls["calibration"].value == "auto"
    label = widget.calibration_panel.label.text()
    assert "already in photons" in label and "gain 1 and offset 0" in label
    assert len(shown) == 1 and "already in photons" in shown[0]
    widget.calibration_panel.button.click()  # the same estimate again: no second warning
    assert len(shown) == 1


@pytest.mark.parametrize("metadata", [
    {"units": "photons", "method": "pkl"},  # a result in the viewer
    {"pkl_dg": {"units": "photons", "method": "pkl"}},  # saved and reopened (pkl-dg reader)
])
def test_a_layer_that_says_it_is_in_photons_gets_the_warning_whatever_its_gain(
        docked, monkeypatch, metadata):
    """A restoration of a large image can come out with a gain a camera might have (26.7
    e⁻/ADU on a 1024² W2S result): its metadata ("units": "photons") says what it is. A
    result saved and reopened keeps it under "pkl_dg", where the check did not look (a
    trial's reopened PKL result was estimated at gain 8.0 e⁻/ADU without a word)."""
    shown = []
    monkeypatch.setattr("pkl_dg.napari.calibration_panel.show_warning", shown.append)
    viewer, widget = docked
    layer = viewer.add_image(_camera_image().astype(np.float32), name="cells [PKL]",
                             metadata=metadata)
    widget.input_combo.value = layer
    assert widget.calibration_panel.estimate_shown.gain == pytest.approx(0.25, rel=0.15)
    label = widget.calibration_panel.label.text()
    assert "already in photons" in label and "gain 1 and offset 0" in label
    assert len(shown) == 1 and "metadata says so" in shown[0]


def test_a_camera_image_gets_no_gain_warning(docked, monkeypatch):
    shown = []
    monkeypatch.setattr("pkl_dg.napari.calibration_panel.show_warning", shown.append)
    viewer, widget = docked
    widget.input_combo.value = viewer.add_image(_camera_image(), name="camera")
    assert widget.calibration_panel.estimate_shown.gain == pytest.approx(0.25, rel=0.15)
    assert shown == []
    assert "already in photons" not in widget.calibration_panel.label.text()


def test_deleting_the_input_gives_no_toast_about_the_layer_picked_instead(docked, monkeypatch):
    """Deleting the input layer moves the widget to another layer by itself; a result layer
    in photons then got a calibration toast nobody asked for (a trial clearing its layer list
    saw 4). The panel's line still says it."""
    shown = []
    monkeypatch.setattr("pkl_dg.napari.calibration_panel.show_warning", shown.append)
    viewer, widget = docked
    result = viewer.add_image(_camera_image().astype(np.float32), name="cells [PKL]",
                              metadata={"units": "photons", "method": "pkl"})
    camera = viewer.add_image(_camera_image(), name="cells")
    widget.input_combo.value = camera
    shown.clear()  # the result, picked when it was the only layer, was said then
    viewer.layers.remove(camera)
    assert widget.input_combo.value is result
    assert "already in photons" in widget.calibration_panel.label.text()
    assert shown == []


def test_a_layer_with_a_nan_border_is_calibrated_and_restored(docked, qtbot):
    """A registered image's NaN border: the panel estimates on the measured pixels, the run
    leaves the border out and the result is NaN there (it was refused before)."""
    viewer, widget = docked
    image = _camera_image().astype(np.float32)
    image[:, :16] = np.nan
    widget.input_combo.value = viewer.add_image(image, name="registered")
    assert widget.calibration_panel.estimate_shown.gain == pytest.approx(0.25, rel=0.15)
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 3
    with qtbot.waitSignal(widget.run_finished, timeout=60000) as blocker:
        assert widget.run()
    assert blocker.args[0] == "done"
    out = widget.output_layer
    assert np.isnan(out.data[:, :16]).all() and np.isfinite(out.data[:, 16:]).all()
    assert out.metadata["missing"]["pixels"] == 128 * 16
    assert np.isfinite(out.contrast_limits).all()


def test_a_run_on_another_image_does_not_overwrite_the_selected_images_calibration(
        docked, qtbot):
    """A trial picked a second image while a run on the first went on: when the run ended,
    the fields took the first image's gain and offset (0.1181, 9.99 ADU) under the second's
    name (offset ≈ 2508 ADU), so one edit (which switches to 'manual') would have restored
    the second image with the first's calibration."""
    viewer, widget = docked
    first = viewer.add_image(_camera_image(gain=0.25, offset=400.0), name="first")
    second = viewer.add_image(_camera_image(gain=2.0, offset=100.0, seed=1), name="second")
    widget.input_combo.value = first
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 3
    with qtbot.waitSignal(widget.run_finished, timeout=60000) as blocker:
        assert widget.run()
        widget.input_combo.value = second  # while the run goes on
    assert blocker.args[0] == "done"
    assert widget.output_layer.metadata["calibration"]["gain"] == pytest.approx(0.25, rel=0.15)
    c = widget.controls
    assert widget.input_combo.value is second and c["calibration"].value == "auto"
    assert c["gain"].value == pytest.approx(2.0, rel=0.15)
    assert c["offset"].value == pytest.approx(100.0, abs=5)
    assert widget.calibration_panel.label.text().startswith("Estimated from 'second'")
