"""The "Compare methods" dock widget in a real viewer (needs a display: run under xvfb-run)."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import torch  # noqa: E402

from pkl_dg.compare import METRIC_COLUMNS as METRIC_KEYS  # noqa: E402
from pkl_dg.napari.compare_widget import CompareMethodsWidget  # noqa: E402

torch.set_num_threads(1)
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("napari_config_dir")]
PLUGIN, WIDGET = "napari-pkl-dg", "Compare methods"


class ZeroDenoiser(torch.nn.Module):
    def forward(self, x, t, *args, **kwargs):
        return torch.zeros_like(x)


@pytest.fixture
def viewer_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells")
    widget = CompareMethodsWidget(viewer)
    viewer.window.add_dock_widget(widget, name=WIDGET)
    widget.denoiser = ZeroDenoiser()
    widget.settings_overrides = {"steps": 2, "rl_iterations": 3, "samples": 1}
    widget.input_combo.setCurrentText("cells")
    yield viewer, widget
    if widget.is_running:
        widget.cancel()
        qtbot.waitUntil(lambda: not widget.is_running, timeout=30000)


def run_and_wait(qtbot, widget):
    with qtbot.waitSignal(widget.run_finished, timeout=120000) as blocker:
        assert widget.run()
    return blocker.args[0]


def test_compare_layers_metrics_csv_residual_grid(viewer_widget, qtbot, tmp_path):
    viewer, widget = viewer_widget
    for m, box in widget.method_boxes.items():
        box.setChecked(m in ("rl", "pkl"))
    widget.gt_combo.setCurrentText("cells ground truth")
    before = np.array(viewer.layers["cells"].data, copy=True)
    assert run_and_wait(qtbot, widget) == "done"
    names = [layer.name for layer in viewer.layers]
    assert "cells [compare: Richardson–Lucy]" in names and "cells [compare: PKL]" in names
    src = viewer.layers["cells"]
    for layer in widget.layers.values():
        assert layer.data.shape == before.shape
        np.testing.assert_allclose(layer.scale, src.scale)
        assert layer.units == src.units  # else napari warns and drops units for rendering
    np.testing.assert_array_equal(viewer.layers["cells"].data, before)
    assert widget.table.rowCount() == 3  # the input first: the baseline
    assert [r["method"] for r in widget.rows][0] == "input"
    assert set(widget.comparison.misfit) == {"rl", "pkl"}

    out = tmp_path / "m.csv"
    assert widget.export_csv(out)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 3 and {"psnr_db", "ssim", "nrmse", "frc_px"} <= set(rows[0])
    assert rows[0]["input"] == "cells" and rows[0]["ground_truth"]  # what it measured
    assert "PSF" in rows[0]["psf"] and rows[0]["settings"].startswith("{")

    res = widget.add_residual("pkl")
    assert res is not None and res.name == "cells [compare: PKL] residual"
    assert res.data.shape == before.shape and np.isfinite(res.data).all()
    assert res.units == src.units

    widget.grid_box.setChecked(True)
    assert widget.grid.enabled
    cl = {tuple(layer.contrast_limits) for layer in widget.layers.values()}
    assert len(cl) == 1
    widget.grid_box.setChecked(False)
    assert not widget.grid.enabled


def test_errors_are_notified_not_raised(viewer_widget, qtbot):
    _viewer, widget = viewer_widget
    for box in widget.method_boxes.values():
        box.setChecked(False)
    assert not widget.run()
    assert widget.add_residual("pkl") is None
    assert not widget.export_csv("nowhere.csv")


def test_cancel_stops_the_run(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    widget.settings_overrides = {"steps": 50, "rl_iterations": 3, "samples": 1}
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "pkl")
    with qtbot.waitSignal(widget.run_finished, timeout=120000) as blocker:
        assert widget.run()
        qtbot.waitUntil(lambda: "pkl" in widget.layers, timeout=60000)
        widget.cancel()
    assert blocker.args[0] == "cancelled"
    assert "cells [compare: PKL]" in [layer.name for layer in viewer.layers]


def test_manifest_entry_point_resolves():
    """The python_name a manifest entry would use imports to the widget class."""
    import importlib

    module, _, name = "pkl_dg.napari.compare_widget:CompareMethodsWidget".partition(":")
    assert getattr(importlib.import_module(module), name) is CompareMethodsWidget


def test_scoring_and_plot_failures_are_shown(viewer_widget, monkeypatch):
    """A ground truth of another shape and unplottable misfits reach the user as messages
    (the widget catches what these raise, nothing broader)."""
    from types import SimpleNamespace

    import pkl_dg.napari.compare_widget as cw
    from pkl_dg.compare import Comparison

    viewer, widget = viewer_widget
    shown = []
    monkeypatch.setattr(cw, "show_error", lambda msg: shown.append(("error", msg)))
    monkeypatch.setattr(cw, "show_warning", lambda msg: shown.append(("warning", msg)))
    widget.gt_combo.setCurrentText("cells ground truth")
    widget._settings = widget.run_inputs().state.settings
    widget._input = viewer.layers["cells"]
    widget.comparison = Comparison(results={"pkl": SimpleNamespace(image=np.ones((9, 9)))},
                                   misfit={"pkl": ["not a number", object()]})
    widget._update_metrics()
    widget._plot_misfit()
    assert [kind for kind, _ in shown] == ["error", "warning"]
    assert shown[0][1].startswith("Cannot score against 'cells ground truth'")
    assert shown[1][1].startswith("Misfit plot not drawn: TypeError")
    assert widget.rows == [] and widget.table.rowCount() == 0


def test_misfit_plot_without_matplotlib_says_so(qtbot, monkeypatch):
    import sys

    from pkl_dg.napari.misfit_plot import MisfitPlot

    plot = MisfitPlot()
    assert plot.draw({"pkl": [-1e8 + 3.0, None, -1e8 + 2.0], "rl": [None]}) is None
    (line,) = plot._figure.axes[0].lines  # steps without a readout are skipped
    # each value at its own step (it once drew the 3rd step's value at step 2), drawn above
    # the lowest misfit: the NLL's large offset made the axis unreadable
    assert list(line.get_xdata()) == [1, 3] and list(line.get_ydata()) == [1.0, 0.0]
    plot.draw({"pkl": [5.0, 4.0], "rl": [None, 7.0, None, 3.0]})
    lines = {ln.get_label(): ln for ln in plot._figure.axes[0].lines}
    assert list(lines["Richardson–Lucy"].get_xdata()) == [2, 4]
    assert list(lines["Richardson–Lucy"].get_ydata()) == [4.0, 0.0]
    assert list(lines["PKL"].get_ydata()) == [2.0, 1.0]
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_qtagg", None)
    missing = MisfitPlot()
    assert missing.canvas is None and "matplotlib" in missing.widget.text()
    assert missing.draw({"pkl": [1.0]}) is None


# ---------------------------------------------------------------- settings and PSF shared
@pytest.fixture
def core_calls(monkeypatch):
    """The arguments every comparison passes to the core's compare_iter."""
    import pkl_dg.napari.worker as worker

    calls = []
    real = worker.compare_iter

    def spy(image, methods, settings, **kwargs):
        calls.append({"settings": settings, **kwargs})
        return real(image, methods, settings, **kwargs)
    monkeypatch.setattr(worker, "compare_iter", spy)
    return calls


