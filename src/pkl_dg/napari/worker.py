"""The runs behind the dock widgets, and the caches that make re-runs cheap (no Qt).

:func:`restoration_frames` is the generator that the PKL Deconvolution widget hands to
napari's ``thread_worker``: it builds the run's PSF once (:func:`resolve_psf`), the forward
model and the network (all in the worker thread, so the GUI stays responsive), then streams
:class:`pkl_dg.restoration.StepRecord` frames from :func:`pkl_dg.restoration.restore_iter`
and returns its ``RestoreResult``. :func:`comparison_frames` does the same for the Compare
methods widget around :func:`pkl_dg.compare.compare_iter`, with the same PSF resolution
(:func:`resolve_psf`).
Problems with the user's input (bad image, PSF larger than the image, missing model file, no
beads found) are returned as a :class:`RunFailure` carrying the message to show; anything
else propagates to the widget, which shows it as an error notification with its traceback.
A ``RuntimeError`` (torch's error for real faults, e.g. running out of memory) propagates as
a :class:`RunError`: superqt's worker takes a ``RuntimeError`` for a deleted worker and drops
it, without ending the run.

Cancelling: the widget sets a :class:`CancelFlag`. The run checks it between steps and,
through :class:`CancellableOperator`, before every convolution, so even a diffusion step of
120 data-consistency sub-iterations, the rough Richardson–Lucy estimate that starts a run
or one RL iteration on a large image stops within one convolution; the run then returns
:class:`Cancelled`.

The caches (:mod:`pkl_dg.napari.caches`), shared by all runs of one widget and safe to use
from the worker thread: :class:`OperatorCache`, forward models per (image shape, PSF), so a
second run on the same layer reuses the operator and its OTF; :class:`ModelCache`, loaded
networks per (model path, device). Both are bounded by bytes.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Generator

import numpy as np

from pkl_dg.compare import compare_iter
from pkl_dg.napari.caches import ModelCache, OperatorCache, psf_key
# imported here, with the widget, not in the first run's worker thread: importing torch
# there would hold the interpreter lock and freeze the GUI for seconds
from pkl_dg.inputs import psf_file_sampling, psf_sampling_overrides
from pkl_dg.physics.psf_cleaning import PSFWarning, sharpest_plane
from pkl_dg.psf_source import PSF, psf_from_settings
from pkl_dg.restoration import restore_iter
from pkl_dg.settings import PSF_KINDS, RestoreSettings
from pkl_dg.settings_rules import uses_prior

__all__ = ["CancelFlag", "CancellableDenoiser", "CancellableOperator", "Cancelled",
           "ComparedRun", "MethodFrame", "ModelCache", "OperatorCache", "PsfRequest",
           "RunCancelled", "RunError", "RunFailure", "comparison_frames", "psf_key",
           "resolve_psf", "restoration_frames"]

@dataclass(frozen=True)
class RunFailure:
    """A run that stopped on a user-fixable problem; ``message`` says what to do;
    ``steps_done`` and ``metadata`` as for :class:`Cancelled` (what it did before)."""

    message: str
    steps_done: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


class RunError(Exception):
    """An unexpected fault inside a run, re-raised from a ``RuntimeError`` (see the module
    docstring); the original is its ``__cause__``."""


class RunCancelled(Exception):
    """Raised inside a run (by :meth:`CancelFlag.check`) to stop it at once."""


@dataclass(frozen=True)
class Cancelled:
    """What a cancelled run returns: ``steps_done`` complete steps were streamed;
    ``metadata``, what the run had established (calibration, PSF, background, …)."""

    steps_done: int
    metadata: dict[str, Any] = field(default_factory=dict)
    #: what had ended before the cancel: a comparison's finished methods → their results
    finished: dict[str, Any] = field(default_factory=dict)


class CancelFlag:
    """A thread-safe "stop now" flag shared by the GUI thread and the run."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`RunCancelled` if the flag is set."""
        if self._event.is_set():
            raise RunCancelled


