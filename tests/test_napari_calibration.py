"""The widget's photon calibration: the estimate shown, re-run on demand, edits → manual."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("napari_config_dir")]
PLUGIN, WIDGET = "napari-pkl-dg", "PKL Deconvolution"


def _camera_image(gain=0.25, offset=400.0, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    photons = 60 * np.exp(-((yy - 64) ** 2 + (xx - 50) ** 2) / 300.0) + 20 * (np.abs(xx - 90) < 2)
    return (offset + rng.poisson(photons + 1) / gain).astype(np.uint16)


def test_estimate_is_shown_editable_and_used(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    c = widget.controls
    assert c["calibration"].value == "auto"
    viewer.add_image(_camera_image(), name="camera")
    # the estimate ran on the new input and fills the fields
    assert c["gain"].value == pytest.approx(0.25, rel=0.15)
    assert c["offset"].value == pytest.approx(401.0 * 1.0, rel=0.02)
    label = widget.calibration_panel.label.text()
    assert label.startswith("Estimated from 'camera'") and "e⁻/ADU" in label
    # on demand: a new image in the same layer, Estimate again
    viewer.layers["camera"].data = _camera_image(gain=2.0, offset=100.0, seed=1)
    widget.calibration_panel.button.click()
    assert c["gain"].value == pytest.approx(2.0, rel=0.15)
    assert widget.current_state().settings.calibration == "auto"
    # a hand edit means: use my values
    c["gain"].value = 3.0
    assert c["calibration"].value == "manual"
    s = widget.current_state().settings
    assert (s.calibration, s.gain) == ("manual", 3.0)
    assert widget.calibration_panel.label.text().startswith("Manual")
    # back to auto: estimated again
    c["calibration"].value = "auto"
    assert c["gain"].value == pytest.approx(2.0, rel=0.15)


def test_estimate_failure_is_reported_not_raised(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    ramp = np.tile(np.linspace(0, 100, 64, dtype=np.float32), (64, 1))  # no noise at all
    viewer.add_image(ramp, name="ramp")
    assert widget.calibration_panel.estimate_shown is None
    assert "by hand" in widget.calibration_panel.label.text()


def test_normalised_float_layer_selected_when_the_widget_opens(make_napari_viewer):
    # a 16-bit camera image ÷ 65535 needs a gain of 65535 × 0.25 e⁻/ADU: shown, no error
    viewer = make_napari_viewer()
    viewer.add_image((_camera_image() / 65535.0).astype(np.float32), name="normalised")
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert widget.controls["gain"].value == pytest.approx(0.25 * 65535, rel=0.15)
    assert widget.calibration_panel.label.text().startswith("Estimated from 'normalised'")
    assert widget.current_state().settings.calibration == "auto"


def test_estimate_outside_the_fields_is_reported_not_clamped(make_napari_viewer,
                                                             monkeypatch):
    shown = []
    monkeypatch.setattr("pkl_dg.napari.calibration_panel.show_warning", shown.append)
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    before = {n: widget.controls[n].value for n in ("offset", "gain", "read_noise")}
    viewer.add_image((_camera_image() / 1e7).astype(np.float32), name="tiny")  # gain 2.5e6
    cal = widget.calibration_panel.estimate_shown
    assert cal is not None and cal.gain > widget.controls["gain"].max
    # nothing clamped: the fields keep their values, the estimate is said in full
    assert {n: widget.controls[n].value for n in before} == before
    assert widget.controls["calibration"].value == "auto"
    label = widget.calibration_panel.label.text()
    assert f"gain {cal.gain:.4g}" in label and "cannot show" in label
    assert len(shown) == 1 and "cannot show" in shown[0]


def test_estimate_shown_is_the_one_a_run_uses_on_a_saturated_image(make_napari_viewer):
    """A run leaves pixels clipped at the dtype maximum out of its calibration estimate; the
    panel shows the same estimate (it once fitted the clipped pixels too and showed another
    gain than the run used)."""
    from pkl_dg.inputs import resolve_calibration
    from pkl_dg.settings import RestoreSettings

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    img = np.clip(_camera_image(gain=0.2, offset=10.0).astype(np.float64), 0, 255)
    clipped = img.astype(np.uint8)
    assert (clipped == 255).sum() > 50
    viewer.add_image(clipped, name="clipped")
    shown = widget.calibration_panel.estimate_shown
    used = resolve_calibration(clipped, RestoreSettings())
    assert (shown.gain, shown.offset, shown.read_noise) == (used.gain, used.offset,
                                                            used.read_noise)
    from pkl_dg.calibration import estimate_calibration
    unmasked = estimate_calibration(clipped.astype(np.float64))
    assert unmasked.gain != used.gain  # the mask matters on this image


@pytest.mark.parametrize("read_noise", [0.0, 6.0])
def test_the_panel_says_when_the_read_noise_cannot_be_separated(read_noise):
    """Without read noise, pixels that saw no photons sit at the offset, and the fitted line's
    zero-photon level can fall just above them: the offset is then that level and the read
    noise 0, and the panel says why instead of a bare 0."""
    from pkl_dg.calibration import estimate_calibration
    from pkl_dg.napari.calibration_panel import describe

    rng = np.random.default_rng(1)
    photons = np.zeros((256, 256))
    photons[64:192, 64:192] = 200.0
    photons[:, 200:] = 20.0
    adu = 100.0 + (rng.poisson(photons) + rng.normal(0, read_noise, photons.shape)) / 2.0
    cal = estimate_calibration(adu)
    text = describe(cal, "cells")
    if read_noise == 0:
        assert cal.fit["offset_from"] == "noise fit" and cal.read_noise == 0
        assert "not separable" in text and cal.offset == pytest.approx(100, abs=0.5)
    else:
        assert cal.fit["offset_from"] == "dark level" and cal.read_noise > 3
        assert "not separable" not in text and f"read noise {cal.read_noise:.3g} e⁻" in text


def test_the_estimate_shown_follows_the_plane_and_mode_a_run_would_use(make_napari_viewer,
                                                                         qtbot):
    """With a stack, a run estimates on the plane it restores (2D: the one shown; 3D: the
    middle plane of the volume). The shown estimate used to stay that of the plane shown
    when the image was picked, so the fields showed values the run never used."""
    from pkl_dg.inputs import resolve_calibration
    from pkl_dg.settings import RestoreSettings

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    planes = [_camera_image(gain=g, offset=100.0, seed=i) for i, g in enumerate((0.5, 1.0, 2.0))]
    stack = np.stack(planes)
    viewer.add_image(stack, name="stack")
    panel, gain = widget.calibration_panel, widget.controls["gain"]
    viewer.dims.set_point(0, 0)
    qtbot.waitUntil(lambda: gain.value == pytest.approx(0.5, rel=0.15), timeout=5000)
    viewer.dims.set_point(0, 2)  # a run would restore plane 2 now
    qtbot.waitUntil(lambda: gain.value == pytest.approx(2.0, rel=0.15), timeout=5000)
    assert panel.estimate_shown.gain == resolve_calibration(planes[2], RestoreSettings()).gain
    widget.controls["mode"].value = "3d"  # a 3D run estimates on the volume's middle plane
    assert panel.estimate_shown.gain == resolve_calibration(stack, RestoreSettings()).gain
    assert gain.value == pytest.approx(1.0, rel=0.15)
