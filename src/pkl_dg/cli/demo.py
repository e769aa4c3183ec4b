"""``pkl-dg demo``: napari with the sample data and the PKL Deconvolution widget docked.

``pkl-dg demo --screenshot FILE`` runs a short restoration of the sample, saves a screenshot
of the whole window (widget included) as PNG and exits; it starts from default settings in a
temporary config dir, so the user's saved widget and napari settings are neither used nor
changed.
``--compare`` docks the Compare methods widget instead; with ``--screenshot`` it compares
RL, L2, Anscombe and PKL against the sample's ground truth, shows them in a grid with the PKL
Pearson residual, and prints the metrics table as markdown.
napari and Qt are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from pkl_dg.cli import add_threads_argument
from pkl_dg.settings import METHOD_LABELS, METHODS
from pkl_dg.settings_rules import uses_prior
from pkl_dg.threads import resolve_threads

PLUGIN = "napari-pkl-dg"
WIDGET = "PKL Deconvolution"
COMPARE_WIDGET = "Compare methods"
SAMPLE = "cells"
GROUND_TRUTH = "cells ground truth"
#: methods of ``--compare --screenshot``
COMPARED = ("rl", "l2", "anscombe", "pkl")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="open napari with sample data and the PKL Deconvolution widget",
        description="Open napari with the synthetic widefield sample (image, ground truth, "
        "PSF) and the PKL Deconvolution widget docked. With --screenshot, run a short "
        "restoration, save a screenshot of the whole window and exit (needs a display; "
        "use xvfb-run on a headless machine).")
    p.add_argument("--screenshot", metavar="FILE", help="PNG file to write, then exit")
    p.add_argument("--compare", action="store_true",
                   help="dock the Compare methods widget instead; with --screenshot, compare "
                   "RL, L2, Anscombe and PKL against the ground truth and print the table")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="method of the screenshot run (default: the settings' default, pkl)")
    p.add_argument("--steps", type=int, default=None,
                   help="diffusion steps (RL iterations with --method rl; both with "
                   "--compare) of the screenshot run (default: the settings' default)")
    p.add_argument("--model", default=None,
                   help="prior (.safetensors) for the screenshot run (default: the shipped one)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="give up the screenshot run after this many seconds (default 600)")
    p.add_argument("--size", default="1500x950",
                   help="window size WxH for the screenshot (default 1500x950)")
    add_threads_argument(p)
    p.set_defaults(func=run_demo)


def _check_display() -> None:
    """Qt aborts the process without a display; say what to do instead."""
    if sys.platform.startswith("linux") and not any(
            os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")):
        raise ValueError("no display found (DISPLAY is not set): napari needs one. On a "
                         "headless machine run it under a virtual display, e.g. "
                         "`xvfb-run -a pkl-dg demo --screenshot demo.png`")


def run_demo(args: argparse.Namespace) -> int:
    _check_display()
    if args.compare and args.method:
        raise ValueError("--method is for the PKL Deconvolution run: --compare runs "
                         + ", ".join(COMPARED))
    if args.screenshot:  # default settings, napari's included; the user's are left alone
        config = tempfile.mkdtemp(prefix="pkl-dg-demo-")
        os.environ["PKL_DG_CONFIG_DIR"] = config
        os.environ["NAPARI_CONFIG"] = os.path.join(config, "napari.yaml")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 1500x950, got {args.size!r}") from None

    import napari
    from napari.settings import get_settings

    if args.screenshot:  # no warning toasts over the canvas
        get_settings().application.gui_notification_level = "error"
    viewer = napari.Viewer(title="napari-pkl-dg demo")
    viewer.window.resize(width, height)
    viewer.open_sample(PLUGIN, SAMPLE)
    _dock, widget = viewer.window.add_plugin_dock_widget(
        PLUGIN, COMPARE_WIDGET if args.compare else WIDGET)
    if args.screenshot:
        _say("napari is up with the sample data and the widget")
    if args.compare:
        widget.input_combo.setCurrentText(SAMPLE)
        widget.gt_combo.setCurrentText(GROUND_TRUTH)
    if not args.screenshot:
        from qtpy.QtCore import QTimer

        QTimer.singleShot(200, viewer.reset_view)  # fit the image once the window has its size
        napari.run()
        return 0
    try:
        if args.compare:
            return _compare_screenshot_run(viewer, widget, args)
        return _screenshot_run(viewer, widget, args)
    finally:
        viewer.close()
        shutil.rmtree(config, ignore_errors=True)


def _say(msg: str) -> None:
    print(f"pkl-dg demo: {msg}", flush=True)


class _ProgressPrinter:
    """Prints what the widget shows (its progress bar: steps, ETA; else its status line)
    every ``interval`` seconds while it changes, so a run of minutes never looks hung."""

    def __init__(self, widget, interval: float = 2.0) -> None:
        from qtpy.QtCore import QTimer

        self.widget, self._last = widget, ""
        self.timer = QTimer()
        self.timer.timeout.connect(self.tick)
        self.timer.start(int(interval * 1000))

    def text(self) -> str:
        bar = getattr(self.widget, "progress", None)
        return bar.format() if bar is not None else self.widget.status_label.text()

    def tick(self) -> None:
        text = self.text()
        if text and text != self._last:
            self._last = text
            _say(text)

    def stop(self) -> None:
        self.timer.stop()
        self.tick()


def _run_to_end(widget, timeout: float) -> str:
    """Start ``widget.run()`` and spin Qt until ``run_finished``, printing progress: its
    status ("done", "cancelled", "error"), "not started", or "timed out" (the run is then
    cancelled)."""
    from qtpy.QtCore import QEventLoop, QTimer

    outcome: list[str] = []
    loop = QEventLoop()
    widget.run_finished.connect(lambda status: (outcome.append(status), loop.quit()))
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    if not widget.run():
        return "not started"
    printer = _ProgressPrinter(widget)
    loop.exec()
    printer.stop()
    if not outcome:
        widget.cancel()
        return "timed out"
    return outcome[0]


def _describe_run(widget, layer) -> str:
    s = widget.current_state().settings
    what = (f"{METHOD_LABELS[s.method]}, {s.steps} steps × {s.samples} sample(s)"
            if uses_prior(s) else f"{s.rl_iterations} Richardson–Lucy iterations")
    shape = " × ".join(map(str, layer.data.shape))
    return (f"restoring '{layer.name}' ({shape}) with {what} on "
            f"{resolve_threads(s.threads)} CPU thread(s)…")


def _failed(status: str, why: str) -> int:
    if status == "not started":
        print("pkl-dg demo: error: the restoration could not start (see above)",
              file=sys.stderr)
    else:
        print(f"pkl-dg demo: error: restoration {status}: {why or 'no result'}",
              file=sys.stderr)
    return 1


def _label_panel(layer) -> None:
    """Show the layer's name in its grid panel (napari ≥ 0.6: ``name_overlay``)."""
    overlay = getattr(layer, "name_overlay", None)
    if overlay is None:
        raise ValueError("this napari cannot label grid panels (no layer name overlay): "
                         "upgrade napari to 0.6 or later")
    overlay.visible = True