class CancellableOperator:
    """A forward operator that checks a :class:`CancelFlag` before each convolution.

    Everything but ``A`` and ``A_adjoint`` is the wrapped operator's (its PSF, OTF cache,
    ``adjoint_ones``), so ``restore_iter`` treats it as the operator it wraps.
    """

    def __init__(self, inner: Any, flag: CancelFlag) -> None:
        self._inner = inner
        self._flag = flag

    def A(self, x: Any) -> Any:  # noqa: N802 (operator notation)
        self._flag.check()
        return self._inner.A(x)

    def A_adjoint(self, z: Any) -> Any:  # noqa: N802
        self._flag.check()
        return self._inner.A_adjoint(z)

    def workspace(self, *args: Any, **kwargs: Any) -> "_CheckedWorkspace":
        """The wrapped operator's preallocated workspace (Richardson–Lucy's fast path),
        checking the flag too."""
        return _CheckedWorkspace(self._inner.workspace(*args, **kwargs), self._flag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CancellableDenoiser:
    """The network, checking a :class:`CancelFlag` before each forward.

    PKL's final denoising pass runs the network on 5 images and no convolution, so the
    operator's checks alone let Cancel wait for it (about 30 s at 2048² on a CPU). The
    wrapped network is ``__wrapped__`` (restore reads its name and configuration there);
    everything else is its own.
    """

    def __init__(self, inner: Any, flag: CancelFlag) -> None:
        self.__wrapped__ = inner
        self._flag = flag

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._flag.check()
        return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)