def _beads(n=96):
    beads = np.full((n, n), 10.0, np.float32)
    yy, xx = np.mgrid[0:n, 0:n]
    for y, x in ((25, 25), (25, 70), (70, 48)):
        beads += 500 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.3 ** 2))
    return beads


def _operator_psf(call) -> np.ndarray:
    return call["operator"].psf.numpy().astype(np.float32)


def test_compare_uses_the_psf_chosen_in_the_main_widget(viewer_widget, qtbot, core_calls,
                                                        tmp_path, notes):
    """A PSF layer, a bead image and a PSF file chosen in the PKL Deconvolution widget are
    what Compare hands the core: one PSF built from the same array, and the same PSF as the
    main widget's 'Show PSF' builds."""
    from pkl_dg.napari.psf_sources import psf_from_beads
    from pkl_dg.physics import gaussian_psf
    from pkl_dg.psf_source import psf_from_settings

    viewer, widget = viewer_widget
    _dock, main = viewer.window.add_plugin_dock_widget(PLUGIN, "PKL Deconvolution")
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    measured = gaussian_psf(1.2, 2.6)  # not the default σ = 2 px
    viewer.add_image(measured, name="measured PSF")
    viewer.add_image(_beads(), name="beads")
    np.save(tmp_path / "psf.npy", measured)

    main.psf_source.value = "layer"
    main.psf_layer_combo.value = viewer.layers["measured PSF"]
    main.input_combo.value = viewer.layers["cells"]
    assert run_and_wait(qtbot, widget) == "done"
    call = core_calls[-1]
    assert call["settings"].psf_kind == "array" and call["psf"].source == "array"
    np.testing.assert_array_equal(call["psf"].kernel,
                                  psf_from_settings(call["settings"], None, measured).kernel)
    shown = main.show_psf()
    np.testing.assert_allclose(_operator_psf(call), shown.data, rtol=1e-6, atol=1e-9)
    metadata = widget.comparison.results["rl"].metadata
    assert metadata["napari"]["psf_layer"] == "measured PSF"
    assert widget.add_residual("rl") is not None  # the residual's forward model: same PSF

    main.psf_source.value = "beads"
    main.bead_layer_combo.value = viewer.layers["beads"]
    main.bead_box.value = 21
    assert run_and_wait(qtbot, widget) == "done"
    expected, n_beads = psf_from_beads(viewer.layers["beads"].data, 21, "bead layer 'beads'")
    np.testing.assert_array_equal(core_calls[-1]["psf"].kernel, psf_from_settings(
        core_calls[-1]["settings"], None, expected).kernel)
    assert widget.comparison.results["rl"].metadata["napari"]["psf_beads_used"] == n_beads == 3
    np.testing.assert_allclose(_operator_psf(core_calls[-1]), main.show_psf().data,
                               rtol=1e-6, atol=1e-9)

    main.psf_source.value = "file"
    main.controls["psf_path"].line_edit.value = str(tmp_path / "psf.npy")
    assert run_and_wait(qtbot, widget) == "done"
    call = core_calls[-1]
    assert call["settings"].psf_kind == "file"
    assert call["psf"].source == f"file {tmp_path / 'psf.npy'}"
    assert call["settings"].psf_path == str(tmp_path / "psf.npy")
    np.testing.assert_allclose(_operator_psf(call), main.show_psf().data, rtol=1e-6, atol=1e-9)
    assert "default settings" not in widget.status_label.text()
    assert not [n for n in notes if "ERROR" in n[0].upper() or "not open" in n[1]]


