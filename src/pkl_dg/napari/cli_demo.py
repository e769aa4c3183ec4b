"""``pkl-dg demo``: napari with the sample data and the PKL Deconvolution widget docked.

``pkl-dg demo --screenshot FILE`` runs a short restoration of the sample, saves a screenshot
of the whole window (widget included) as PNG and exits; it starts from default settings in a
temporary config dir, so the user's saved widget settings are neither used nor changed.
napari and Qt are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from pkl_dg.settings import METHODS

PLUGIN = "napari-pkl-dg"
WIDGET = "PKL Deconvolution"
SAMPLE = "cells"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="open napari with sample data and the PKL Deconvolution widget",
        description="Open napari with the synthetic widefield sample (image, ground truth, "
        "PSF) and the PKL Deconvolution widget docked. With --screenshot, run a short "
        "restoration, save a screenshot of the whole window and exit (needs a display; "
        "use xvfb-run on a headless machine).")
    p.add_argument("--screenshot", metavar="FILE", help="PNG file to write, then exit")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="method of the screenshot run (default: the settings' default, pkl)")
    p.add_argument("--steps", type=int, default=None,
                   help="diffusion steps (RL iterations with --method rl) of the screenshot "
                   "run (default: the settings' default)")
    p.add_argument("--model", default=None,
                   help="prior (.safetensors) for the screenshot run (default: the shipped one)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="give up the screenshot run after this many seconds (default 600)")
    p.add_argument("--size", default="1500x950",
                   help="window size WxH for the screenshot (default 1500x950)")
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
    if args.screenshot:
        os.environ["PKL_DG_CONFIG_DIR"] = tempfile.mkdtemp(prefix="pkl-dg-demo-")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 1500x950, got {args.size!r}") from None

    import napari

    viewer = napari.Viewer(title="napari-pkl-dg demo")
    viewer.window.resize(width, height)
    viewer.open_sample(PLUGIN, SAMPLE)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    if not args.screenshot:
        from qtpy.QtCore import QTimer

        QTimer.singleShot(200, viewer.reset_view)  # fit the image once the window has its size
        napari.run()
        return 0
    try:
        return _screenshot_run(viewer, widget, args)
    finally:
        viewer.close()


def _screenshot_run(viewer, widget, args: argparse.Namespace) -> int:
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    if args.method:
        widget.controls["method"].value = args.method
    if args.steps is not None:
        key = "rl_iterations" if widget.controls["method"].value == "rl" else "steps"
        widget.controls[key].value = args.steps
    if args.model is not None:
        widget.controls["model"].line_edit.value = args.model
    widget.input_combo.value = viewer.layers[SAMPLE]
    outcome: list[str] = []
    loop = QEventLoop()
    widget.run_finished.connect(lambda status: (outcome.append(status), loop.quit()))
    QTimer.singleShot(int(args.timeout * 1000), loop.quit)
    if not widget.run():
        print("pkl-dg demo: error: the restoration could not start (see above)",
              file=sys.stderr)
        return 1
    loop.exec()
    if outcome != ["done"]:
        if not outcome:
            widget.cancel()
        why = widget.last_error if outcome and widget.last_error else "no result"
        print(f"pkl-dg demo: error: restoration {outcome[0] if outcome else 'timed out'}: "
              f"{why}", file=sys.stderr)
        return 1
    # input and result side by side
    for layer in viewer.layers:
        layer.visible = layer.name in (SAMPLE, widget.output_layer.name)
    viewer.grid.enabled = True
    viewer.grid.shape = (1, -1)
    viewer.layers.selection.active = widget.output_layer
    viewer.reset_view()
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(args.screenshot, canvas_only=False)
    print(f"wrote {args.screenshot}")
    return 0