def _save(viewer, path: str) -> None:
    from qtpy.QtWidgets import QApplication

    viewer.reset_view()
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(path, canvas_only=False)
    print(f"wrote {path}")


def _screenshot_run(viewer, widget, args: argparse.Namespace) -> int:
    if args.method:
        widget.controls["method"].value = args.method
    if args.steps is not None:
        key = "steps" if uses_prior({"method": widget.controls["method"].value}) \
            else "rl_iterations"
        widget.controls[key].value = args.steps
    if args.model is not None:
        widget.controls["model"].line_edit.value = args.model
    if args.threads is not None:
        widget.controls["threads"].value = args.threads
    widget.input_combo.value = viewer.layers[SAMPLE]
    _say(_describe_run(widget, viewer.layers[SAMPLE]))
    status = _run_to_end(widget, args.timeout)
    if status != "done":
        return _failed(status, widget.last_error)
    # input and result side by side, each panel labelled with its layer's name
    shown = (SAMPLE, widget.output_layer.name)
    for layer in viewer.layers:
        layer.visible = layer.name in shown
        if layer.name in shown:
            _label_panel(layer)
    viewer.grid.enabled = True
    viewer.grid.shape = (1, -1)
    viewer.layers.selection.active = widget.output_layer
    _save(viewer, args.screenshot)
    return 0


def _compare_screenshot_run(viewer, widget, args: argparse.Namespace) -> int:
    for method, box in widget.method_boxes.items():
        box.setChecked(method in COMPARED)
    if args.steps is not None:
        widget.settings_overrides.update(steps=args.steps, rl_iterations=args.steps)
    if args.model is not None:
        widget.settings_overrides["model"] = args.model
    status = _run_to_end(widget, args.timeout)
    if status != "done":
        return _failed(status, widget.status_label.text())
    widget.residual_combo.setCurrentIndex(widget.residual_combo.findData("pkl"))
    residual = widget.add_residual()
    shown = {SAMPLE, GROUND_TRUTH, residual.name, *(r.name for r in widget.layers.values())}
    for layer in viewer.layers:
        layer.visible = layer.name in shown
        _label_panel(layer)
    widget.grid_box.setChecked(True)  # grid mode; the results share contrast limits
    viewer.layers.selection.active = widget.layers["pkl"]
    table = widget.table
    table.resizeColumnsToContents()
    widget.setMinimumWidth(table.horizontalHeader().length() + 60)  # the whole table shows
    cells = [[table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]]
    cells.append(["---"] * table.columnCount())
    cells += [[table.item(i, j).text() if table.item(i, j) else ""
               for j in range(table.columnCount())] for i in range(table.rowCount())]
    for row in cells:
        print("| " + " | ".join(row) + " |")
    _save(viewer, args.screenshot)
    return 0