def test_compare_without_the_main_widget_says_it_uses_the_defaults(viewer_widget, qtbot,
                                                                   core_calls, notes):
    """No PKL Deconvolution widget in this viewer (never opened, or closed): the defaults,
    and the user is told so in a notification and in the status line."""
    from pkl_dg.settings import RestoreSettings

    viewer, widget = viewer_widget
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    assert run_and_wait(qtbot, widget) == "done"
    assert core_calls[-1]["psf"].source == "gaussian"
    assert core_calls[-1]["settings"].psf_sigma == RestoreSettings().psf_sigma
    assert any("WARNING" in sev.upper() and "not open" in msg for sev, msg in notes)
    assert "default settings" in widget.status_label.text()

    viewer.layers.selection.active = viewer.layers["cells"]  # the main widget's input
    dock, main = viewer.window.add_plugin_dock_widget(PLUGIN, "PKL Deconvolution")
    main.controls["psf_sigma"].value = 1.3
    assert run_and_wait(qtbot, widget) == "done"
    assert core_calls[-1]["settings"].psf_sigma == pytest.approx(1.3)
    notes.clear()
    viewer.window.remove_dock_widget(dock)
    assert run_and_wait(qtbot, widget) == "done"
    assert core_calls[-1]["settings"].psf_sigma == RestoreSettings().psf_sigma
    assert any("not open" in msg for _sev, msg in notes)


def test_a_comparison_keeps_the_main_widgets_result(viewer_widget, qtbot):
    """Compare used to name its PKL layer as the PKL Deconvolution widget names its output,
    and replaced it: the user's restored layer and its std layer went. A second comparison
    replaces only the first comparison's layers."""
    viewer, widget = viewer_widget
    _dock, main = viewer.window.add_plugin_dock_widget(PLUGIN, "PKL Deconvolution")
    main.model_cache.put("", "auto", ZeroDenoiser())
    main.input_combo.value = viewer.layers["cells"]
    main.controls["steps"].value = 2
    main.controls["samples"].value = 2
    with qtbot.waitSignal(main.run_finished, timeout=120000) as blocker:
        assert main.run()
    assert blocker.args[0] == "done"
    restored = np.array(viewer.layers["cells [PKL]"].data, copy=True)
    assert "cells [PKL] std" in viewer.layers
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "pkl")
    for _ in range(2):
        assert run_and_wait(qtbot, widget) == "done"
        names = [layer.name for layer in viewer.layers]
        assert names.count("cells [compare: PKL]") == 1 and len(names) == len(set(names))
        assert "cells [PKL] std" in names
        np.testing.assert_array_equal(viewer.layers["cells [PKL]"].data, restored)
    assert main.output_layer.name == "cells [PKL]"  # still the widget's output


