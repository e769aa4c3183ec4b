"""The PKL Deconvolution widget under real conditions, driven as a user would (Xvfb).

A busy machine (a CPU-bound process started by the test), fast Richardson–Lucy runs, many
PSFs tried on a large image, cancel, close, and errors: what the user sees must stay live
and match the run. Timing bounds are the issue's (UI gap ≤ 250 ms measured with a 50 ms
timer, cancel ≤ 1 s). On a machine other jobs oversubscribe, the event loop's own jitter
(measured first, with nothing running) is added to the gap bound.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from qtpy.QtCore import Qt, QTimer  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("napari_config_dir")]
PLUGIN, WIDGET = "napari-pkl-dg", "PKL Deconvolution"


@pytest.fixture
def busy_process():
    """One competing CPU-bound process for the duration of the test."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def viewer_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells")
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    yield viewer, widget
    if widget.is_running:
        widget.cancel()
        qtbot.waitUntil(lambda: not widget.is_running, timeout=30000)


def click(qtbot, button) -> None:
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def run_clicked(qtbot, widget, timeout=300000) -> str:
    with qtbot.waitSignal(widget.run_finished, timeout=timeout) as blocker:
        click(qtbot, widget.run_button)
    return blocker.args[0]


def machine_jitter(qtbot, seconds: float = 3.0) -> float:
    """Longest gap of the 50 ms timer with nothing running: what this (shared, possibly
    oversubscribed) machine itself adds to any gap, beyond the timer's own 50 ms."""
    with UiClock() as idle:
        qtbot.wait(int(seconds * 1000))
    return max(0.0, idle.longest_gap - 0.05)


def gap_limit(qtbot) -> float:
    """250 ms (the issue's bound) plus the machine's own jitter, so a loaded CI machine
    does not fail the test while a GUI stall of our making (seconds, before) still does."""
    jitter = machine_jitter(qtbot)
    print(f"machine jitter without a run: {jitter * 1000:.0f} ms")
    return 0.25 + jitter


