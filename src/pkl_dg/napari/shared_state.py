"""The settings and PSF the dock widgets of one viewer share, in memory (no Qt).

The PKL Deconvolution widget is where the user chooses the settings and the PSF (a
computed PSF, a PSF file, a PSF image layer, a bead image). When it opens it publishes,
for its viewer, a function that returns what a run would use right now: a
:class:`RunInputs` (its :class:`~pkl_dg.napari.state.WidgetState` and the
:class:`~pkl_dg.napari.worker.PsfRequest` with a copy of the PSF or bead layer's data);
it withdraws it when it closes. The Compare methods widget calls :func:`run_inputs` for
its viewer when it runs, so both widgets resolve the same PSF from the same source with
:func:`pkl_dg.napari.worker.resolve_psf`; neither reads the other's settings file.

Viewers are told apart by the viewer object itself (napari hands plugins a proxy of the
viewer; :func:`viewer_key` sees through it). The registry holds the publishing function
weakly, so a widget that is gone publishes nothing.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

from pkl_dg.napari.state import WidgetState
from pkl_dg.napari.worker import PsfRequest

#: who the inputs came from, as :attr:`RunInputs.origin` says it
MAIN_WIDGET = "the settings and PSF of the PKL Deconvolution widget"


@dataclass(frozen=True)
class RunInputs:
    """Settings and PSF source of a run, where they came from (for the status line), and
    the image layer whose sampling the settings' pixel size and Z step were filled from
    (the PKL Deconvolution widget's input; None with the defaults)."""

    state: WidgetState
    psf: PsfRequest
    origin: str = MAIN_WIDGET
    input_layer: Any = None


#: a published source: called with the deconvolution mode ("2d"/"3d") the run needs
InputsSource = Callable[[str], RunInputs]

_SOURCES: dict[int, weakref.WeakMethod] = {}


def viewer_key(viewer: Any) -> int:
    """The same key for a viewer and for the proxy napari gives a plugin of it."""
    return id(getattr(viewer, "__wrapped__", viewer))


def publish(viewer: Any, source: InputsSource) -> None:
    """Make the bound method ``source`` the provider of ``viewer``'s run inputs.

    Parameters
    ----------
    viewer
        The napari viewer (or its plugin proxy).
    source
        A bound method taking the mode and returning :class:`RunInputs`; held weakly.
    """
    _SOURCES[viewer_key(viewer)] = weakref.WeakMethod(source)


def withdraw(viewer: Any, source: InputsSource) -> None:
    """Remove ``source`` as ``viewer``'s provider (if it still is)."""
    key = viewer_key(viewer)
    ref = _SOURCES.get(key)
    if ref is not None and ref() in (None, source):
        del _SOURCES[key]


def run_inputs(viewer: Any, mode: str) -> RunInputs | None:
    """The current run inputs of ``viewer``'s PKL Deconvolution widget, or None when no
    such widget is open in that viewer.

    Parameters
    ----------
    viewer
        The napari viewer (or its plugin proxy).
    mode
        "2d" or "3d": which block of a bead image the PSF request copies.

    Raises
    ------
    ValueError
        When the widget's current settings are invalid or its PSF layer is not chosen.
    """
    ref = _SOURCES.get(viewer_key(viewer))
    source = ref() if ref is not None else None
    return None if source is None else source(mode)