def test_a_stack_is_compared_on_its_displayed_plane(viewer_widget, qtbot):
    """Compare used to refuse every Z-stack ("works on 2D images"): it now compares the
    plane shown in the viewer, scores it against the same plane of a ground-truth stack and
    says which plane it was. Its result and residual layers sit at that plane, named with
    it, as the PKL Deconvolution widget's plane outputs (they were 2D layers at the origin,
    shown on every plane)."""
    viewer, widget = viewer_widget
    cells, gt = viewer.layers["cells"].data, viewer.layers["cells ground truth"].data
    stack = viewer.add_image(np.stack([cells, cells, cells[:, ::-1]]).astype(np.float32),
                             name="stack", scale=(0.3, 0.1, 0.1), translate=(1.0, 0, 0))
    viewer.add_image(np.stack([gt, gt, gt]).astype(np.float32), name="gt stack")
    viewer.dims.set_point(0, 1.0 + 1 * 0.3)  # world Z of plane 1
    widget.input_combo.setCurrentText("stack")
    widget.gt_combo.setCurrentText("gt stack")
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    before = np.array(stack.data, copy=True)
    assert run_and_wait(qtbot, widget) == "done"
    out = widget.layers["rl"]
    assert out.name == "stack [compare: Richardson–Lucy] @1"
    assert out.data.shape == (1, *cells.shape)
    np.testing.assert_allclose(out.scale, stack.scale)
    np.testing.assert_allclose(out.translate, (1.0 + 0.3, 0, 0))
    assert out.metadata["napari"]["input_layer"] == "stack"
    assert out.metadata["napari"]["plane"] == [1]
    assert widget.table.rowCount() == 2  # input and RL, against plane 1 of the truth stack
    np.testing.assert_array_equal(stack.data, before)
    res = widget.add_residual("rl")
    assert res.name == "stack [compare: Richardson–Lucy] @1 residual"
    assert res.data.shape == (1, *cells.shape)
    np.testing.assert_allclose(res.translate, out.translate)
    plane1 = widget.comparison.results["rl"].image
    viewer.dims.set_point(0, 1.0 + 2 * 0.3)
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.layers["rl"].metadata["napari"]["plane"] == [2]
    assert widget.layers["rl"].name.endswith("@2")
    assert "stack [compare: Richardson–Lucy] @1" in viewer.layers  # another plane's: kept
    plane2 = widget.comparison.results["rl"].image  # plane 2 is plane 1 mirrored
    assert np.corrcoef(plane2.ravel(), plane1[:, ::-1].ravel())[0, 1] > 0.99
    assert np.corrcoef(plane2.ravel(), plane1.ravel())[0, 1] < 0.9


# ---------------------------------------------------------------- trial findings (helper3)
def _camera(gain=0.4, offset=100.0):
    """The cells sample's object, blurred (σ 2 px), Poisson, in ADU: offset + e⁻ / gain."""
    from pkl_dg.napari.sample_data import make_sample

    y, gt, _ = make_sample((64, 64))
    adu = offset + y.astype(np.float32) / gain
    return adu.astype(np.float32), gt


def test_the_residual_uses_the_calibration_the_run_estimated(viewer_widget, qtbot):
    """With the default calibration ('auto') the residual took the settings' offset 0 and
    gain 1: ADU against photon predictions (W2S: mean 223, std 948). It now uses the
    calibration, background and PSF the run used: about N(0, 1)."""
    viewer, widget = viewer_widget
    adu, _ = _camera()
    viewer.add_image(adu, name="camera")
    widget.input_combo.setCurrentText("camera")
    widget.settings_overrides = {"rl_iterations": 0, "samples": 1}  # RL's automatic count
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.comparison.results["rl"].metadata["calibration"]["source"] == "estimated"
    res = widget.add_residual("rl")
    assert abs(float(res.data.mean())) < 0.3 and abs(float(res.data.std()) - 1) < 0.3
    assert res.metadata["calibration"] == \
        widget.comparison.results["rl"].metadata["calibration"]


def test_the_frc_in_nm_uses_the_layers_pixel_size_or_none(viewer_widget, qtbot):
    """The FRC in nm took the settings' 65 nm whatever the layer said (an OME layer at
    0.13 µm got half its resolution in nm), and gave one for images stating no pixel size.
    Now: the layer's own pixel size, a typed one, or nothing."""
    viewer, widget = viewer_widget
    cells = viewer.layers["cells"].data
    viewer.add_image(cells, name="at 130 nm", scale=(0.13, 0.13), units=("um", "um"))
    viewer.add_image(cells, name="no pixel size")
    widget.gt_combo.setCurrentText("cells ground truth")
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    frc_nm = METRIC_KEYS.index("frc_nm")

    widget.input_combo.setCurrentText("at 130 nm")
    assert run_and_wait(qtbot, widget) == "done"
    (_input, row) = widget.rows
    assert row["frc_nm"] == pytest.approx(row["frc_px"] * 130.0, rel=1e-6)
    assert "130 nm" in widget.frc_note.text()

    widget.input_combo.setCurrentText("no pixel size")
    assert run_and_wait(qtbot, widget) == "done"
    (_input, row) = widget.rows
    assert row["frc_nm"] is None and widget.table.item(1, frc_nm).text() == ""
    assert "states no pixel size" in widget.frc_note.text()

    widget.pixel_size.setValue(80.0)  # typed: the table follows at once
    assert widget.rows[1]["frc_nm"] == pytest.approx(widget.rows[1]["frc_px"] * 80.0)
    assert widget.table.item(1, frc_nm).text() != "" and "typed" in widget.frc_note.text()


