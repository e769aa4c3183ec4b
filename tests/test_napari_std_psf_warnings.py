"""The std and PSF layers' geometry and look, and how a run's warnings reach the user.

A new-user trial (/work/exp12/trial3): the std layer, when shown, was an opaque viridis map
that covered the result, and it and the PSF layer had the axis labels '-3', '-2', '-1'
instead of the image's (z, y, x); a ModelMismatchWarning raised in the run showed as a toast
plus a terminal line 'worker.py:273: ModelMismatchWarning: …!' (napari's WarningNotification
text: a source line and a trailing '!').
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

GEOMETRY = {"scale": (0.3, 0.13, 0.13), "translate": (1.5, 0.0, 0.0),
            "units": ("micrometer",) * 3, "axis_labels": ("z", "y", "x")}


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=False)


def _geometry(layer):
    return (tuple(float(v) for v in layer.scale), tuple(float(v) for v in layer.translate),
            tuple(str(u) for u in layer.units), tuple(layer.axis_labels))


def test_std_layer_has_the_results_axes_and_overlays_it(viewer):
    from pkl_dg.napari.output import show_std

    rng = np.random.default_rng(0)
    out = viewer.add_image(rng.random((4, 16, 12)).astype(np.float32), name="cells [PKL]",
                           colormap="gray", **GEOMETRY)
    std = show_std(viewer, out, rng.random((4, 16, 12)).astype(np.float32), 4)
    assert _geometry(std) == _geometry(out)
    assert tuple(std.axis_labels) == ("z", "y", "x")  # not '-3', '-2', '-1'
    assert std.visible is False  # shown only when asked for
    # shown, it adds onto the result (zero std adds nothing) instead of covering it
    assert std.blending == "additive"
    assert np.allclose(std.colormap.map(np.array([0.0]))[0, :3], 0.0)
    assert std.colormap.name == "magenta"
    desc = std.metadata["description"]
    assert "4 single posterior samples" in desc and "not a calibrated error bar" in desc
    # a result in magenta gets a std in another colour
    other = viewer.add_image(np.zeros((4, 16, 12), np.float32), name="b [PKL]",
                             colormap="magenta", **GEOMETRY)
    assert show_std(viewer, other, np.ones((4, 16, 12), np.float32), 3).colormap.name == "green"


def test_std_layer_updated_in_place_follows_the_result(viewer):
    """A second run writes into the same std layer: it takes the result's geometry again
    and keeps a colormap the user chose."""
    from pkl_dg.napari.output import show_std

    out = viewer.add_image(np.ones((4, 16, 12), np.float32), name="c [PKL]", **GEOMETRY)
    std = show_std(viewer, out, np.ones((4, 16, 12), np.float32), 4)
    std.colormap = "cyan"
    out.scale = (0.5, 0.2, 0.2)
    again = show_std(viewer, out, np.full((4, 16, 12), 2.0, np.float32), 4)
    assert again is std and _geometry(again) == _geometry(out)
    assert again.colormap.name == "cyan"


@pytest.mark.parametrize("psf_shape, labels", [((5, 9, 9), ("z", "y", "x")),
                                               ((9, 9), ("y", "x"))])
def test_psf_layer_has_the_images_axis_labels(viewer, psf_shape, labels):
    from pkl_dg.napari.psf_layer import PSF_LAYER, show_psf_layer

    image = viewer.add_image(np.zeros((4, 16, 12), np.float32), name="img", **GEOMETRY)
    psf = np.full(psf_shape, 1.0 / np.prod(psf_shape), np.float32)
    layer = show_psf_layer(viewer, psf, image, {"description": "test"})
    n = len(psf_shape)
    assert layer.name == PSF_LAYER and tuple(layer.axis_labels) == labels
    assert tuple(float(v) for v in layer.scale) == GEOMETRY["scale"][-n:]
    # shown again for a 2D/3D PSF of the other kind: the labels follow
    other = np.full((3, 7, 7) if n == 2 else (7, 7), 1.0, np.float32)
    layer = show_psf_layer(viewer, other / other.sum(), image, {"description": "test"})
    assert tuple(layer.axis_labels) == GEOMETRY["axis_labels"][-other.ndim:]


@pytest.fixture
def dispatched():
    """The napari notifications dispatched during the test (the objects themselves)."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


class _NoView:
    """A run that shows nothing (RunController's view)."""

    label = "Testing"

    def frame_key(self, record):
        return 0

    def progress(self, record):
        return 1, 1, ""

    def show(self, record, contrast=True):
        return True

    def finish(self, result, seconds):
        return "done"


def _warning_run(cancel):
    from pkl_dg.guidance.stopping import ModelMismatchWarning

    warnings.warn("The data are not explained down to their noise.", ModelMismatchWarning)
    yield 1
    return "result"


def test_a_runs_warning_is_one_plain_notification_each_run(qtbot, dispatched, capfd):
    """The worker's warning reaches the user as one napari warning whose text is the
    message alone (no 'worker.py:273: ModelMismatchWarning: … !'), nothing of ours goes
    to the terminal, and the same warning in a second run is shown again."""
    from qtpy.QtWidgets import QPushButton

    from pkl_dg.napari.run_controller import RunController, progress_widgets

    progress, status = progress_widgets()
    button = QPushButton()
    controller = RunController(progress, status, button)
    message = "The data are not explained down to their noise."
    for run in (1, 2):
        with qtbot.waitSignal(controller.finished, timeout=10000) as blocker:
            controller.start(_NoView(), _warning_run)
        assert blocker.args == ["done"]
        qtbot.waitUntil(lambda: len([n for n in dispatched if message in n.message]) == run,
                        timeout=5000)
    notes = [n for n in dispatched if message in n.message]
    assert len(notes) == 2, [str(n) for n in dispatched]  # one per run
    for note in notes:
        assert str(note.severity) == "warning" and note.message == message
        assert "!" not in str(note) and ".py:" not in str(note)
    terminal = capfd.readouterr()
    assert ".py:" not in terminal.err and "ModelMismatchWarning" not in terminal.err
    for widget in (progress, status, button):
        widget.deleteLater()