class _CheckedWorkspace:
    """A ``ConvWorkspace`` that checks a :class:`CancelFlag` before each A and Aᵀ."""

    def __init__(self, inner: Any, flag: CancelFlag) -> None:
        self._inner = inner
        self._flag = flag

    def A(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        self._flag.check()
        return self._inner.A(*args, **kwargs)

    def adjoint(self, *args: Any, **kwargs: Any) -> Any:
        self._flag.check()
        return self._inner.adjoint(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass
class PsfRequest:
    """What the worker needs to build the PSF: the widget's source plus any layer data."""

    source: str  # a key of state.PSF_SOURCES
    data: np.ndarray | None = None  # PSF layer or bead image (a copy)
    bead_box: int = 25
    layer_name: str = ""
    #: (Z step, pixel size) in nm that the PSF or bead layer states (None: it states none)
    stated_nm: tuple[float | None, float | None] = (None, None)
    #: the image's sampling settings that are its own ("pixel_size_nm", "z_step_nm"), not
    #: assumed: a PSF's stated sampling is resampled to those only
    image_known: frozenset[str] = frozenset()


def resolve_psf(settings: RestoreSettings, request: PsfRequest, image_shape: tuple[int, ...]
                ) -> tuple[PSF, np.ndarray, RestoreSettings, dict[str, Any]]:
    """The PSF of a run, built once from the widget's source.

    Parameters
    ----------
    settings
        The run's settings; their ``psf_kind`` is replaced by the source's.
    request
        The "PSF from" choice: one of the core's PSF models ("gaussian", "airy",
        "vectorial", "file"), or a layer or bead image whose array reaches the core as
        ``psf_kind="array"``.
    image_shape
        The shape of what the run restores.

    Returns
    -------
    (psf, kernel, settings, notes)
        The :class:`~pkl_dg.psf_source.PSF` to pass to ``restore_iter`` / ``compare_iter``
        and its kernel (for the operator cache and 'Show PSF'), the settings with their
        ``psf_kind``, and the notes for the result's metadata (``psf``: the PSF's info).
    """
    from pkl_dg.napari import psf_sources

    notes: dict[str, Any] = {"psf_source": request.source}
    settings = _psf_sampling(settings, request, notes)
    if request.source in PSF_KINDS:
        settings = settings.replace(psf_kind=request.source)
        psf = psf_from_settings(settings, image_shape)
        notes["psf"] = psf.metadata()  # with its diagnostics
        return psf, psf.kernel, settings, notes
    if request.data is None:
        raise ValueError(f"Pick a {'PSF' if request.source == 'layer' else 'bead'} image "
                         "layer for the PSF.")
    settings = settings.replace(psf_kind="array")
    if request.source == "layer":
        raw = np.asarray(request.data, dtype=np.float32)
        notes["psf_layer"] = request.layer_name
    elif request.source == "beads":
        raw = request.data
        if settings.mode == "2d" and raw.ndim == 3:  # a bead stack: its in-focus plane
            notes["psf_bead_plane"] = z = sharpest_plane(raw)
            raw = raw[z]
        raw, n = psf_sources.psf_from_beads(raw, request.bead_box,
                                            f"bead layer '{request.layer_name}'")
        notes.update(psf_bead_layer=request.layer_name, psf_beads_used=n,
                     psf_bead_box=request.bead_box)
    else:
        raise ValueError(f"unknown PSF source {request.source!r}")
    psf = psf_from_settings(settings, image_shape, raw)
    notes["psf"] = psf.metadata()
    return psf, psf.kernel, settings, notes


def _psf_sampling(settings: RestoreSettings, request: PsfRequest,
                  notes: dict[str, Any]) -> RestoreSettings:
    """A measured PSF's own sampling (file metadata, layer scale) as its 'PSF pixel size' /
    'PSF Z step' where those say "same as image", when the image's own sampling is known;
    when the image's is assumed the PSF stays on the image's grid, and a warning says so."""
    stated = request.stated_nm
    if request.source == "file" and settings.psf_path:
        stated = psf_file_sampling(settings.psf_path)
    over = psf_sampling_overrides(stated, settings, set())
    used = {n: v for n, v in over.items() if n.removeprefix("psf_") in request.image_known}
    if used:
        notes["psf_sampling_from_source"] = used
    unused = {n: v for n, v in over.items() if n not in used}
    if unused:
        notes["psf_sampling_not_applied"] = unused
        what = ", ".join(f"{v:g} nm {'pixels' if 'pixel' in n else 'planes'}"
                         for n, v in unused.items())
        warnings.warn(f"The PSF states {what}, but the image's own sampling is not known "
                      "(assumed): the PSF is used on the image's grid. Set the image's pixel "
                      "size and Z step, or the PSF's, to resample it.", PSFWarning,
                      stacklevel=2)
    return settings.replace(**used) if used else settings


def _prepare(image_shape: tuple[int, ...], settings: RestoreSettings,
             psf_request: PsfRequest, operators: OperatorCache, flag: CancelFlag
             ) -> tuple[PSF, RestoreSettings, dict[str, Any], Any]:
    """The PSF, settings with their ``psf_kind``, the notes for the metadata and the
    cancellable forward model of a run."""
    psf, kernel, settings, notes = resolve_psf(settings, psf_request, image_shape)
    flag.check()
    return psf, settings, notes, CancellableOperator(operators.get(image_shape, kernel), flag)


def restoration_frames(image: np.ndarray, settings: RestoreSettings, psf_request: PsfRequest,
                       operators: OperatorCache, models: ModelCache, axes: str | None = None,
                       cancel: CancelFlag | None = None) -> Generator[Any, None, Any]:
    """Yield every step's ``StepRecord``; return the ``RestoreResult``, a :class:`RunFailure`
    or, once ``cancel`` is set, :class:`Cancelled`.

    ``image`` is a copy of the block(s) to restore (the layer itself is never touched);
    ``axes`` its axes where known (a whole stack: its channels are calibrated one by one).
    The flag is checked between steps and before every convolution inside a step.
    """
    flag = cancel if cancel is not None else CancelFlag()
    done = 0
    steps = None
    try:
        psf, settings, notes, operator = _prepare(image.shape, settings, psf_request,
                                                  operators, flag)
        denoiser = None
        if uses_prior(settings):
            denoiser = CancellableDenoiser(models.get(settings.model, settings.device), flag)
            notes["model"] = settings.model or "shipped default"
        flag.check()
        steps = restore_iter(image, settings, psf=psf, operator=operator, denoiser=denoiser,
                             axes=axes)
        for record in steps:
            yield record
            done += 1
            flag.check()
        return _annotate(steps.result, notes)
    except (RunCancelled, ValueError, FileNotFoundError) as exc:
        established = {} if steps is None else {**steps.metadata, "napari": notes}
        if isinstance(exc, RunCancelled):
            return Cancelled(done, established)
        return RunFailure(str(exc), done, established)
    except RuntimeError as exc:
        raise RunError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if steps is not None:
            steps.close()


@dataclass(frozen=True)
class MethodFrame:
    """One streamed frame of a comparison: the method, its step and the seconds the method
    has run so far."""

    method: str
    record: Any  # pkl_dg.restoration.StepRecord
    seconds: float


@dataclass(frozen=True)
class ComparedRun:
    """What a finished comparison returns: the results, the seconds per method, and the
    settings and :class:`~pkl_dg.psf_source.PSF` every method ran with."""

    comparison: Any  # pkl_dg.compare.Comparison
    seconds: dict[str, float]
    settings: RestoreSettings
    psf: PSF


def comparison_frames(image: np.ndarray, methods: list[str], settings: RestoreSettings,
                      psf_request: PsfRequest, operators: OperatorCache, models: ModelCache,
                      denoiser: Any = None, cancel: CancelFlag | None = None
                      ) -> Generator[MethodFrame, None, Any]:
    """Run :func:`pkl_dg.compare.compare_iter` with the PSF of ``psf_request``; yield a
    :class:`MethodFrame` per step; return a :class:`ComparedRun`, a :class:`RunFailure` or,
    once ``cancel`` is set, :class:`Cancelled`.

    The PSF is built once by :func:`resolve_psf`, as for a restoration, and every method
    runs with that :class:`~pkl_dg.psf_source.PSF`. ``denoiser`` replaces the network of
    the model cache (tests).
    """
    flag = cancel if cancel is not None else CancelFlag()
    done = 0
    steps = None
    try:
        psf, settings, notes, operator = _prepare(image.shape, settings, psf_request,
                                                  operators, flag)
        if denoiser is None and any(uses_prior({"method": m}) for m in methods):
            denoiser = CancellableDenoiser(models.get(settings.model, settings.device), flag)
        flag.check()
        steps = compare_iter(image, methods, settings, psf=psf, operator=operator,
                             denoiser=denoiser)
        seconds: dict[str, float] = {}
        current, t0 = None, time.perf_counter()
        for method, record in steps:
            if method != current:
                if current is not None:
                    seconds[current] = time.perf_counter() - t0
                current, t0 = method, time.perf_counter()
            yield MethodFrame(method, record, time.perf_counter() - t0)
            done += 1
            flag.check()
        if current is not None:
            seconds[current] = time.perf_counter() - t0
        for result in steps.result.results.values():
            _annotate(result, dict(notes))
        return ComparedRun(steps.result, seconds, settings, psf)
    except RunCancelled:
        finished = {} if steps is None else dict(steps.finished)
        for result in finished.values():
            _annotate(result, dict(notes))
        return Cancelled(done, finished=finished)
    except (ValueError, FileNotFoundError) as exc:
        return RunFailure(str(exc))
    except RuntimeError as exc:
        raise RunError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if steps is not None:
            steps.close()


def _annotate(result: Any, notes: dict[str, Any]) -> Any:
    if notes and isinstance(getattr(result, "metadata", None), dict):
        result.metadata.setdefault("napari", {}).update(notes)
    return result