def test_an_integer_image_keeps_its_dtype_for_the_saturation_check(viewer_widget, qtbot):
    """Compare converted the plane to float32: the saturation check lost the uint8 maximum
    and found only plateaus at the image maximum (W2S crop: 84 pixels, not 386). It finds
    what a single run finds."""
    from pkl_dg import restore_iter

    viewer, widget = viewer_widget
    rng = np.random.default_rng(0)
    img = np.clip(rng.poisson(np.full((64, 64), 200.0)), 0, 255).astype(np.uint8)
    img[20:24, 20:24] = 255  # a clipped spot besides the noise's isolated 255s
    viewer.add_image(img, name="clipped")
    widget.input_combo.setCurrentText("clipped")
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    assert run_and_wait(qtbot, widget) == "done"
    got = widget.comparison.results["rl"].metadata["saturated"]
    single = restore_iter(img, widget.comparison.results["rl"].settings).finish()
    assert got == single.metadata["saturated"]
    assert got["pixels"] == int((img == 255).sum()) and got["reason"] == "dtype maximum"


def test_a_cancelled_comparison_leaves_no_old_results_beside_its_new_ones(viewer_widget,
                                                                          qtbot):
    """A cancelled comparison left the previous comparison's layers of other methods
    (and their residuals) beside its partial ones, indistinguishable, and the old misfit
    curves. Earlier layers of this input and plane go when a comparison's first frame
    arrives (its start clears the misfit curves); each layer says its status."""
    viewer, widget = viewer_widget
    for m, box in widget.method_boxes.items():
        box.setChecked(m in ("rl", "pkl"))
    assert run_and_wait(qtbot, widget) == "done"
    assert {layer.metadata["status"] for layer in widget.layers.values()} == {"done"}
    widget.add_residual("pkl")
    assert "cells [compare: PKL] residual" in viewer.layers
    axes = widget.misfit_plot.canvas.figure.axes
    assert axes and axes[0].lines

    widget.settings_overrides = {"steps": 50, "rl_iterations": 3, "samples": 1}
    for m, box in widget.method_boxes.items():
        box.setChecked(m in ("rl", "pkl"))
    old_pkl = viewer.layers["cells [compare: PKL]"]
    assert old_pkl in viewer.layers
    with qtbot.waitSignal(widget.run_finished, timeout=120000) as blocker:
        assert widget.run()
        assert not widget.misfit_plot.canvas.figure.axes[0].lines
        qtbot.waitUntil(lambda: "rl" in widget.layers, timeout=60000)  # the first frame
        assert old_pkl not in viewer.layers  # the old PKL result went
        assert "cells [compare: PKL] residual" not in viewer.layers
        qtbot.waitUntil(lambda: "pkl" in widget.layers, timeout=60000)
        widget.cancel()
    assert blocker.args[0] == "cancelled"
    rl, pkl = widget.layers["rl"].metadata, widget.layers["pkl"].metadata
    assert rl["status"] == "done" and rl["steps_completed"] == 3
    # the finished method keeps its run's metadata (it had "done" and a step count only)
    assert rl["calibration"]["source"] == "estimated" and rl["psf"] and rl["settings"]
    assert pkl["status"] == "cancelled" and 1 <= pkl["steps_completed"] < pkl["steps_total"]
    assert pkl["settings"]["method"] == "pkl"
    assert "PKL holds its last estimate" in widget.status_label.text()
    assert widget.table.rowCount() == 0  # no ground truth chosen: nothing to score

    # with a ground truth, the method that finished before the cancel is scored (its
    # layer stayed, but the table and CSV were empty)
    widget.gt_combo.setCurrentText("cells ground truth")
    with qtbot.waitSignal(widget.run_finished, timeout=120000) as blocker:
        assert widget.run()
        qtbot.waitUntil(lambda: "pkl" in widget.layers, timeout=60000)
        widget.cancel()
    assert blocker.args[0] == "cancelled"
    assert [r["method"] for r in widget.rows] == ["input", "Richardson–Lucy"]
    assert widget.table.rowCount() == 2 and widget.export_button.isEnabled()


def test_a_failed_comparison_marks_the_running_methods_layer(viewer_widget, qtbot,
                                                             monkeypatch):
    import pkl_dg.napari.worker as worker
    from pkl_dg.compare import CompareRun

    real = worker.compare_iter

    def failing(*args, **kwargs):
        def frames():
            for i, frame in enumerate(real(*args, **kwargs)):
                if i == 2:
                    raise ValueError("the PSF file changed on disk")
                yield frame
        return CompareRun(frames())
    monkeypatch.setattr(worker, "compare_iter", failing)
    _viewer, widget = viewer_widget
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    assert run_and_wait(qtbot, widget) == "failed"
    meta = widget.layers["rl"].metadata
    assert meta["status"] == "failed" and meta["error"] == "the PSF file changed on disk"
    assert meta["steps_completed"] == 2


