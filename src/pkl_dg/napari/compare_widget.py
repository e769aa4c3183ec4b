"""The "Compare methods" dock widget: one input, several methods, one layer per method.

Runs :func:`pkl_dg.compare.compare_iter` in a napari ``thread_worker`` with the settings the
PKL Deconvolution widget last saved (or the defaults), streams every method into its own
layer, scores the results against an optional ground-truth layer, and shows Pearson
residual maps. The input layer is only ever copied.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout,
                            QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout,
                            QWidget)

from pkl_dg.compare import METRIC_COLUMNS, compare_iter, metrics_table, pearson_residual, write_csv
from pkl_dg.napari.controls import short_method_label
from pkl_dg.napari.layer_input import full_resolution
from pkl_dg.napari.misfit_plot import MisfitPlot
from pkl_dg.napari.state import SettingsStore
from pkl_dg.napari.worker import NETWORK_METHODS, ModelCache
from pkl_dg.settings import METHOD_LABELS, RestoreSettings

if TYPE_CHECKING:
    import napari

#: methods offered, in display order
COMPARE_METHODS = ("rl", "l2", "anscombe", "pkl", "none")
NO_GT = "(none)"


def _compare_frames(image: np.ndarray, methods: list[str], settings: RestoreSettings,
                    models: ModelCache, denoiser: Any = None):
    """Worker body: yield (method, record); return (Comparison, seconds per method)."""
    if denoiser is None and any(m in NETWORK_METHODS for m in methods):
        denoiser = models.get(settings.model, settings.device)
    gen = compare_iter(image, methods, settings, denoiser=denoiser)
    seconds: dict[str, float] = {}
    current, t0 = None, time.perf_counter()
    try:
        while True:
            try:
                method, rec = next(gen)
            except StopIteration as stop:
                if current is not None:
                    seconds[current] = time.perf_counter() - t0
                return stop.value, seconds
            if method != current:
                if current is not None:
                    seconds[current] = time.perf_counter() - t0
                current, t0 = method, time.perf_counter()
            yield method, rec
    finally:
        gen.close()


class CompareMethodsWidget(QWidget):
    """Dock widget comparing restoration methods on one image.

    Hooks for tests and scripts: ``denoiser`` (a network to use instead of the model cache),
    ``settings_overrides`` (extra RestoreSettings fields), ``model_cache``, ``layers``
    (method → result layer), ``comparison``, ``rows`` (metrics rows) and the
    ``run_finished(status)`` signal ("done", "cancelled", "error").
    """

    run_finished = Signal(str)

    def __init__(self, napari_viewer: "napari.viewer.Viewer",
                 store: SettingsStore | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.store = store if store is not None else SettingsStore()
        self.model_cache = ModelCache()
        self.denoiser: Any = None
        self.settings_overrides: dict[str, Any] = {}
        self.layers: dict[str, Image] = {}
        self.comparison = None
        self.seconds: dict[str, float] = {}
        self.rows: list[dict[str, Any]] = []
        self._worker = None
        self._status = "idle"
        self._input: Image | None = None
        self._settings: RestoreSettings | None = None
        self._build()
        self.refresh_layers()
        ev = self.viewer.layers.events
        ev.inserted.connect(self.refresh_layers)
        ev.removed.connect(self.refresh_layers)

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.input_combo = QComboBox()
        self.gt_combo = QComboBox()
        self.gt_combo.setToolTip("Optional ground truth: when set, a metrics table is shown.")
        form.addRow("Image", self.input_combo)
        form.addRow("Ground truth", self.gt_combo)
        layout.addLayout(form)
        self.method_boxes: dict[str, QCheckBox] = {}
        row = QHBoxLayout()
        for m in COMPARE_METHODS:
            box = QCheckBox(short_method_label(m))
            box.setToolTip(METHOD_LABELS[m])
            box.setChecked(m in ("rl", "pkl"))
            self.method_boxes[m] = box
            row.addWidget(box)
        layout.addLayout(row)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run compare")
        self.run_button.setToolTip(
            "Runs every checked method with the settings last saved by the PKL Deconvolution "
            "widget (PSF, calibration, steps, …); RestoreSettings() defaults when none were "
            "saved. Only the method differs between runs.")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.grid_box = QCheckBox("Side by side")
        self.grid_box.setToolTip("Grid view of the viewer; result layers share contrast limits.")
        self.grid_box.toggled.connect(self.set_side_by_side)
        layout.addWidget(self.grid_box)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.table = QTableWidget(0, len(METRIC_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(METRIC_COLUMNS))
        layout.addWidget(self.table)
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
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        for combo, extra in ((self.input_combo, []), (self.gt_combo, [NO_GT])):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(extra + [layer.name for layer in images])
            idx = combo.findText(current)
            if idx >= 0:
                combo.setCurrentIndex(idx)
            combo.blockSignals(False)

    def _layer(self, name: str) -> Image | None:
        if not name or name == NO_GT or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        return layer if isinstance(layer, Image) else None

    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def selected_methods(self) -> list[str]:
        return [m for m, box in self.method_boxes.items() if box.isChecked()]

    def base_settings(self) -> RestoreSettings:
        state, message = self.store.load()
        if message:
            show_warning(message)
        settings = state.settings
        if self.settings_overrides:
            settings = settings.replace(**self.settings_overrides)
        return settings

    # ------------------------------------------------------------------ run
    def run(self) -> bool:
        if self.is_running:
            show_warning("A comparison is already running: wait or press Cancel.")
            return False
        layer = self._layer(self.input_combo.currentText())
        if layer is None:
            show_error("Pick an image layer to compare methods on.")
            return False
        methods = self.selected_methods()
        if not methods:
            show_error("Check at least one method.")
            return False
        try:
            image = np.array(full_resolution(layer), dtype=np.float32)  # a copy, never the layer
            if image.ndim != 2:
                raise ValueError("Compare methods works on 2D images "
                                 f"('{layer.name}' has {image.ndim} dimensions).")
            settings = self.base_settings().replace(mode="2d")
            settings.validate()
        except (ValueError, TypeError) as exc:
            show_error(str(exc))
            return False
        self._input, self._settings = layer, settings
        self.layers, self.comparison, self.rows, self.seconds = {}, None, [], {}
        self.table.setRowCount(0)
        self.export_button.setEnabled(False)
        self._status = "running"
        worker = thread_worker(_compare_frames, start_thread=False)(
            image, methods, settings, self.model_cache, self.denoiser)
        worker.yielded.connect(self._on_frame)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.cancel_button.setEnabled(True)
        self.status_label.setText(f"Comparing {len(methods)} method(s) on '{layer.name}'…")
        worker.start()
        return True

    def cancel(self) -> None:
        if self._worker is not None:
            self._status = "cancelled"
            self._worker.quit()

    def layer_name(self, method: str) -> str:
        return f"{self._input.name} [{short_method_label(method)}]"

    def _show(self, method: str, image: np.ndarray) -> Image:
        image = np.asarray(image, dtype=np.float32)
        layer = self.layers.get(method)
        if layer is None or layer not in self.viewer.layers:
            name = self.layer_name(method)
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            n = image.ndim
            layer = self.viewer.add_image(image, name=name, colormap="gray",
                                          **self._geometry(n))
            self.layers[method] = layer
            self.residual_combo.addItem(short_method_label(method), method)
        else:
            layer.data = image
        lo, hi = np.percentile(image, [0.5, 99.8])
        if hi > lo:
            layer.contrast_limits = (float(lo), float(hi))
        return layer

    def _on_frame(self, item) -> None:
        method, rec = item
        if self._input is None:
            return
        self._show(method, rec.image)
        self.status_label.setText(f"{METHOD_LABELS[method]}: step {rec.index}/{rec.total}")

    def _on_returned(self, value) -> None:
        comparison, seconds = value
        self.comparison, self.seconds = comparison, seconds
        for method, result in comparison.results.items():
            layer = self._show(method, result.image)
            layer.metadata = dict(result.metadata)
        self._status = "done"
        self._update_metrics()
        self._plot_misfit()
        if self.grid_box.isChecked():
            self._link_contrast()
        self.status_label.setText(f"Compared {len(comparison.results)} method(s).")

    def _on_errored(self, exc: Exception) -> None:
        self._status = "error"
        show_error(f"Compare failed: {type(exc).__name__}: {exc}")
        self.status_label.setText(f"Error: {exc}")

    def _on_aborted(self) -> None:
        self._status = "cancelled"
        self.status_label.setText("Cancelled.")

    def _on_finished(self) -> None:
        self._worker = None
        self.cancel_button.setEnabled(False)
        status = self._status if self._status != "running" else "cancelled"
        self.run_finished.emit(status)

    # ------------------------------------------------------------------ results
    def _update_metrics(self) -> None:
        gt_layer = self._layer(self.gt_combo.currentText())
        if gt_layer is None or self.comparison is None:
            return
        try:
            gt = np.asarray(full_resolution(gt_layer), dtype=np.float32)
            images = {m: np.asarray(r.image, dtype=np.float32)
                      for m, r in self.comparison.results.items()}
            self.rows = metrics_table(images, gt, self._settings.pixel_size_nm, self.seconds)
        except (ValueError, TypeError) as exc:  # shapes differ, constant or non-numeric data
            show_error(f"Cannot score against '{gt_layer.name}': {exc}")
            return
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            for j, key in enumerate(METRIC_COLUMNS):
                v = row.get(key)
                text = "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.export_button.setEnabled(bool(self.rows))

    def export_csv(self, path) -> bool:
        if not self.rows:
            show_error("No metrics to export: run a comparison with a ground truth first.")
            return False
        try:
            write_csv(self.rows, path)
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
            problem = self.misfit_plot.draw(self.comparison.misfit)
            if problem:
                show_warning(problem)

    def add_residual(self, method: str | None = None) -> Image | None:
        if self.comparison is None or self._input is None:
            show_error("Run a comparison first.")
            return None
        method = method or self.residual_combo.currentData()
        result = self.comparison.results.get(method)
        if result is None:
            show_error(f"No result for method {method!r}.")
            return None
        try:
            bg = result.metadata.get("background_photons")
            r = pearson_residual(np.array(full_resolution(self._input), dtype=np.float32),
                                 result.image, self._settings,
                                 background=None if bg is None else float(bg))
        except (ValueError, OSError, RuntimeError) as exc:
            # PSF or shape problems, an unreadable PSF file, torch out of memory
            show_error(f"Cannot compute the residual: {type(exc).__name__}: {exc}")
            return None
        name = f"{self.layer_name(method)} residual"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        return self.viewer.add_image(r, name=name, colormap="twilight_shifted",
                                     contrast_limits=(-3, 3), **self._geometry(r.ndim))

    def _geometry(self, n: int) -> dict:
        """Scale, translate, units and axis labels of the input's last ``n`` axes."""
        src = self._input
        return {"scale": src.scale[-n:], "translate": src.translate[-n:],
                "units": src.units[-n:], "axis_labels": src.axis_labels[-n:]}

    def _link_contrast(self) -> None:
        layers = [layer for layer in self.layers.values() if layer in self.viewer.layers]
        if len(layers) < 2:
            return
        lo = min(layer.contrast_limits[0] for layer in layers)
        hi = max(layer.contrast_limits[1] for layer in layers)
        for layer in layers:
            layer.contrast_limits = (lo, hi)

    @property
    def grid(self) -> Any:
        """The viewer's grid model (``viewer.canvas.grid`` in napari ≥ 0.9)."""
        canvas = getattr(self.viewer, "canvas", None)
        return getattr(canvas, "grid", None) or self.viewer.grid

    def set_side_by_side(self, on: bool) -> None:
        self.grid.enabled = bool(on)
        if on:
            self._link_contrast()
        if self.grid_box.isChecked() != bool(on):
            self.grid_box.setChecked(bool(on))

    def closeEvent(self, event) -> None:  # noqa: N802
        self.cancel()
        super().closeEvent(event)
