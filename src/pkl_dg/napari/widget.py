"""The "PKL Deconvolution" dock widget.

Controls are generated from :func:`pkl_dg.settings.field_specs` (label, tooltip, bounds,
choices, unit), so the widget, the CLI flags and the metadata written with each result share
one schema. The only controls not in the schema are the widget's own: the input layer, where
the PSF comes from (a PSF image layer or a bead image besides the schema's Gaussian / Airy /
file) and the buttons.

A run copies the input plane and hands it to the :class:`~pkl_dg.napari.run_controller.
RunController`, which streams :func:`pkl_dg.napari.worker.restoration_frames` from a worker
thread into one output layer (``"<input> [<method>]"``, updated in place, at most 10 times
a second, see :class:`~pkl_dg.napari.output.RestorationView`), keeps the progress bar and
status line current, and cancels within one convolution. Problems go to napari
notifications and the status line; the input layer is never modified.

The widget publishes its current settings and PSF source for its viewer
(:mod:`pkl_dg.napari.shared_state`), so the Compare methods widget runs with the same PSF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container
from napari.layers import Image
from napari.utils.notifications import show_warning
from qtpy.QtCore import QEvent, Qt, Signal
from qtpy.QtWidgets import (QGroupBox, QHBoxLayout, QPushButton, QScrollArea, QVBoxLayout,
                            QWidget)

from pkl_dg.napari import psf_sources, shared_state
from pkl_dg.napari.controls import (GROUP_TITLES, INPUT_TIP, STACK_TIP, fit_layer_names,
                                    image_layer_choices, pixel_size_note,
                                    psf_kind_of, psf_source_controls, read_control,
                                    settings_controls, short_method_label, shown_fields,
                                    write_control)
from pkl_dg.napari.caches import release_freed_memory
from pkl_dg.napari.calibration_panel import (CalibrationPanel, CalibrationSample,
                                              calibration_sample)
from pkl_dg.napari.layer_input import open_shapes, psf_request, selected_block, stack_axes
from pkl_dg.napari.output import RestorationView, Run, plane_suffix, same_layer
from pkl_dg.napari.psf_layer import show_psf_layer
from pkl_dg.napari.sampling_fields import SamplingFields
from pkl_dg.napari.run_controller import RunController, progress_widgets
from pkl_dg.napari.shared_state import RunInputs
from pkl_dg.napari.state import STACK_EXTENTS, SettingsStore, WidgetState
from pkl_dg.napari.step_pace import StepPace
from pkl_dg.napari.worker import ModelCache, OperatorCache, resolve_psf, restoration_frames
from pkl_dg.settings import METHOD_LABELS, RestoreSettings

if TYPE_CHECKING:
    import napari


class PKLDeconvolutionWidget(QWidget):
    """Dock widget: pick an image, PSF, calibration, method, schedule; Run; watch it sharpen.

    Attributes tests and scripts may use: ``controls`` (name → magicgui control, one per
    settings field), ``operator_cache`` (forward models per image shape and PSF),
    ``model_cache`` (networks per model path and device), both bounded by bytes and freed
    when their layers or the widget close; ``output_layer``; ``runner`` (the
    :class:`~pkl_dg.napari.run_controller.RunController`); :meth:`run_inputs` (what a run
    would use now, also read by the Compare methods widget); the ``run_finished(status)``
    signal with status "done", "cancelled", "failed" or "error", and ``frame_shown(index)``
    after a frame went into the output layer (at most 10 per second).
    """

    run_finished = Signal(str)
    frame_shown = Signal(int)

    def __init__(self, napari_viewer: "napari.viewer.Viewer",
                 store: SettingsStore | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.store = store if store is not None else SettingsStore()
        self.operator_cache = OperatorCache()
        self.model_cache = ModelCache()
        self._loading = False
        self._save_warned = False
        self._view: RestorationView | None = None  # of the last run
        self._build()
        self.runner = RunController(self.progress, self.status_label, self.cancel_button)
        self.runner.finished.connect(self._after_run)
        self.runner.finished.connect(self.run_finished)
        self.runner.frame_shown.connect(self.frame_shown)
        state, message = self.store.load()
        if message:
            show_warning(message)
        self.apply_state(state)
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            self.input_combo.value = active
        self._on_input_changed()
        layers = self.viewer.layers.events
        layers.inserted.connect(self._on_layer_inserted)
        layers.removed.connect(self._on_layer_removed)
        layers.moved.connect(self._reset_layer_choices)
        for layer in self.viewer.layers:  # a renamed layer shows its new name
            layer.events.name.connect(self._reset_layer_choices)
        shared_state.publish(self.viewer, self.run_inputs)

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        choices = image_layer_choices(self.viewer)
        self.input_combo = fit_layer_names(ComboBox(name="input", label="Image",
                                                    choices=choices, tooltip=INPUT_TIP))
        (self.psf_source, self.psf_layer_combo, self.bead_layer_combo,
         self.bead_box) = psf_source_controls(choices)
        self.stack_combo = ComboBox(name="stack", label="Stack",
                                    choices=[(v, k) for k, v in STACK_EXTENTS.items()],
                                    tooltip=STACK_TIP)
        self.controls, by_group = settings_controls(exclude=("psf_kind",))  # "PSF from"
        self.sampling = SamplingFields(self.controls)  # pixel size and Z step
        self.calibration_panel = CalibrationPanel(  # on what a run would calibrate on
            self.controls, self._calibration_sample, self.viewer.dims.events.current_step)
        self.stack_combo.changed.connect(self.calibration_panel.block_changed)
        by_group["Data"] = by_group.get("Data", []) + [self.stack_combo]
        by_group["PSF"] = [self.psf_source, self.psf_layer_combo, self.bead_layer_combo,
                           self.bead_box] + by_group["PSF"]

        form = QWidget()
        form_layout = QVBoxLayout(form)
        form_layout.setContentsMargins(0, 0, 0, 0)
        form_layout.addWidget(Container(widgets=[self.input_combo], labels=True).native)
        for group, ctrls in by_group.items():
            box = QGroupBox(GROUP_TITLES.get(group, group))
            box_layout = QVBoxLayout(box)
            box_layout.setContentsMargins(4, 4, 4, 4)
            box_layout.addWidget(Container(widgets=ctrls, labels=True).native)
            if group == "Calibration":
                self.calibration_panel.add_to(box_layout)
            if group == "PSF":
                self.show_psf_button = QPushButton("Show PSF")
                self.show_psf_button.setToolTip("Add the PSF these settings give as a layer "
                                                "(updated in place), to check it.")
                self.show_psf_button.clicked.connect(self.show_psf)
                box_layout.addWidget(self.show_psf_button)
            form_layout.addWidget(box)
        form_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(form)
        self._scroll, self._form = scroll, form

        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Restore the selected image (the displayed plane of a "
                                   "stack) into the layer '<image> [<method>]'.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop now (within one convolution); the output layer "
                                      "keeps the last estimate.")
        self.cancel_button.setEnabled(False)
        self.defaults_button = QPushButton("Restore defaults")
        self.defaults_button.setToolTip("Reset every setting to its default (saved).")
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.defaults_button.clicked.connect(self.restore_defaults)
        buttons = QHBoxLayout()
        for b in (self.run_button, self.cancel_button, self.defaults_button):
            buttons.addWidget(b)
        self.progress, self.status_label = progress_widgets()

        layout = QVBoxLayout(self)
        layout.addWidget(scroll, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)

        for ctrl in list(self.controls.values()) + [self.psf_source, self.bead_box,
                                                     self.stack_combo]:
            ctrl.changed.connect(self._on_setting_changed)
        self.input_combo.changed.connect(self._on_input_changed)

    # ------------------------------------------------------------------ state
    def current_state(self) -> WidgetState:
        """Settings as currently shown; raises ``ValueError`` if a value is invalid."""
        source = self.psf_source.value
        return WidgetState(settings=RestoreSettings.from_dict(self._values()),
                           psf_source=source, bead_box=int(self.bead_box.value),
                           stack=self.stack_combo.value)

    def _values(self) -> dict[str, Any]:
        """The settings controls' values by field, with the PSF model of "PSF from"."""
        values = {name: read_control(ctrl) for name, ctrl in self.controls.items()}
        values["psf_kind"] = psf_kind_of(self.psf_source.value)
        return values

    def run_inputs(self, mode: str | None = None) -> RunInputs:
        """The settings and PSF request a run would use now.

        Parameters
        ----------
        mode
            "2d" or "3d": the block of a bead image the request copies; the widget's own
            deconvolution mode when None.

        Raises
        ------
        ValueError
            When a setting is invalid or the PSF (or bead) layer is not chosen.
        """
        state = self.current_state()
        request = psf_request(self.viewer, state.psf_source, self.bead_box.value,
                              self.psf_layer_combo.value, self.bead_layer_combo.value,
                              mode or state.settings.mode, self.sampling.known())
        return RunInputs(state, request, input_layer=self.input_combo.value)

    def apply_state(self, state: WidgetState) -> None:
        self._loading = self.calibration_panel._writing = True
        try:
            for name, ctrl in self.controls.items():
                write_control(ctrl, getattr(state.settings, name))
            self.psf_source.value = state.psf_source
            self.bead_box.value = state.bead_box
            self.stack_combo.value = state.stack
        finally:
            self._loading = self.calibration_panel._writing = False
        self._update_visibility()
        self.sampling.layer_changed(self.input_combo.value)  # an image's own, if it has one

    def restore_defaults(self) -> None:
        self.apply_state(WidgetState())
        self._save()
        self.runner.report("Settings reset to their defaults.")

    def _on_setting_changed(self, *_args) -> None:
        if self._loading:
            return
        self._update_visibility()
        self._save()

    def _save(self) -> None:
        try:
            self.store.save(self.sampling.as_saved(self.current_state()))
        except (OSError, ValueError) as exc:
            if not self._save_warned:  # warn once per session, not on every click
                show_warning(f"PKL settings could not be saved to {self.store.path}: {exc}")
                self._save_warned = True

    def _update_visibility(self) -> None:
        src = self.psf_source.value
        mode_3d = self.controls["mode"].value == "3d"
        for name, visible in shown_fields(self._values()).items():
            if name in self.controls:
                self.controls[name].visible = visible
        self.psf_layer_combo.visible = src == "layer"
        self.bead_layer_combo.visible = src == "beads"
        self.bead_box.visible = src == "beads"
        layer = self.input_combo.value
        self.stack_combo.visible = layer is not None and layer.ndim > (3 if mode_3d else 2)

    # ------------------------------------------------------------------ layers
    def _reset_layer_choices(self, *_args) -> None:
        for combo in (self.input_combo, self.psf_layer_combo, self.bead_layer_combo):
            combo.reset_choices()

    def _on_layer_inserted(self, event) -> None:
        had_input = self.input_combo.value is not None
        event.value.events.name.connect(self._reset_layer_choices)
        self._reset_layer_choices()
        if not had_input and isinstance(event.value, Image):
            self.input_combo.value = event.value

    def _calibration_sample(self) -> CalibrationSample | None:
        """What a run would estimate its calibration on now (:func:`calibration_sample`)."""
        return calibration_sample(self.viewer, self.input_combo.value,
                                  self.controls["mode"].value, self.stack_combo.value == "all")

    def _on_input_changed(self, *_args) -> None:
        self._update_visibility()
        layer = self.input_combo.value
        self.sampling.layer_changed(layer)
        if layer is None:
            return
        self.calibration_panel.input_changed()

    def _on_layer_removed(self, event) -> None:
        removed = event.value
        removed.events.name.disconnect(self._reset_layer_choices)
        with self.calibration_panel.quietly():  # no toasts about a layer nobody picked
            self._reset_layer_choices()
        view = self._view
        if view is not None and view.output_removed(removed) and self.is_running:
            self.runner.cancel("the output layer was removed")
        if self.is_running and same_layer(removed, view.run.input_layer):
            # quietly: closing the viewer removes every layer before the widget goes
            self.runner.cancel(f"the input layer '{removed.name}' was removed")
        self.operator_cache.keep_shapes(open_shapes(self.viewer))

    # ------------------------------------------------------------------ actions
    @property
    def is_running(self) -> bool:
        return self.runner.is_running

    @property
    def output_layer(self) -> Image | None:
        """The layer the last run wrote into (None once removed)."""
        return self._view.output_layer if self._view is not None else None

    @property
    def last_error(self) -> str | None:
        """Message of the last failure (of a run, or found before one could start)."""
        return self.runner.last_error

    def show_psf(self) -> Image | None:
        """Add (or update) a layer showing the PSF of the current settings."""
        layer = self.input_combo.value
        try:
            inputs = self.run_inputs()
            settings = inputs.state.settings
            shape = (np.shape(selected_block(self.viewer, layer, settings.mode,
                                             inputs.state.stack == "all")[0])
                     if layer is not None else (256, 256))
            _raw, psf, _settings, notes = resolve_psf(settings, inputs.psf, shape)
        except (ValueError, FileNotFoundError) as exc:
            self.runner.report(f"Cannot show the PSF: {exc}", error=True)
            return None
        desc = psf_sources.describe_resolved(settings, inputs.psf.source, notes)
        psf_layer = show_psf_layer(self.viewer, psf, layer, {"description": desc, **notes})
        self.runner.report(f"PSF: {desc}, {' × '.join(map(str, psf.shape))} px, sum 1.")
        return psf_layer

    def run(self) -> bool:
        """Start a restoration; returns False (with a notification and the reason in the
        status line) when it cannot start."""
        if self.is_running:
            show_warning("A restoration is already running: wait or press Cancel first.")
            return False
        layer = self.input_combo.value
        if layer is None:
            self.runner.report("No image to restore: open an image (or File > Open Sample > "
                               "PKL Deconvolution) and pick it as 'Image'.", error=True)
            return False
        try:
            inputs = self.run_inputs()
            settings = inputs.state.settings
            image, index = selected_block(self.viewer, layer, settings.mode,
                                          inputs.state.stack == "all")
        except (ValueError, FileNotFoundError) as exc:
            self.runner.report(f"Cannot run: {exc}", error=True)
            return False
        self._save()
        name = f"{layer.name} [{short_method_label(settings.method)}]{plane_suffix(index)}"
        block_ndim = 3 if settings.mode == "3d" else 2
        run = Run(input_layer=layer, settings=settings, name=name, plane=index,
                  whole_stack=np.ndim(image) > block_ndim, block_ndim=block_ndim,
                  shape=tuple(np.shape(image)), method_label=METHOD_LABELS[settings.method],
                  pixel_size=pixel_size_note(layer, settings, show_warning))
        self._view = RestorationView(self.viewer, run, self.output_layer)
        self.runner.start(self._view, restoration_frames, image, settings, inputs.psf,
                          self.operator_cache, self.model_cache,
                          stack_axes(layer) if run.whole_stack else None,
                          pace=StepPace.for_run(settings))
        return True

    def _after_run(self, status: str) -> None:
        """Say in the calibration panel what the run used (unless another image was picked
        meanwhile: the panel shows that one's estimate); hold the caches to their caps now
        that the operator's OTF is filled, and give the run's freed temporaries back to the
        system (memory stays flat over runs)."""
        done = status == "done" and self.output_layer is not None
        used = (self.output_layer.metadata if done else self.runner.run.metadata)
        if "calibration" in used and same_layer(self.input_combo.value,
                                                self._view.run.input_layer):
            self.calibration_panel.show_used(used["calibration"], self._view.run.name)
        self.operator_cache.trim()
        self.model_cache.trim()
        release_freed_memory()

    def cancel(self) -> None:
        """Stop the running restoration within one convolution (the Cancel button)."""
        self.runner.cancel()

    def cleanup(self) -> None:
        """Stop a running restoration and free the caches (the widget is being closed)."""
        shared_state.withdraw(self.viewer, self.run_inputs)
        self.runner.cancel("the PKL Deconvolution widget was closed")
        self.operator_cache.clear()
        self.model_cache.clear()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt name)
        # once styled: room for the form plus a vertical scroll bar, so nothing is clipped
        width = (self._form.minimumSizeHint().width()
                 + self._scroll.verticalScrollBar().sizeHint().width()
                 + 2 * self._scroll.frameWidth() + 2)
        self._scroll.setMinimumWidth(width)
        super().showEvent(event)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.cleanup()
        super().closeEvent(event)

    def event(self, event) -> bool:
        # napari removes a closed dock widget by un-parenting it: stop the run then too,
        # quietly (the status line says why)
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.cleanup()
        return super().event(event)