def test_the_table_shows_every_row_with_readable_headers(viewer_widget):
    """The table showed one row at a time under raw keys (psnr_db, frc_px…)."""
    _viewer, widget = viewer_widget
    table = widget.table
    headers = [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]
    assert headers == ["method", "PSNR (dB)", "SSIM", "NRMSE", "FRC (px)", "FRC (nm)",
                       "time (s)"]
    # the time is the viewer's, live display included (the trial read RL 4.1 s against
    # PKL 3.8 s on 256²; alone RL takes 0.2 s): the header says so
    assert "live display included" in table.horizontalHeaderItem(6).toolTip()
    # every metric says how it is computed (a trial found only FRC (nm) and time explained)
    tips = [table.horizontalHeaderItem(j).toolTip() for j in (1, 2, 3, 4)]
    assert "CARE protocol" in tips[0] and "a·x + b" in tips[0]
    assert all(tips) and "1/7" in tips[3]
    rows = [{"method": label, "psnr_db": 25.123, "ssim": 0.81234, "nrmse": 0.3, "frc_px": 2.0,
             "frc_nm": 130.0, "seconds": 2.5} for label in
            ("Richardson–Lucy", "L2", "Anscombe + L2", "PKL (Poisson KL)", "Unguided prior")]
    table.show_rows(rows)
    shown = table.height() - table.horizontalHeader().height()
    assert shown >= table.verticalHeader().length()  # all five rows, no vertical scrolling
    assert table.item(3, 0).text() == "PKL" and table.item(0, 1).text() == "25.12"
    # the unguided prior resolves nothing (FRC inf): the table said "inf"
    table.show_rows([{**rows[0], "frc_px": float("inf"), "frc_nm": float("inf")}])
    assert table.item(0, 4).text() == table.item(0, 5).text() == "none"
    assert "Not resolved" in table.item(0, 4).toolTip()


def test_the_time_left_for_the_methods_still_to_come():
    """The status gave the running method's time left only (three more methods: the run
    took several times what it said); now the diffusion methods still to come are counted
    as long as those timed so far, RL as negligible."""
    from pkl_dg.napari.compare_view import later_seconds

    # RL running first: nothing timed that says what a diffusion method takes
    assert later_seconds("rl", 0.5, {}, ["l2", "anscombe", "pkl"]) is None
    # L2 running, projected 5 s: Anscombe and PKL as long
    assert later_seconds("l2", 5.0, {"rl": 0.8}, ["anscombe", "pkl"]) == pytest.approx(10.0)
    # PKL running: the mean of L2, Anscombe and PKL's projection, for the unguided prior
    assert later_seconds("pkl", 3.0, {"rl": 0.8, "l2": 4.0, "anscombe": 5.0},
                         ["none"]) == pytest.approx(4.0)
    assert later_seconds("pkl", 3.0, {"l2": 4.0}, []) is None  # the last method
    assert later_seconds("l2", 4.0, {}, ["rl"]) is None  # only RL to come


class SlowZeroDenoiser(ZeroDenoiser):
    def forward(self, x, t, *args, **kwargs):
        time.sleep(0.03)  # several displayed frames per method (the display is throttled)
        return torch.zeros_like(x)


def test_the_status_gives_the_time_until_every_method_is_done(viewer_widget, qtbot):
    _viewer, widget = viewer_widget
    widget.denoiser = SlowZeroDenoiser()
    widget.settings_overrides = {"steps": 12, "rl_iterations": 3, "samples": 1}
    for m, box in widget.method_boxes.items():
        box.setChecked(m in ("rl", "l2", "pkl"))
    texts = []
    widget.runner.frame_shown.connect(lambda _i: texts.append(widget.status_label.text()))
    assert run_and_wait(qtbot, widget) == "done"
    during_l2 = [t for t in texts if "method 2 of 3, L2: step" in t]
    assert any("all done in ≈" in t for t in during_l2), texts
    assert not any("all done in" in t for t in texts if "method 3 of 3" in t)


def test_the_status_says_which_method_of_how_many_runs(viewer_widget, qtbot):
    """A comparison runs its methods one after the other: the status names the running one
    and its place ("method 2 of 2, PKL: step …"); L2 and Anscombe say they are slow."""
    _viewer, widget = viewer_widget
    for m, box in widget.method_boxes.items():
        box.setChecked(m in ("rl", "pkl"))
    texts = []
    widget.runner.frame_shown.connect(lambda _i: texts.append(widget.status_label.text()))
    assert run_and_wait(qtbot, widget) == "done"
    assert any("method 1 of 2, Richardson–Lucy:" in t for t in texts), texts
    assert not any("all done in" in t for t in texts), texts  # PKL, the last, says its own
    # the last method's frames may all fall within the display's throttle: ask the view
    from types import SimpleNamespace

    frame = SimpleNamespace(method="pkl", record=SimpleNamespace(index=1, total=2))
    assert widget._view.progress(frame) == (1, 2, "method 2 of 2, PKL:")
    for m in ("l2", "anscombe"):
        assert "slower than PKL" in widget.method_boxes[m].toolTip()
    assert "slower" not in widget.method_boxes["pkl"].toolTip()


