"""The restoration run behind the dock widget, and the caches that make re-runs cheap (no Qt).

:func:`restoration_frames` is the generator that the widget hands to napari's
``thread_worker``: it prepares the PSF, the forward model and the network (all in the worker
thread, so the GUI stays responsive), then streams :class:`pkl_dg.restoration.StepRecord`
frames from :func:`pkl_dg.restoration.restore_iter` and returns its ``RestoreResult``.
Problems with the user's input (bad image, PSF larger than the image, missing model file, no
beads found) are returned as a :class:`RunFailure` carrying the message to show; anything
else propagates (napari reports it with its traceback).

Caches, shared by all runs of one widget and safe to use from the worker thread:

- :class:`OperatorCache`: one ``PSFConvolution`` per (image shape, PSF content), so a
  second run on the same layer reuses the operator and its cached OTF (no PSF FFT);
- :class:`ModelCache`: one loaded network per (model path, device), so re-runs don't reload.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generator

import numpy as np

from pkl_dg.settings import RestoreSettings

#: methods that need the diffusion prior
NETWORK_METHODS = ("pkl", "anscombe", "l2", "none")


@dataclass(frozen=True)
class RunFailure:
    """A run that stopped on a user-fixable problem; ``message`` says what to do."""

    message: str


@dataclass
class PsfRequest:
    """What the worker needs to build the PSF: the widget's source plus any layer data."""

    source: str  # a key of state.PSF_SOURCES
    data: np.ndarray | None = None  # PSF layer or bead image (a copy)
    bead_box: int = 25
    layer_name: str = ""


def psf_key(psf: np.ndarray) -> tuple:
    """Content key of a PSF array (cheap: PSFs are small)."""
    arr = np.ascontiguousarray(psf, dtype=np.float32)
    return (arr.shape, hashlib.sha1(arr.tobytes()).hexdigest())


class OperatorCache:
    """Forward models keyed on (image shape, PSF content).

    ``factory(psf)`` builds an operator, by default ``pkl_dg.physics.PSFConvolution(psf)``
    (which keeps its own OTF cache per padded shape, dtype and device). ``created`` counts
    operators built.
    """

    def __init__(self, factory: Callable[[np.ndarray], Any] | None = None) -> None:
        self._factory = factory or _default_operator
        self._ops: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.created = 0

    def get(self, image_shape: tuple[int, ...], psf: np.ndarray) -> Any:
        key = (tuple(image_shape), psf_key(psf))
        with self._lock:
            op = self._ops.get(key)
            if op is None:
                op = self._factory(psf)
                self._ops[key] = op
                self.created += 1
            return op

    def operators(self) -> list[Any]:
        with self._lock:
            return list(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)

    def clear(self) -> None:
        with self._lock:
            self._ops.clear()


def _default_operator(psf: np.ndarray) -> Any:
    from pkl_dg.physics import PSFConvolution

    return PSFConvolution(psf)


class ModelCache:
    """Loaded networks keyed on (model path, device); ``loads`` counts actual loads.

    Tests (or callers with a network in hand) can :meth:`put` a denoiser under a key.
    """

    def __init__(self, loader: Callable[[str, str], Any] | None = None) -> None:
        self._loader = loader or _default_loader
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def put(self, model_path: str, device: str, denoiser: Any) -> None:
        with self._lock:
            self._models[(model_path, device)] = (denoiser, _file_stamp(model_path))

    def get(self, model_path: str, device: str) -> Any:
        """The network for (path, device), loaded once; reloaded if the file changed."""
        with self._lock:
            key = (model_path, device)
            stamp = _file_stamp(model_path)
            entry = self._models.get(key)
            if entry is None or entry[1] != stamp:
                entry = (self._loader(model_path, device), stamp)
                self._models[key] = entry
                self.loads += 1
            return entry[0]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


def _file_stamp(model_path: str) -> float | None:
    """Modification time of a model file (or directory), None for the shipped default."""
    import os

    try:
        return os.stat(model_path).st_mtime if model_path else None
    except OSError:
        return None  # missing: the loader reports it


def _default_loader(model_path: str, device: str) -> Any:
    from pkl_dg.devices import resolve_device
    from pkl_dg.diffusion.model_io import load_model

    module, _config = load_model(model_path or None, resolve_device(device))
    return module


def resolve_psf(settings: RestoreSettings, request: PsfRequest, image_shape: tuple[int, int]
                ) -> tuple[np.ndarray | None, np.ndarray, RestoreSettings, dict[str, Any]]:
    """The PSF of a run: ``(array to pass as restore_iter's psf or None, final PSF, settings,
    notes for the metadata)``.

    The final PSF is computed by the same :func:`pkl_dg.physics.build_psf` call that
    ``restore_iter`` makes, so the cached operator built from it matches exactly.
    """
    from pkl_dg.napari import psf_sources
    from pkl_dg.physics import build_psf_info

    notes: dict[str, Any] = {"psf_source": request.source}
    if request.source in ("gaussian", "airy", "vectorial", "file"):
        settings = settings.replace(psf_kind=request.source)
        psf, notes["psf"] = build_psf_info(settings, image_shape)  # with its diagnostics
        return None, psf, settings, notes
    if request.data is None:
        raise ValueError(f"Pick a {'PSF' if request.source == 'layer' else 'bead'} image "
                         "layer for the PSF.")
    settings = settings.replace(psf_kind="array")
    if request.source == "layer":
        raw = np.asarray(request.data, dtype=np.float32)
        notes["psf_layer"] = request.layer_name
    elif request.source == "beads":
        raw, n = psf_sources.psf_from_beads(request.data, request.bead_box,
                                            f"bead layer '{request.layer_name}'")
        notes.update(psf_bead_layer=request.layer_name, psf_beads_used=n,
                     psf_bead_box=request.bead_box)
    else:
        raise ValueError(f"unknown PSF source {request.source!r}")
    psf, notes["psf"] = build_psf_info(settings, image_shape, raw)
    return raw, psf, settings, notes


def restoration_frames(image: np.ndarray, settings: RestoreSettings, psf_request: PsfRequest,
                       operators: OperatorCache, models: ModelCache,
                       ) -> Generator[Any, None, Any]:
    """Yield every step's ``StepRecord``; return the ``RestoreResult`` or a :class:`RunFailure`.

    ``image`` is a 2D copy of the plane to restore (the layer itself is never touched).
    Stopping (napari's ``worker.quit()``) simply stops asking for frames: the run ends after
    the step in progress.
    """
    from pkl_dg.restoration import restore_iter

    try:
        raw_psf, psf, settings, notes = resolve_psf(settings, psf_request, image.shape)
        operator = operators.get(image.shape, psf)
        denoiser = None
        if settings.method in NETWORK_METHODS:
            denoiser = models.get(settings.model, settings.device)
            notes["model"] = settings.model or "shipped default"
        steps = restore_iter(image, settings, psf=raw_psf, operator=operator,
                             denoiser=denoiser)
        first = next(steps)
    except StopIteration as stop:  # a run with no intermediate frame
        return _annotate(stop.value, notes)
    except (ValueError, FileNotFoundError) as exc:
        return RunFailure(str(exc))
    try:
        yield first
        while True:
            try:
                record = next(steps)
            except StopIteration as stop:
                return _annotate(stop.value, notes)
            except (ValueError, FileNotFoundError) as exc:
                return RunFailure(str(exc))
            yield record
    finally:
        steps.close()


def _annotate(result: Any, notes: dict[str, Any]) -> Any:
    if notes and isinstance(getattr(result, "metadata", None), dict):
        result.metadata.setdefault("napari", {}).update(notes)
    return result
