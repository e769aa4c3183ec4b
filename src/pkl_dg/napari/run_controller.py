"""One restoration run in the GUI: worker lifecycle, cancel, throttled display, status line.

:class:`RunController` starts :func:`pkl_dg.napari.worker.restoration_frames` in a napari
``thread_worker`` and owns what the user sees of it: the output layer, the progress bar and
the status line. The dock widget only builds the :class:`~pkl_dg.napari.output.Run` and its
inputs.

Display: every streamed frame is counted, but the output layer, the progress bar and the
status line are updated together at most every :data:`DISPLAY_INTERVAL_S` seconds (the
newest frame waits on a single-shot timer), so a fast run (hundreds of Richardson–Lucy
iterations per second) never floods the Qt event loop; the last frame is always shown. In
a whole-stack run a block's last frame is written into the layer before the next block
starts, so no block is skipped.

Status: the status line always holds the latest event: run progress, result, cancel (and
why), failure, or an error found before the run started (:meth:`RunController.report`).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from pkl_dg.napari.output import (Run, auto_contrast, blank_std, output_layer_for, remove_std,
                                  same_layer, show_frame, show_std)
from pkl_dg.napari.worker import CancelFlag, Cancelled, RunFailure

#: least time between two updates of the output layer, progress bar and status (≤ 10/s)
DISPLAY_INTERVAL_S = 0.1


class RunController(QObject):
    """Runs one restoration at a time and shows it.

    Signals: ``finished(status)`` with "done", "cancelled", "failed" or "error";
    ``frame_shown(index)`` after a frame went into the layer (throttled, see the module).
    """

    finished = Signal(str)
    frame_shown = Signal(int)

    def __init__(self, viewer: Any, progress: QProgressBar, status: QLabel,
                 cancel_button: QPushButton) -> None:
        super().__init__()
        self.viewer = viewer
        self.progress = progress
        self.status = status
        self.cancel_button = cancel_button
        self.output_layer: Image | None = None
        self.last_error: str | None = None
        self.run: Run | None = None
        self._worker = None
        self._flag: CancelFlag | None = None
        self._pending = None  # newest StepRecord not yet shown
        self._shown_at: float | None = None  # perf_counter of the last display update
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._flush)
        self._ui_alive = True  # False once the widget's Qt objects are deleted (closed)
        status.destroyed.connect(self._ui_deleted)

    def _ui_deleted(self, *_args) -> None:
        self._ui_alive = False
        self._timer.stop()
        if self._flag is not None:
            self._flag.set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def start(self, run: Run, frames: Callable[..., Any], *args: Any) -> None:
        """Run ``frames(*args, cancel=flag)`` (a generator function) in a worker thread."""
        self.run = run
        self.last_error = None
        self._pending = None
        self._shown_at = None
        self._flag = CancelFlag()
        worker = thread_worker(frames, start_thread=False)(*args, cancel=self._flag)
        worker.yielded.connect(self._on_frame)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the first frame (PSF, model loading)
        self.progress.setFormat("preparing…")
        self.status.setText(f"Restoring '{run.input_layer.name}' with {run.method_label}…")
        worker.start()

    def cancel(self, reason: str = "") -> None:
        """Stop the run within one convolution; ``reason`` goes into the status line."""
        if self._worker is None or self._flag is None:
            return
        run = self.run
        if run is not None and run.status == "running":
            run.status = "cancelling"
            run.cancel_reason = reason
        self._flag.set()
        if self._ui_alive:
            self.progress.setFormat("cancelling…")
            self.status.setText(f"Cancelling: {reason}." if reason else "Cancelling…")

    def report(self, message: str, error: bool = False) -> None:
        """Show an event that is not a run's (e.g. an error found before starting)."""
        if error:
            show_error(message)
            self.last_error = message
        if not self.is_running:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("not started" if error else "idle")
        self.status.setText(message)

    # ------------------------------------------------------------------ layers
    def output_removed(self, layer: Any) -> None:
        """The user removed ``layer``: forget it, drop its std layer, stop a run on it."""
        if not same_layer(layer, self.output_layer):
            return
        self.output_layer = None
        remove_std(self.viewer, layer.name)
        run = self.run
        if self.is_running and run is not None and run.name == layer.name:
            run.output_gone = True
            self._pending = None
            self.cancel("the output layer was removed")

    # ------------------------------------------------------------------ display
    def _on_frame(self, record) -> None:
        run = self.run
        if run is None or run.status != "running" or not self._ui_alive:
            return  # being cancelled (a frame finished meanwhile) or closed
        run.frames += 1
        run.total = record.total
        pending = self._pending
        if run.whole_stack and pending is not None and pending.block != record.block:
            self._write(pending)  # a block's last frame always reaches the layer
        self._pending = record
        wait = 0.0 if self._shown_at is None else \
            DISPLAY_INTERVAL_S - (time.perf_counter() - self._shown_at)
        if wait <= 0:  # the first frame at once, then at most one per interval
            self._flush()
        elif not self._timer.isActive():
            self._timer.start(max(1, int(wait * 1000)))

    def _write(self, record) -> Image:
        run = self.run
        frame = np.asarray(record.image, dtype=np.float32)
        if run.shown_at is None:  # the first frame replaces the previous result
            blank_std(self.viewer, run.name)
        self.output_layer = output_layer_for(self.viewer, run, self.output_layer, frame)
        show_frame(self.output_layer, run, tuple(record.block), frame)
        run.shown_at = time.perf_counter()
        return self.output_layer

    def _flush(self) -> None:
        """Show the newest frame: layer, contrast, progress and status in one update."""
        self._timer.stop()
        record, self._pending = self._pending, None
        run = self.run
        if record is None or run is None or run.output_gone or not self._ui_alive:
            return
        layer = self._write(record)
        auto_contrast(layer, run, np.asarray(record.image, dtype=np.float32))
        now = time.perf_counter()
        self._shown_at = now
        eta = (now - run.started) / max(record.index, 1) * (record.total - record.index)
        self.progress.setRange(0, record.total)
        self.progress.setValue(record.index)
        if run.status == "running":
            text = f"step {record.index}/{record.total} · ETA {eta:.0f} s"
            self.progress.setFormat(text)
            self.status.setText(f"Restoring '{run.input_layer.name}' with "
                                f"{run.method_label}: {text}.")
        self.frame_shown.emit(record.index)

    # ------------------------------------------------------------------ outcomes
    def _on_returned(self, result) -> None:
        run = self.run
        if not self._ui_alive:  # the widget was closed: nothing to show
            run.status = "cancelled"  # a result nobody can see any more
            return
        if isinstance(result, Cancelled):
            self._flush()  # the last streamed estimate
            self._show_cancelled()
            return
        if isinstance(result, RunFailure):
            self._flush()
            run.status = "failed"
            if run.shown_at is not None:
                remove_std(self.viewer, run.name)
            self.last_error = result.message
            show_error(result.message)
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("failed")
            self.status.setText(f"Failed: {result.message}")
            return
        self._timer.stop()
        self._pending = None
        image = np.asarray(result.image, dtype=np.float32)
        layer = output_layer_for(self.viewer, run, self.output_layer, image)
        self.output_layer = layer
        layer.data = image
        auto_contrast(layer, run, image)
        if result.std is not None and run.settings.samples > 1:
            show_std(self.viewer, layer, np.asarray(result.std, dtype=np.float32),
                     run.settings.samples)
        else:  # this result has no std: an older one must not stay beside it
            remove_std(self.viewer, run.name)
        metadata = dict(result.metadata)
        notes = dict(metadata.get("napari", {}))
        notes.update(input_layer=run.input_layer.name, plane=list(run.plane))
        metadata["napari"] = notes
        layer.metadata = metadata
        run.status = "done"
        elapsed = time.perf_counter() - run.started
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat(f"done in {elapsed:.1f} s")
        n = metadata.get("threads", "?")
        self.status.setText(f"'{run.name}': restored in {elapsed:.1f} s "
                            f"({n} CPU thread{'' if n == 1 else 's'}).")

    def _show_cancelled(self) -> None:
        run = self.run
        run.status = "cancelled"
        if run.shown_at is not None:  # the output changed: the std of its old result goes
            remove_std(self.viewer, run.name)
        if self.output_layer is not None and run.shown_at is not None:
            self.output_layer.metadata = {
                "status": "cancelled", "steps_completed": run.frames, "steps_total": run.total,
                "settings": run.settings.to_dict(),
                "napari": {"input_layer": run.input_layer.name, "plane": list(run.plane)}}
        self.progress.setFormat(f"cancelled at step {run.frames}/{run.total or '?'}")
        why = f" ({run.cancel_reason})" if run.cancel_reason else ""
        kept = (f"; '{run.name}' holds the last estimate" if run.shown_at is not None
                and self.output_layer is not None else "")
        self.status.setText(f"Cancelled after {run.frames} step(s){why}{kept}.")

    def _on_errored(self, exc: Exception) -> None:
        # napari's worker already reports the exception (with its traceback) as a notification
        self._timer.stop()
        self._pending = None
        self.run.status = "error"
        if not self._ui_alive:
            return
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.progress.setFormat("error")
        self.status.setText(f"Error: {exc}")

    def _on_finished(self) -> None:
        run = self.run
        status = run.status if run is not None else "done"
        if status in ("running", "cancelling"):  # stopped without a result
            status = "cancelled"
            if self._ui_alive:
                self._show_cancelled()
            else:
                run.status = status
        self._worker = None
        self._flag = None
        if self._ui_alive:
            self.cancel_button.setEnabled(False)
        self.finished.emit(status)