def test_the_pickers_follow_a_renamed_layer(viewer_widget, qtbot):
    """A trial renamed its input and ground-truth layers after a comparison: the pickers kept
    the old names, 'Run compare' said 'Pick an image layer to compare methods on.' with the
    image shown as picked, and the ground truth was no longer scored, without a word."""
    viewer, widget = viewer_widget
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    widget.gt_combo.setCurrentText("cells ground truth")
    viewer.layers["cells"].name = "field 1"
    viewer.layers["cells ground truth"].name = "field 1 SIM"
    assert widget.input_combo.currentText() == "field 1"
    assert widget.gt_combo.currentText() == "field 1 SIM"
    assert run_and_wait(qtbot, widget) == "done"
    assert [r["method"] for r in widget.rows] == ["input", "Richardson–Lucy"]


def test_the_image_picked_at_opening_is_the_selected_layer(make_napari_viewer):
    """A trial opened the sample (ground truth, PSF, image) and then Compare methods: its
    Image picker showed the first layer, the ground truth, so 'Run compare' compared the
    methods on the ground truth. It now starts on the selected image layer, as the PKL
    Deconvolution widget does."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells")
    assert [layer.name for layer in viewer.layers][0] == "cells ground truth"
    viewer.layers.selection.active = viewer.layers["cells"]
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert widget.input_combo.currentText() == "cells"
    assert widget.gt_combo.currentText() == "(none)"


def test_a_comparison_that_fails_before_its_first_frame_keeps_the_earlier_results(
        viewer_widget, qtbot, tmp_path):
    """A trial pointed the PKL widget at an unreadable PSF file and pressed 'Run compare'
    again: the comparison failed before any method ran, and the finished results of the
    earlier one were gone (removed when the new one started). Earlier layers now go when
    the new comparison's first result arrives."""
    viewer, widget = viewer_widget
    _dock, main = viewer.window.add_plugin_dock_widget(PLUGIN, "PKL Deconvolution")
    main.input_combo.value = viewer.layers["cells"]
    for m, box in widget.method_boxes.items():
        box.setChecked(m in ("rl", "pkl"))
    assert run_and_wait(qtbot, widget) == "done"
    names = ["cells [compare: Richardson–Lucy]", "cells [compare: PKL]"]
    kept = {name: np.array(viewer.layers[name].data) for name in names}
    bad = tmp_path / "psf.tif"
    bad.write_text("not a TIFF")
    main.psf_source.value = "file"
    main.controls["psf_path"].value = str(bad)
    assert run_and_wait(qtbot, widget) == "failed"
    assert "not a TIFF" in widget.status_label.text()
    for name in names:
        assert viewer.layers[name].metadata["status"] == "done"
        np.testing.assert_array_equal(viewer.layers[name].data, kept[name])

    main.psf_source.value = "gaussian"  # a comparison that runs replaces them
    widget.method_boxes["pkl"].setChecked(False)
    assert run_and_wait(qtbot, widget) == "done"
    assert names[0] in viewer.layers and names[1] not in viewer.layers


def _cancel_during_pkl(widget, qtbot) -> str:
    """Compare RL and PKL (50 steps) and cancel once PKL has streamed a frame; the status
    the run ended with."""
    widget.settings_overrides = {"steps": 50, "rl_iterations": 3, "samples": 1}
    for m, box in widget.method_boxes.items():
        box.setChecked(m in ("rl", "pkl"))
    with qtbot.waitSignal(widget.run_finished, timeout=120000) as blocker:
        assert widget.run()
        qtbot.waitUntil(lambda: "pkl" in widget.layers, timeout=60000)
        widget.cancel()
    return blocker.args[0]


def test_a_cancelled_comparison_counts_the_steps_of_the_method_it_stopped(viewer_widget,
                                                                          qtbot):
    """A trial cancelled PKL after Richardson–Lucy's 465 iterations: the bar read 'cancelled
    at step 469/13' and the status 'Cancelled after 469 step(s)', every method's frames
    counted against the last method's total. Both now name the method and its own step."""
    import re

    viewer, widget = viewer_widget
    assert _cancel_during_pkl(widget, qtbot) == "cancelled"
    pkl = widget.layers["pkl"].metadata
    found = re.fullmatch(r"cancelled at method 2 of 2, PKL: step (\d+)/(\d+)",
                         widget.progress.format())
    assert found, widget.progress.format()
    step, total = map(int, found.groups())
    assert total == pkl["steps_total"] and pkl["steps_completed"] <= step <= total
    assert widget.status_label.text().startswith(
        f"Cancelled at method 2 of 2, PKL: step {step}/{total}; PKL holds its last estimate")


