"""One run in the GUI: worker lifecycle, cancel, throttled display, progress and status.

:class:`RunController` runs a generator function (the worker side of a run, e.g.
:func:`pkl_dg.napari.worker.restoration_frames` or
:func:`pkl_dg.napari.worker.comparison_frames`) in a napari ``thread_worker`` with a
:class:`~pkl_dg.napari.worker.CancelFlag`, and owns the progress bar, the status line and the
Cancel button. Both dock widgets use it; what a run shows in the viewer (its layers) is the
:class:`RunView` given to :meth:`RunController.start`: the restoration's
:class:`~pkl_dg.napari.output.RestorationView`, or the Compare widget's method layers.

Display: every streamed frame is counted, but the layers, the progress bar and the status
line are updated together at most every :data:`DISPLAY_INTERVAL_S` seconds (the newest
frame waits on a single-shot timer), so a fast run (hundreds of Richardson–Lucy iterations
per second) never floods the Qt event loop; the last frame is always shown. When the view's
:meth:`RunView.frame_key` changes (the next block of a stack, the next compared method) the
previous part's last frame is written before the next is shown, so no part is skipped.

Status: the status line always holds the latest event: run progress, result, cancel (and
why), failure, or an error found before the run started (:meth:`RunController.report`).
Progress counts steps; the time left assumes they cost alike, unless the run has a
:class:`~pkl_dg.napari.step_pace.StepPace` (a PKL restoration: its final denoising pass
costs several steps). While such a pass runs the status is renewed every second (no frame
arrives meanwhile), so its ETA counts down, and past its estimate gives the time it has run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Protocol

from napari.qt.threading import thread_worker
from napari.utils.notifications import notification_manager, show_error, show_warning
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from pkl_dg.napari.step_pace import StepPace
from pkl_dg.napari.worker import CancelFlag, Cancelled, RunFailure

#: least time between two updates of the layers, progress bar and status (≤ 10/s)
DISPLAY_INTERVAL_S = 0.1
#: how often the status is renewed while a final denoising pass runs, ms
PASS_TICK_MS = 1000


@dataclass
class RunState:
    """Book-keeping of the run in progress: what the controller counts and reports."""

    started: float = field(default_factory=time.perf_counter)
    frames: int = 0  # frames streamed (all counted, not all shown)
    total: int = 0  # steps of the run, as the last frame said
    index: int = 0  # the last frame's step (in its part) and its part's name, as
    part: str = ""  # RunView.progress gives them: a compared method's own count
    status: str = "running"  # running, cancelling, done, cancelled, failed, error
    cancel_reason: str = ""  # why the run was cancelled, if not by the Cancel button
    metadata: dict = field(default_factory=dict)  # what a cancelled run had established
    finished: dict = field(default_factory=dict)  # parts it had finished (compared methods)
    #: each part's first frame: (when it arrived, its step); the ETA's rate is taken from
    #: there on, since the first step also carries the run's preparation (PSF, RL start)
    first: dict = field(default_factory=dict)


class RunView(Protocol):
    """What one run shows in the viewer; the controller calls it in the GUI thread."""

    #: the run in a few words for the status line, e.g. "Restoring 'cells' with PKL"
    label: str

    def frame_key(self, record: Any) -> Hashable:
        """The part of the run a frame belongs to (a stack's block, a compared method)."""

    def progress(self, record: Any) -> tuple[int, int, str]:
        """(steps done, steps in all, the part named: "" or e.g. "PKL"); the controller
        times the steps itself (:func:`eta_text`). A view may also give ``seconds_after(record,
        seconds_left)``: the seconds of its parts still to come, or None (Compare's)."""

    def show(self, record: Any, contrast: bool = True) -> bool:
        """Put a frame into its layer (and set its contrast); False if it has nowhere to go."""

    def finish(self, result: Any, seconds: float) -> str:
        """Show the run's result; return the status line."""

    def cancelled(self, state: RunState) -> str:
        """Mark what the cancelled run left; return what it left in words ("" if nothing)."""

    def failed(self, state: RunState, message: str) -> str:
        """The run stopped on a user-fixable problem (``message``): drop what no longer
        belongs, mark what it left; return that in words ("" if nothing)."""


def eta_seconds(first: tuple[float, int] | None, index: int, total: int) -> float | None:
    """Seconds left in a part, from the steps since its ``first`` frame (when it arrived,
    its step): the first step also holds the run's preparation (PSF, model, the rough RL
    estimate), which made the estimate after it 2–4× too long. None until a second frame."""
    if first is None or index <= first[1]:
        return None
    return (time.perf_counter() - first[0]) / (index - first[1]) * (total - index)


def eta_text(first: tuple[float, int] | None, index: int, total: int) -> str:
    """"ETA n s" (:func:`eta_seconds`); "ETA …" until a second frame."""
    left = eta_seconds(first, index, total)
    return "ETA …" if left is None else f"ETA {left:.0f} s"


def progress_widgets() -> tuple[QProgressBar, QLabel]:
    """The progress bar (steps done, time left; "idle") and the word-wrapped status line
    a dock widget lays out for its :class:`RunController`."""
    progress = QProgressBar()
    progress.setRange(0, 1)
    progress.setValue(0)
    progress.setFormat("idle")
    progress.setTextVisible(True)
    progress.setToolTip("Steps done and estimated time left.")
    status = QLabel("")
    status.setWordWrap(True)
    return progress, status


class RunController(QObject):
    """Runs one generator function at a time in a worker thread and shows it.

    Signals: ``finished(status)`` with "done", "cancelled", "failed" or "error";
    ``frame_shown(index)`` after a frame went into the layers (throttled, see the module).
    Attributes: ``run`` (the :class:`RunState` of the last run), ``view`` (its
    :class:`RunView`) and ``last_error``.
    """

    finished = Signal(str)
    frame_shown = Signal(int)

    def __init__(self, progress: QProgressBar, status: QLabel,
                 cancel_button: QPushButton) -> None:
        super().__init__()
        self.progress = progress
        self.status = status
        self.cancel_button = cancel_button
        self.last_error: str | None = None
        self.run: RunState | None = None
        self.view: RunView | None = None
        self._worker = None
        self._flag: CancelFlag | None = None
        self._pending = None  # newest record not yet shown
        self._shown_at: float | None = None  # perf_counter of the last display update
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._flush)
        self._pace: StepPace | None = None  # of the run in progress, if its steps differ
        self._shown = None  # the record in the layers, progress bar and status
        self._tick = QTimer(self)  # renews the status while a final pass runs
        self._tick.setInterval(PASS_TICK_MS)
        self._tick.timeout.connect(self._renew)
        self._ui_alive = True  # False once the widget's Qt objects are deleted (closed)
        status.destroyed.connect(self._ui_deleted)

    def _ui_deleted(self, *_args) -> None:
        self._ui_alive = False
        self._timer.stop()
        self._tick.stop()
        if self._flag is not None:
            self._flag.set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until the worker has finished."""
        return self._worker is not None

    def start(self, view: RunView, frames: Callable[..., Any], *args: Any,
              pace: StepPace | None = None) -> None:
        """Run ``frames(*args, cancel=flag)`` (a generator function) in a worker thread.

        Parameters
        ----------
        view
            What the run shows: its frames and result go to ``view``.
        frames
            Generator function yielding records (as ``view`` reads them) and returning the
            result, a :class:`~pkl_dg.napari.worker.RunFailure` or a
            :class:`~pkl_dg.napari.worker.Cancelled`.
        *args
            Passed to ``frames`` before the ``cancel`` keyword.
        pace
            The time its steps take, where they differ (see the module); None: alike.
        """
        self.run = RunState()
        self.view = view
        self._pace, self._shown = pace, None
        self.last_error = None
        self._pending = None
        self._shown_at = None
        self._flag = CancelFlag()
        worker = thread_worker(frames, start_thread=False)(*args, cancel=self._flag)
        worker.yielded.connect(self._on_frame)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.warned.connect(self._on_warned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the first frame (PSF, model loading)
        self.progress.setFormat("preparing…")
        self.status.setText(f"{view.label}…")
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

    # ------------------------------------------------------------------ display
    def _on_frame(self, record) -> None:
        run = self.run
        if run is None or run.status != "running" or not self._ui_alive:
            return  # being cancelled (a frame finished meanwhile) or closed
        now = time.perf_counter()
        if self._pace is not None:
            self._pace.observe(record, now)
        run.frames += 1
        index, run.total, part = self.view.progress(record)
        run.index, run.part = index, part
        run.first.setdefault(part, (now, index))
        pending = self._pending
        if pending is not None and self.view.frame_key(pending) != self.view.frame_key(record):
            self.view.show(pending, contrast=False)  # a part's last frame always shows
        self._pending = record
        wait = 0.0 if self._shown_at is None else \
            DISPLAY_INTERVAL_S - (time.perf_counter() - self._shown_at)
        if wait <= 0:  # the first frame at once, then at most one per interval
            self._flush()
        elif not self._timer.isActive():
            self._timer.start(max(1, int(wait * 1000)))

    def _flush(self) -> None:
        """Show the newest frame: layer, contrast, progress and status in one update."""
        self._timer.stop()
        record, self._pending = self._pending, None
        run = self.run
        if record is None or run is None or not self._ui_alive:
            return
        if not self.view.show(record):
            return
        self._shown_at = time.perf_counter()
        self._shown = record
        index = self._show_progress()
        self.frame_shown.emit(index)

    def _show_progress(self) -> int:
        """Progress bar and status of the record shown; returns its step index."""
        record, run = self._shown, self.run
        index, total, part = self.view.progress(record)
        self.progress.setRange(0, total)
        self.progress.setValue(index)
        pace = self._pace
        if run.status == "running" and self._ui_alive:
            open_ended = getattr(self.view, "open_ended", lambda _r: False)(record)
            if open_ended:  # an automatic count: the total is only its cap
                text = f"iteration {index} · stops at the noise level (at most {total})"
                self.progress.setRange(0, 0)
            elif pace is None:
                text = f"step {index}/{total} · {eta_text(run.first.get(part), index, total)}"
                left = eta_seconds(run.first.get(part), index, total)
                after = left is not None and getattr(self.view, "seconds_after", None)
                if after and (rest := after(record, left)):  # compared methods still to come
                    text += f" · all done in ≈ {left + rest:.0f} s"
            else:
                text = pace.status(record, run.started, time.perf_counter())
            text = f"{part + ' ' if part else ''}{text}"
            self.progress.setFormat(text)
            self.status.setText(f"{self.view.label}: {text}.")
        if pace is not None and run.status == "running" and pace.in_final_pass(record):
            if not self._tick.isActive():
                self._tick.start()
        else:
            self._tick.stop()
        return index

    def _renew(self) -> None:
        """The status of a final pass in progress, a second later."""
        run = self.run
        if run is None or run.status != "running" or not self._ui_alive or self._shown is None:
            self._tick.stop()
            return
        self._show_progress()

    # ------------------------------------------------------------------ outcomes
    def _on_returned(self, result) -> None:
        run = self.run
        if not self._ui_alive:  # the widget was closed: nothing to show
            run.status = "cancelled"  # a result nobody can see any more
            return
        if isinstance(result, Cancelled):
            run.metadata, run.finished = result.metadata, result.finished
            self._flush()  # the last streamed estimate
            self._show_cancelled()
            return
        if isinstance(result, RunFailure):
            run.metadata = result.metadata
            self._flush()
            run.status = "failed"
            kept = self.view.failed(run, result.message)
            self.last_error = result.message
            show_error(result.message)
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("failed")
            self.status.setText(f"Failed: {result.message}{' (' + kept + ')' if kept else ''}")
            return
        self._timer.stop()
        self._tick.stop()
        self._pending = None
        elapsed = time.perf_counter() - run.started
        message = self.view.finish(result, elapsed)
        run.status = "done"
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat(f"done in {elapsed:.1f} s")
        self.status.setText(message)

    def _show_cancelled(self) -> None:
        run = self.run
        run.status = "cancelled"
        kept = self.view.cancelled(run)
        # a run in parts (compared methods) counts the stopped part's own steps: all
        # frames against the last part's total read 'cancelled at step 469/13'
        step = run.index if run.part else run.frames
        where = f"{run.part + ' ' if run.part else ''}step {step}/{run.total or '?'}"
        self.progress.setFormat(f"cancelled at {where}")
        why = f" ({run.cancel_reason})" if run.cancel_reason else ""
        said = f"at {where}" if run.part else f"after {run.frames} step(s)"
        self.status.setText(f"Cancelled {said}{why}{'; ' + kept if kept else ''}.")

    # napari's thread_worker is meant to turn a worker's warnings and exceptions into
    # notifications, but in napari 0.9.2 it does not: its notifying mixin sits after
    # superqt's worker class, whose __init__ does not chain to it, so the mixin never
    # connects. The run relays both itself (one notification each: tested).
    def _on_warned(self, show_warning_args: tuple) -> None:
        """A warning raised inside the run (saturated pixels, negative values, …), shown as
        a plain napari warning notification with its message only.

        Not ``notification_manager.receive_warning``: that makes a WarningNotification,
        whose text (napari's terminal copy of every notification, at its default
        *Console notification level*) reads ``file.py:273: ModelMismatchWarning: …!``, a
        source line and a trailing '!' of napari's formatting; and it shows a text once
        per session, so a second run with the same problem said nothing. (The core says
        each problem once per run, a comparison once per comparison.)
        The worker thread itself prints nothing (superqt sends its warnings here).
        """
        if self._ui_alive:
            show_warning(str(show_warning_args[0]))  # the Warning (or str) warned

    def _on_errored(self, exc: Exception) -> None:
        """An unexpected exception of the run (expected ones return a RunFailure)."""
        self._timer.stop()
        self._tick.stop()
        self._pending = None
        self.run.status = "error"
        if not self._ui_alive:
            return
        notification_manager.receive_error(type(exc), exc, exc.__traceback__)
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.progress.setFormat("error")
        self.status.setText(f"Error: {exc}")

    def _on_finished(self) -> None:
        self._tick.stop()
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
