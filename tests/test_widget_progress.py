"""The ETA while a PKL run streams into the dock widget (needs a display: xvfb-run).

A new-user trial: at 2048² with one sample per step the bar sat at "step 40/41 · ETA 3 s"
for half a minute: the final denoising pass runs the network on five images, a step on one.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("napari_config_dir")]
PLUGIN, WIDGET = "napari-pkl-dg", "PKL Deconvolution"


def _camera_image(n=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    photons = 60 * np.exp(-((yy - n / 2) ** 2 + (xx - 0.4 * n) ** 2) / 300.0)
    return (400 + rng.poisson(photons + 1) * 4).astype(np.uint16)


class BatchTimedDenoiser:
    """A denoiser whose time grows with the images it is given (as a network's does)."""

    def __init__(self, inner, per_image=0.15):
        self.inner, self.per_image = inner, per_image

    def __call__(self, x, t):
        time.sleep(self.per_image * len(x))
        return self.inner(x, t)


@pytest.fixture
def docked(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return viewer, widget


def _eta_s(text: str) -> float:
    found = re.search(r"ETA (\d+) s", text)
    assert found, text
    return float(found.group(1))


def test_eta_counts_the_final_denoising_pass(docked, qtbot, constant_denoiser):
    """One sample per step: a step is one network image, the final pass five. While the
    pass runs the status says so and its ETA is not that of one more step."""
    viewer, widget = docked
    per_image = 0.15
    widget.model_cache.put("", "auto", BatchTimedDenoiser(constant_denoiser, per_image))
    widget.input_combo.value = viewer.add_image(_camera_image(), name="cells")
    c = widget.controls
    c["steps"].value, c["samples"].value, c["sub_iterations"].value = 4, 1, 2
    assert c["final_noise"].value > 0  # the default: a final pass
    shown = []
    widget.frame_shown.connect(lambda i: shown.append(
        (i, widget.runner.run.total, widget.status_label.text(), time.perf_counter())))
    with qtbot.waitSignal(widget.run_finished, timeout=60000) as blocker:
        assert widget.run()
    ended = time.perf_counter()
    assert blocker.args[0] == "done"
    total = shown[-1][1]
    assert total == 5  # 4 steps and the final pass
    before_pass = [s for s in shown if s[0] == total - 1]
    assert before_pass, shown
    _i, _n, text, at = before_pass[-1]
    assert "final denoising pass" in text
    took = ended - at  # the pass: five images' worth of network time
    assert took > 4 * per_image
    assert _eta_s(text) >= 0.5 * took, (text, took)


def test_the_final_pass_status_says_when_it_outlasts_its_estimate(docked, qtbot,
                                                                  constant_denoiser):
    """A pass far slower than estimated (here: the network slows down for it) never claims
    a few seconds left: once its estimate is spent the status gives the time it has run."""
    viewer, widget = docked

    class SlowAtTheEnd(BatchTimedDenoiser):
        def __call__(self, x, t):
            self.per_image = 0.02 if len(x) == 1 else 1.0  # the pass sends 4 phases at once
            return super().__call__(x, t)

    widget.model_cache.put("", "auto", SlowAtTheEnd(constant_denoiser))
    widget.input_combo.value = viewer.add_image(_camera_image(), name="cells")
    c = widget.controls
    c["steps"].value, c["samples"].value, c["sub_iterations"].value = 4, 1, 2
    with qtbot.waitSignal(widget.run_finished, timeout=60000):
        assert widget.run()
        qtbot.waitUntil(lambda: "so far" in widget.status_label.text(), timeout=30000)
        text = widget.status_label.text()
    assert "final denoising pass" in text and "longer than estimated" in text, text


def test_richardson_lucys_automatic_count_shows_no_total(docked, qtbot):
    """The automatic count runs to the noise level (tens of iterations), but the bar said
    "step 160/500 · ETA 61 s" just before "done": 500 is only its cap."""
    viewer, widget = docked
    widget.input_combo.value = viewer.add_image(_camera_image(128), name="cells")
    widget.controls["method"].value = "rl"
    widget.controls["rl_iterations"].value = 0  # automatic
    widget.controls["threads"].value = 1
    texts = []
    widget.runner.frame_shown.connect(lambda _i: texts.append(widget.runner.progress.format()))
    with qtbot.waitSignal(widget.run_finished, timeout=60000):
        assert widget.run()
    assert texts and all("stops at the noise level" in t and "/" not in t for t in texts), texts


def test_the_eta_is_not_taken_from_the_first_steps_preparation():
    """The first frame carries the run's preparation (PSF, model, the rough RL estimate): an
    ETA from the run's start after it said 280 s where 69 s were left (3D PKL)."""
    from pkl_dg.napari.run_controller import eta_text

    now = time.perf_counter()
    assert eta_text(None, 1, 10) == "ETA …"
    assert eta_text((now, 1), 1, 10) == "ETA …"  # one frame: no rate yet
    # frame 1 arrived 2 s ago, frame 3 now: 1 s per step, 7 steps left
    assert eta_text((now - 2.0, 1), 3, 10) == "ETA 7 s"