def test_the_residual_of_a_cancelled_comparison_says_why_there_is_none(viewer_widget,
                                                                       qtbot, monkeypatch):
    """After a cancelled comparison the residual picker is empty (residuals need the
    finished comparison's PSF) but the button stays: pressing it said 'No result for method
    None.'"""
    shown = []
    monkeypatch.setattr("pkl_dg.napari.compare_widget.show_error", shown.append)
    viewer, widget = viewer_widget
    assert _cancel_during_pkl(widget, qtbot) == "cancelled" and widget.residual_combo.count() == 0
    n_layers = len(viewer.layers)
    assert widget.add_residual() is None and len(viewer.layers) == n_layers
    assert len(shown) == 1 and "None" not in shown[0]
    assert "cancelled" in shown[0] and "run the comparison to the end" in shown[0]


def test_picking_the_ground_truth_after_a_comparison_scores_it(viewer_widget, qtbot):
    """A trial ran a comparison, then picked the ground truth: the table stayed empty until
    the whole comparison was run again (only the pixel size field re-scored it); setting
    '(none)' again left the old scores up."""
    viewer, widget = viewer_widget
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.table.rowCount() == 0 and not widget.export_button.isEnabled()
    widget.gt_combo.setCurrentText("cells ground truth")
    assert [r["method"] for r in widget.rows] == ["input", "Richardson–Lucy"]
    assert widget.table.rowCount() == 2 and widget.export_button.isEnabled()
    widget.gt_combo.setCurrentText("(none)")
    assert widget.rows == [] and widget.table.rowCount() == 0
    assert not widget.export_button.isEnabled() and widget.frc_note.text() == ""


def test_an_image_at_another_pixel_size_is_compared_at_its_own(viewer_widget, qtbot):
    """A trial compared an image at 130 nm pixels (its scale says so) while the PKL widget
    had another image at 65 nm: the Airy PSF was computed for 65 nm pixels (twice too wide)
    without a word. The compared image's own pixel size is used; the PKL widget's own
    input keeps the widget's 'Pixel size' field."""
    viewer, widget = viewer_widget
    cells = viewer.layers["cells"]
    coarse = viewer.add_image(np.array(cells.data), name="coarse", scale=(0.13, 0.13),
                              units=("um", "um"))
    _dock, main = viewer.window.add_plugin_dock_widget(PLUGIN, "PKL Deconvolution")
    main.input_combo.value = cells
    main.psf_source.value = "airy"
    assert main.controls["pixel_size_nm"].value == pytest.approx(65.0)
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    widget.input_combo.setCurrentText("coarse")
    assert run_and_wait(qtbot, widget) == "done"
    psf = widget.comparison.results["rl"].metadata["psf"]
    assert psf["spacing_nm"] == pytest.approx([130.0, 130.0])
    assert widget.comparison.results["rl"].metadata["settings"]["pixel_size_nm"] == 130.0

    main.controls["pixel_size_nm"].value = 70.0  # typed for the PKL widget's own input
    widget.input_combo.setCurrentText("cells")
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.comparison.results["rl"].metadata["psf"]["spacing_nm"] == pytest.approx(
        [70.0, 70.0])
    assert coarse in viewer.layers


def test_opened_after_a_pkl_run_it_picks_that_runs_image_not_its_result(make_napari_viewer):
    """A trial ran the PKL widget, then opened Compare methods: the picker took the selected
    layer, the PKL result (napari selects a new layer), so 'Run compare' would have
    compared methods on a restored image. With the PKL widget open, Compare opens on that
    widget's image, whose settings and PSF it runs with."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells")
    _dock, main = viewer.window.add_plugin_dock_widget(PLUGIN, "PKL Deconvolution")
    main.input_combo.value = viewer.layers["cells"]
    viewer.add_image(np.array(viewer.layers["cells"].data, dtype=np.float32),
                     name="cells [PKL]", metadata={"units": "photons"})
    assert viewer.layers.selection.active.name == "cells [PKL]"
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert widget.input_combo.currentText() == "cells"


def test_a_registered_image_with_a_nan_border_is_compared_scored_and_explained(
        viewer_widget, qtbot):
    """A trial's list: Compare refused NaN pixels (scoring failed with an SVD error) though
    the PKL widget restores them. Now: restored, scored on the measured rectangle (the
    note says which) and the residual is NaN only where μ needs unmeasured pixels."""
    viewer, widget = viewer_widget
    data = np.array(viewer.layers["cells"].data, dtype=np.float32)
    data[:, :8] = np.nan
    viewer.add_image(data, name="registered")
    widget.input_combo.setCurrentText("registered")
    widget.gt_combo.setCurrentText("cells ground truth")
    for m, box in widget.method_boxes.items():
        box.setChecked(m == "rl")
    assert run_and_wait(qtbot, widget) == "done"
    assert [r["method"] for r in widget.rows] == ["input", "Richardson–Lucy"]
    assert all(np.isfinite(r["psnr_db"]) for r in widget.rows)
    assert "Scored on rows 0–" in widget.frc_note.text()
    assert "columns 8–" in widget.frc_note.text()
    res = widget.add_residual("rl")
    assert res is not None
    assert np.isnan(res.data[:, :8]).all() and np.isfinite(res.data[:, 30:]).all()