class UiClock:
    """A 50 ms QTimer in the GUI thread: the longest gap between its ticks is how long
    the user waited for the interface."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def __enter__(self) -> "UiClock":
        self.ticks.append(time.perf_counter())
        self.timer.start(50)
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()
        self.ticks.append(time.perf_counter())

    @property
    def longest_gap(self) -> float:
        return float(np.diff(self.ticks).max())


# ---------------------------------------------------------------- live UI
def test_fast_rl_run_keeps_the_ui_live_and_throttled(viewer_widget, qtbot):
    """300 RL iterations on 256²: ≤ 10 display updates per second, the last frame shown,
    the event loop never blocked for more than 250 ms."""
    viewer, widget = viewer_widget
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 300
    widget.controls["threads"].value = 1
    shown: list[int] = []
    formats: list[str] = []
    widget.controls["rl_iterations"].value = 2
    t0 = time.perf_counter()
    with UiClock() as first:  # the output layer is created: napari's cost, once
        assert run_clicked(qtbot, widget) == "done"
    print(f"first run (new output layer): {time.perf_counter() - t0:.2f} s, longest UI gap "
          f"{first.longest_gap * 1000:.0f} ms")
    widget.controls["rl_iterations"].value = 300
    limit = gap_limit(qtbot)
    widget.frame_shown.connect(shown.append)
    widget.frame_shown.connect(lambda _i: formats.append(widget.progress.format()))
    t0 = time.perf_counter()
    with UiClock() as clock:
        assert run_clicked(qtbot, widget) == "done"
    seconds = time.perf_counter() - t0
    print(f"RL 300 it. 256²: {seconds:.1f} s, {len(shown)} display updates, longest UI gap "
          f"{clock.longest_gap * 1000:.0f} ms")
    assert clock.longest_gap <= limit
    assert len(shown) <= seconds * 10 + 2
    assert shown == sorted(shown) and shown[0] == 1
    assert all(f.startswith("step ") and "ETA" in f for f in formats)
    assert widget.runner.run.frames == 300
    out = widget.output_layer
    assert out.metadata["settings"]["rl_iterations"] == 300 and out.metadata["threads"] == 1
    assert widget.progress.format().startswith("done in")


def test_default_pkl_run_keeps_the_ui_live(viewer_widget, qtbot):
    """The default PKL run (shipped prior, 4 samples): UI gap ≤ 250 ms."""
    viewer, widget = viewer_widget
    steps = widget.controls["steps"]
    default_steps = steps.value
    steps.value = 1  # creates the output and std layers (napari's cost, once)
    assert run_clicked(qtbot, widget) == "done"
    steps.value = default_steps
    limit = gap_limit(qtbot)
    t0 = time.perf_counter()
    with UiClock() as clock:
        assert run_clicked(qtbot, widget) == "done"
    print(f"default PKL: {time.perf_counter() - t0:.1f} s, longest UI gap "
          f"{clock.longest_gap * 1000:.0f} ms")
    assert clock.longest_gap <= limit
    assert "cells [PKL] std" in viewer.layers


# ---------------------------------------------------------------- cancel and close
def _long_step_settings(widget) -> None:
    """Steps of 120 data-consistency sub-iterations each (several seconds per step)."""
    widget.controls["sub_iterations"].value = 120
    widget.controls["discrepancy"].value = 0.0  # always run all of them
    widget.controls["steps"].value = 15


def test_cancel_inside_a_long_step_on_a_busy_machine(viewer_widget, qtbot, busy_process):
    viewer, widget = viewer_widget
    _long_step_settings(widget)
    shown: list[int] = []
    widget.frame_shown.connect(shown.append)
    with qtbot.waitSignal(widget.run_finished, timeout=300000) as blocker:
        click(qtbot, widget.run_button)
        qtbot.waitUntil(lambda: len(shown) >= 1, timeout=240000)
        t_first = time.perf_counter()
        qtbot.wait(500)  # well inside step 2
        frames_at_cancel = widget.runner.run.frames
        t_cancel = time.perf_counter()
        click(qtbot, widget.cancel_button)
    latency = time.perf_counter() - t_cancel
    print(f"cancel latency {latency * 1000:.0f} ms (busy process running; "
          f"{t_cancel - t_first:.2f} s after step 1)")
    assert blocker.args == ["cancelled"]
    assert latency <= 1.0
    # it stopped inside the step: no further step completed
    assert widget.runner.run.frames == frames_at_cancel < 15
    assert widget.output_layer.metadata["status"] == "cancelled"
    assert "Cancelled after" in widget.status_label.text()


def test_closing_the_viewer_mid_run_cancels_quietly(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    _long_step_settings(widget)
    shown: list[int] = []
    widget.frame_shown.connect(shown.append)
    click(qtbot, widget.run_button)
    qtbot.waitUntil(lambda: len(shown) >= 1, timeout=240000)
    runner = widget.runner
    t0 = time.perf_counter()
    viewer.close()
    t_closed = time.perf_counter()
    qtbot.waitUntil(lambda: not runner.is_running, timeout=5000)
    stop = time.perf_counter() - t_closed
    print(f"viewer.close() took {1000 * (t_closed - t0):.0f} ms; the run stopped "
          f"{1000 * stop:.0f} ms later")
    assert stop <= 1.0
    assert runner.run.status == "cancelled"
    assert not [n for n in notes if "WARNING" in n[0].upper() or "ERROR" in n[0].upper()]


# ---------------------------------------------------------------- memory
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_trying_many_psfs_keeps_memory_flat(viewer_widget, qtbot):
    """12 Gaussian σ on a 1024² image: RSS grows ≤ 100 MB; closing the layer frees the
    forward models."""
    viewer, widget = viewer_widget
    base = np.asarray(viewer.layers["cells"].data, np.float32)
    big = viewer.add_image(np.tile(base, (4, 4))[:1024, :1024], name="big")
    widget.input_combo.value = big
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    sigma = widget.controls["psf_sigma"]
    sigma.value = 1.0
    assert run_clicked(qtbot, widget) == "done"  # warm-up: output layer, caches, allocator
    before = _rss_mb()
    sizes = []
    for k in range(12):
        sigma.value = 1.2 + 0.15 * k
        assert run_clicked(qtbot, widget) == "done"
        sizes.append(widget.operator_cache.nbytes)
    growth = _rss_mb() - before
    print(f"RSS growth over 12 PSFs at 1024²: {growth:.0f} MB; operator cache "
          f"{max(sizes) / 2**20:.0f} MB at most, {len(widget.operator_cache)} kept")
    assert growth <= 100
    assert max(sizes) <= widget.operator_cache.cap_bytes
    assert widget.operator_cache.created == 13 and widget.operator_cache.evicted > 0
    viewer.layers.remove("big")
    viewer.layers.remove(widget.output_layer)
    assert len(widget.operator_cache) == 0  # no open layer has that shape any more


# ---------------------------------------------------------------- state matches the view
def test_no_stale_std_layer_after_a_cancelled_rerun(viewer_widget, qtbot, constant_denoiser):
    viewer, widget = viewer_widget
    widget.model_cache.put("", "auto", constant_denoiser)
    widget.controls["steps"].value = 3
    widget.controls["samples"].value = 2
    assert run_clicked(qtbot, widget) == "done"
    assert "cells [PKL] std" in viewer.layers
    _long_step_settings(widget)
    shown: list[int] = []
    widget.frame_shown.connect(shown.append)
    with qtbot.waitSignal(widget.run_finished, timeout=120000):
        click(qtbot, widget.run_button)
        qtbot.waitUntil(lambda: len(shown) >= 1, timeout=120000)
        click(qtbot, widget.cancel_button)
    names = [layer.name for layer in viewer.layers]
    # the output the cancelled run wrote into says so in its name; no std beside it. The
    # finished result it had replaced (by its partial estimate) is back, with its std
    assert any(n.startswith("cells [PKL] (cancelled, at step ") for n in names)
    assert not any(n.startswith("cells [PKL] (cancelled") and n.endswith(" std")
                   for n in names)
    assert "cells [PKL]" in names and "cells [PKL] std" in names
    assert viewer.layers["cells [PKL]"].metadata["settings"]["steps"] == 3  # the first run's
    assert not any("previous run" in n for n in names)
    # a finished re-run replaces it; removing the output removes its std with it
    widget.controls["sub_iterations"].value = 2
    widget.controls["steps"].value = 2
    assert run_clicked(qtbot, widget) == "done"
    assert "cells [PKL] std" in viewer.layers
    assert viewer.layers["cells [PKL]"].metadata["settings"]["steps"] == 2  # the new result
    assert not any("previous run" in layer.name for layer in viewer.layers)
    viewer.layers.remove("cells [PKL]")
    assert "cells [PKL] std" not in viewer.layers and widget.output_layer is None


@pytest.mark.parametrize("bad", ["rgb", "line"])
def test_status_shows_errors_found_before_the_run(viewer_widget, qtbot, notes, bad):
    viewer, widget = viewer_widget
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    assert run_clicked(qtbot, widget) == "done"
    assert "restored in" in widget.status_label.text()
    if bad == "rgb":
        layer = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="rgb", rgb=True)
        expected = "RGB"
    else:
        layer = viewer.add_image(np.ones((1, 40), np.float32), name="line")
        expected = "not an image"
    widget.input_combo.value = layer
    click(qtbot, widget.run_button)
    assert not widget.is_running
    assert widget.status_label.text().startswith("Cannot run:")
    assert expected in widget.status_label.text()
    assert widget.progress.format() == "not started"
    assert any(expected in msg for sev, msg in notes if "ERROR" in sev.upper())


def test_threads_setting_in_the_widget(viewer_widget, qtbot):
    import torch

    from pkl_dg.threads import default_threads

    viewer, widget = viewer_widget
    ctrl = widget.controls["threads"]
    assert ctrl.value == 0 and "auto" in ctrl.label and not ctrl.native.isHidden()
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 2
    assert run_clicked(qtbot, widget) == "done"
    md = widget.output_layer.metadata
    assert md["threads"] == default_threads() and md["settings"]["threads"] == 0
    assert md["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "runtime default")
    before = torch.get_num_threads()
    try:
        ctrl.value = 1
        assert run_clicked(qtbot, widget) == "done"
        assert widget.output_layer.metadata["threads"] == 1
        assert "(1 CPU thread)" in widget.status_label.text()
    finally:
        torch.set_num_threads(before)
