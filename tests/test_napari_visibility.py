"""The dock widget shows a settings control exactly where the schema says its field applies
(:func:`pkl_dg.settings.applies`), for every method, step rule, PSF source, mode and
calibration."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from pkl_dg.napari.state import PSF_SOURCES  # noqa: E402
from pkl_dg.settings import CALIBRATIONS, CAMERA_FIELDS, METHODS, MODES, STEP_RULES
from pkl_dg.settings_rules import applies

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("napari_config_dir")]
PLUGIN, WIDGET = "napari-pkl-dg", "PKL Deconvolution"


def test_visibility_is_the_schema_applies(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    c = widget.controls
    checked = 0
    for method, rule, source, mode, cal in itertools.product(
            METHODS, STEP_RULES, PSF_SOURCES, MODES, CALIBRATIONS):
        c["method"].value, c["step_rule"].value, c["mode"].value = method, rule, mode
        c["calibration"].value = cal
        widget.psf_source.value = source
        settings = widget.current_state().settings
        for name, ctrl in c.items():
            # the camera fields show the estimate a run makes when calibration is 'auto'
            expected = applies(name, settings) or name in CAMERA_FIELDS
            assert (not ctrl.native.isHidden()) == expected, (name, method, rule, source,
                                                              mode, cal)
            checked += 1
    assert checked > 1000
    # the widget's own PSF controls follow "PSF from"
    widget.psf_source.value = "beads"
    assert not widget.bead_layer_combo.native.isHidden()
    assert widget.psf_layer_combo.native.isHidden()
    assert widget.current_state().settings.psf_kind == "array"
