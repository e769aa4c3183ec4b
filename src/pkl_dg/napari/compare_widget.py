"""The "Compare methods" dock widget: one input, several methods, one layer per method.

Runs :func:`pkl_dg.napari.worker.comparison_frames` (around
:func:`pkl_dg.compare.compare_iter`) through the same
:class:`~pkl_dg.napari.run_controller.RunController` as the PKL Deconvolution widget
(worker thread, progress bar, status line, cancel within one convolution), streams every
method into its own layer (:class:`~pkl_dg.napari.compare_view.CompareView`, at the
compared plane of a stack; a new comparison's first frame removes what an earlier one left
for that input and plane), scores the results against an optional ground-truth layer
(:mod:`pkl_dg.napari.compare_table`; the FRC in nm for the pixel size typed in or stated by
the image, none otherwise), and shows Pearson residual maps computed with the forward model
each run used (calibration, background, PSF). The input layer is only ever copied, with
its data type (an integer image's saturated pixels are found as a single run finds them).

Settings and PSF: those the PKL Deconvolution widget open in the same viewer has at the
moment Compare runs (:mod:`pkl_dg.napari.shared_state`), so a PSF taken from an image
layer, extracted from beads, read from a file or computed is the PSF every compared method
uses. When that widget is not open, Compare runs with the default settings and says so
(notification and status line).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout,
                            QLabel, QPushButton, QVBoxLayout, QWidget)

from pkl_dg.compare import (Comparison, csv_context, metrics_table, result_residual,
                            write_csv)
from pkl_dg.napari import shared_state
from pkl_dg.napari.caches import release_freed_memory
from pkl_dg.napari.compare_table import MetricsTable, frc_pixel_size, pixel_size_field
from pkl_dg.napari.compare_view import (CompareView, link_contrast, own_pixel_size,
                                         show_residual)
from pkl_dg.napari.controls import fit_layer_names, short_method_label
from pkl_dg.napari.layer_input import full_resolution, selected_block
from pkl_dg.napari.layer_pickers import pick_active, picked, refill
from pkl_dg.napari.misfit_plot import MisfitPlot
from pkl_dg.napari.psf_sources import describe_psf
from pkl_dg.napari.run_controller import RunController, progress_widgets
from pkl_dg.napari.shared_state import RunInputs
from pkl_dg.napari.state import WidgetState
from pkl_dg.napari.worker import ModelCache, OperatorCache, PsfRequest, comparison_frames
from pkl_dg.psf_source import PSF
from pkl_dg.settings import METHOD_LABELS

if TYPE_CHECKING:
    import napari

#: methods offered, in display order
COMPARE_METHODS = ("rl", "l2", "anscombe", "pkl", "none")
NO_GT = "(none)"
SLOW = dict.fromkeys(("l2", "anscombe"), (
    ". Many times slower than PKL: gradient steps, up to 120 per diffusion step on bright "
    "images (a 502² BioSR image, 1 thread: 174 s and 205 s, PKL 18 s)"))
#: :attr:`RunInputs.origin` of the settings used when no PKL Deconvolution widget is open
DEFAULTS = "the default settings (the PKL Deconvolution widget is not open in this viewer)"


class CompareMethodsWidget(QWidget):
    """Dock widget comparing restoration methods on one image.

    Hooks for tests and scripts: ``denoiser`` (a network to use instead of the model cache),
    ``settings_overrides`` (extra RestoreSettings fields), ``model_cache``, ``layers``
    (method → result layer), ``comparison``, ``rows`` (metrics rows), ``pixel_size`` (the
    FRC's pixel size field, nm; 0: the image's own), ``runner`` (the
    :class:`~pkl_dg.napari.run_controller.RunController`), :meth:`run_inputs` and the
    ``run_finished(status)`` signal ("done", "cancelled", "failed", "error").
    """

    run_finished = Signal(str)

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model_cache = ModelCache()
        self.operator_cache = OperatorCache()
        self.denoiser: Any = None
        self.settings_overrides: dict[str, Any] = {}
        self.comparison = None
        self.seconds: dict[str, float] = {}
        self.rows: list[dict[str, Any]] = []
        self._view: CompareView | None = None
        self._input: Image | None = None
        self._image: np.ndarray | None = None  # the plane compared
        self._plane: tuple[int, ...] = ()  # its index in a stack's leading axes
        self._settings = None  # the settings the last comparison ran with
        self._psf: PSF | None = None  # and its PSF (the residual's forward model)
        self._build()
        self.runner = RunController(self.progress, self.status_label, self.cancel_button)
        self.runner.finished.connect(self._after_run)
        self.runner.finished.connect(self.run_finished)
        self.refresh_layers()
        try:  # the PKL Deconvolution widget's image, whose settings and PSF Compare uses
            shared = shared_state.run_inputs(self.viewer, "2d")
        except ValueError:  # its settings cannot run now: the selected layer, then
            shared = None
        pick_active(self.input_combo, self.viewer, shared and shared.input_layer)
        ev = self.viewer.layers.events
        ev.inserted.connect(self._layer_inserted)
        ev.removed.connect(self._layer_removed)
        ev.moved.connect(self.refresh_layers)
        for layer in self.viewer.layers:  # a renamed layer shows (and stays) under its name
            layer.events.name.connect(self.refresh_layers)

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.input_combo = fit_layer_names(QComboBox())
        self.gt_combo = fit_layer_names(QComboBox())
        self.gt_combo.setToolTip("Optional ground truth: when set, a metrics table is shown.")
        self.pixel_size = pixel_size_field()
        form.addRow("Image", self.input_combo)
        form.addRow("Ground truth", self.gt_combo)
        form.addRow("Pixel size", self.pixel_size)
        self.pixel_size.valueChanged.connect(lambda _nm: self._update_metrics())
        self.gt_combo.currentIndexChanged.connect(lambda _i: self._update_metrics())
        layout.addLayout(form)
        self.method_boxes: dict[str, QCheckBox] = {}
        row = QHBoxLayout()
        for m in COMPARE_METHODS:
            box = QCheckBox(short_method_label(m))
            box.setToolTip(METHOD_LABELS[m] + SLOW.get(m, ""))
            box.setChecked(m in ("rl", "pkl"))
            self.method_boxes[m] = box
            row.addWidget(box)
        layout.addLayout(row)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run compare")
        self.run_button.setToolTip(
            "Runs every checked method with the settings and PSF the PKL Deconvolution widget "
            "of this viewer has now (PSF layer, beads, file or computed; calibration, steps, "
            "…); with the defaults, said in the status line, when it is not open. Only the "
            "method differs between runs.")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop within the current step; the result layers keep "
                                      "the last estimates.")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress, self.status_label = progress_widgets()
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        self.grid_box = QCheckBox("Side by side")
        self.grid_box.setToolTip("Grid view of the viewer; result layers share contrast limits.")
        self.grid_box.toggled.connect(self.set_side_by_side)
        layout.addWidget(self.grid_box)
        self.table = MetricsTable()
        layout.addWidget(self.table)
        self.frc_note = QLabel("")  # the pixel size of the FRC in nm, or why there is none
        self.frc_note.setWordWrap(True)
        layout.addWidget(self.frc_note)
        self.export_button = QPushButton("Export CSV")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._export_dialog)
        layout.addWidget(self.export_button)
        res = QHBoxLayout()
        self.residual_combo = QComboBox()
        self.residual_button = QPushButton("Pearson residual")
        self.residual_button.setToolTip(
            "(y − (A x̂ + B)) / √(A x̂ + B) of the chosen result.")
        self.residual_button.clicked.connect(lambda: self.add_residual())
        res.addWidget(self.residual_combo)
        res.addWidget(self.residual_button)
        layout.addLayout(res)
        self.misfit_plot = MisfitPlot()  # or a label saying why there is no plot
        layout.addWidget(self.misfit_plot.widget)

    def refresh_layers(self, *_args) -> None:
        """Refill the image and ground-truth pickers from the viewer's image layers."""
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        refill(self.input_combo, images)
        refill(self.gt_combo, images, [NO_GT])

    def _layer_inserted(self, event) -> None:
        event.value.events.name.connect(self.refresh_layers)
        self.refresh_layers()

    def _layer_removed(self, event) -> None:
        event.value.events.name.disconnect(self.refresh_layers)
        self.refresh_layers()

    @property
    def is_running(self) -> bool:
        """True while a comparison runs."""
        return self.runner.is_running

    @property
    def layers(self) -> dict[str, Image]:
        """Method → its result layer, of the last (or running) comparison."""
        return self._view.layers if self._view is not None else {}

    def selected_methods(self) -> list[str]:
        """The checked methods, in display order."""
        return [m for m, box in self.method_boxes.items() if box.isChecked()]

    def run_inputs(self) -> RunInputs:
        """Settings and PSF source of the next comparison, with ``settings_overrides``.

        Those of the PKL Deconvolution widget open in this viewer; the defaults (origin
        :data:`DEFAULTS`) when none is. Raises ``ValueError`` when that widget's settings
        are invalid or its PSF layer is not chosen.
        """
        inputs = shared_state.run_inputs(self.viewer, "2d")
        if inputs is None:
            state = WidgetState()
            inputs = RunInputs(state, PsfRequest(state.psf_source), origin=DEFAULTS)
        settings = inputs.state.settings.replace(mode="2d", **self.settings_overrides)
        state = WidgetState(settings, inputs.state.psf_source, inputs.state.bead_box)
        return RunInputs(state, inputs.psf, inputs.origin, inputs.input_layer)

    # ------------------------------------------------------------------ run
    def run(self) -> bool:
        """Start comparing the checked methods; False (with the reason shown) when it
        cannot start."""
        if self.is_running:
            show_warning("A comparison is already running: wait or press Cancel.")
            return False
        layer = picked(self.input_combo, self.viewer)
        if layer is None:
            self.runner.report("Pick an image layer to compare methods on.", error=True)
            return False
        methods = self.selected_methods()
        if not methods:
            self.runner.report("Check at least one method.", error=True)
            return False
        try:
            # a 2D image, or the plane of a stack shown in the viewer (a copy, never the layer)
            # with its data type: saturation at an integer dtype's maximum is found as in
            # a single run (as float32 it was only a plateau at the image maximum)
            plane, self._plane = selected_block(self.viewer, layer, "2d")
            image = np.asarray(plane)
            inputs = self.run_inputs()
            settings = inputs.state.settings
            if settings.mode == "3d":  # the PKL widget restores volumes; Compare, planes
                settings = settings.replace(mode="2d")
            settings = own_pixel_size(layer, settings, inputs.input_layer)
            settings.validate()
        except (ValueError, TypeError) as exc:
            self.runner.report(f"Cannot compare: {exc}", error=True)
            return False
        if inputs.origin == DEFAULTS:
            show_warning("Compare methods: the PKL Deconvolution widget is not open in this "
                         "viewer, so the methods run with the default settings "
                         f"({describe_psf(settings, inputs.psf.source)} PSF). Open Plugins > "
                         "PKL Deconvolution to choose the PSF and settings.")
        self._input, self._settings, self._psf = layer, settings, None
        self._image = image
        self._clear_results()
        self._view = CompareView(self.viewer, layer, methods, inputs.origin, self._plane,
                                 settings)
        self.runner.start(self._view, comparison_frames, image, methods, settings, inputs.psf,
                          self.operator_cache, self.model_cache, self.denoiser)
        return True

    def _clear_results(self) -> None:
        """Forget the last comparison: its table, misfit curves and residual choices (its
        layers go when the new comparison's first frame arrives: :class:`CompareView`)."""
        self.comparison, self.seconds = None, {}
        self._update_metrics()  # no comparison: no scores
        self.residual_combo.clear()
        self._draw_misfit({})

    def cancel(self) -> None:
        """Stop the comparison within one convolution (the Cancel button)."""
        self.runner.cancel()

    def _after_run(self, status: str) -> None:
        """Score, plot and offer residuals of a finished comparison; trim the caches."""
        self.operator_cache.trim()
        self.model_cache.trim()
        release_freed_memory()
        result = self._view.result if self._view is not None else None
        if status == "cancelled" and self._view is not None and self._view.finished:
            # the methods that finished before the cancel are scored (no residuals: those
            # need the comparison's PSF, which only a finished comparison returns)
            self.comparison = Comparison(results=dict(self._view.finished))
            self.seconds = {m: self._view.seconds.get(m) for m in self._view.finished}
            self._update_metrics()
            return
        if status != "done" or result is None:
            return
        self.comparison, self.seconds = result.comparison, result.seconds
        self._settings, self._psf = result.settings, result.psf
        for method in result.comparison.results:
            self.residual_combo.addItem(short_method_label(method), method)
        self._update_metrics()
        self._plot_misfit()
        if self.grid_box.isChecked():
            link_contrast(self.viewer, self.layers.values())

    # ------------------------------------------------------------------ results
    def _update_metrics(self) -> None:
        gt_layer = picked(self.gt_combo, self.viewer)
        if gt_layer is None or self.comparison is None:  # no scores (none left up)
            self.rows = []
            self.table.setRowCount(0)
            self.frc_note.setText("")
            self.export_button.setEnabled(False)
            return
        try:
            gt = np.asarray(full_resolution(gt_layer), dtype=np.float32)
            if self._plane and gt.ndim == 2 + len(self._plane):  # the same plane of a stack
                gt = gt[self._plane]
            images = {m: np.asarray(r.image, dtype=np.float32)
                      for m, r in self.comparison.results.items()}
            # the pixel size typed here or stated by the image, never an assumed default
            nm, note = frc_pixel_size(self.pixel_size.value(), self._input)
            self.rows = metrics_table(images, gt, nm, self.seconds,
                                      measurement=np.asarray(self._image, dtype=np.float32))
        except (ValueError, TypeError) as exc:  # shapes differ, constant or non-numeric data
            show_error(f"Cannot score against '{gt_layer.name}': {exc}")
            return
        self.table.show_rows(self.rows)
        self.table.set_frc_note(note)
        region = self.rows[0].get("scored_region") if self.rows else None
        self.frc_note.setText(note + "." + (f" Scored on {region}." if region else ""))
        self.export_button.setEnabled(bool(self.rows))

    def export_csv(self, path) -> bool:
        if not self.rows:
            show_error("No metrics to export: run a comparison with a ground truth first.")
            return False
        gt = picked(self.gt_combo, self.viewer)
        context = csv_context(self._input.name if self._input is not None else "",
                              gt.name if gt is not None else "", self.comparison.results)
        try:
            write_csv(self.rows, path, context)
        except OSError as exc:
            show_error(f"Cannot write {path}: {exc}")
            return False
        show_info(f"Metrics written to {path}")
        return True

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "compare.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def _plot_misfit(self) -> None:
        if self.comparison is not None:
            self._draw_misfit(self.comparison.misfit)

    def _draw_misfit(self, misfit: dict[str, list]) -> None:
        """Draw ``misfit`` (none: an empty plot)."""
        problem = self.misfit_plot.draw(misfit)
        if problem:
            show_warning(problem)

    def add_residual(self, method: str | None = None) -> Image | None:
        if self.comparison is None or self._input is None:
            show_error("Run a comparison first.")
            return None
        method = method or self.residual_combo.currentData()
        if method is None:  # none offered: the comparison was cancelled (no PSF returned)
            show_error("No residual: the comparison was cancelled, and a residual needs its "
                       "PSF; run the comparison to the end.")
            return None
        result = self.comparison.results.get(method)
        if result is None:
            show_error(f"No result for method {method!r}.")
            return None
        try:  # the run's calibration, background, read-noise pedestal and PSF
            r = result_residual(self._image, result, psf=self._psf)
        except (ValueError, OSError, RuntimeError) as exc:
            # PSF or shape problems, an unreadable PSF file, torch out of memory
            show_error(f"Cannot compute the residual: {type(exc).__name__}: {exc}")
            return None
        return show_residual(self.viewer, r, self._input, self._plane, method, result)

    @property
    def grid(self) -> Any:
        """The viewer's grid model (``viewer.canvas.grid`` in napari ≥ 0.9)."""
        canvas = getattr(self.viewer, "canvas", None)
        return getattr(canvas, "grid", None) or self.viewer.grid

    def set_side_by_side(self, on: bool) -> None:
        self.grid.enabled = bool(on)
        if on:
            link_contrast(self.viewer, self.layers.values())
        if self.grid_box.isChecked() != bool(on):
            self.grid_box.setChecked(bool(on))

    def closeEvent(self, event) -> None:  # noqa: N802
        self.runner.cancel("the Compare methods widget was closed")
        self.operator_cache.clear()
        self.model_cache.clear()
        super().closeEvent(event)

