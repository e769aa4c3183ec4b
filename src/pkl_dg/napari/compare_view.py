"""What a comparison shows in the viewer: one result layer per method (napari, no Qt widgets).

:class:`CompareView` is the :class:`~pkl_dg.napari.run_controller.RunView` of the Compare
methods widget: every streamed frame of a method goes into the layer
``"<input> [compare: <method>]"`` (made on its first frame with the input's scale,
translate, units and axis labels, updated in place afterwards), and the finished results
replace them with their metadata. A plane of a stack is placed as the PKL Deconvolution
widget places its displayed plane: the layer keeps the stack's leading axes (length 1
each), translated to the compared plane, and its name ends in ``@z`` (``@z,c``…), so it
shows at that plane only and names it; its residual layer likewise.

Every layer's ``metadata["status"]`` says what it holds: "running", "done" (a finished
method), "cancelled" or "failed" (the last estimate of the method that was running, with
``steps_completed`` and ``steps_total``). A new comparison removes the layers an earlier
one left for the same input and plane (:func:`remove_earlier`) when its first frame
arrives, so a cancelled comparison never leaves old results of other methods beside its
new partial ones, and one that fails or is cancelled before any frame (an unreadable PSF
file) leaves the earlier results as they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image

from pkl_dg.napari.controls import pixel_size_nm_of, short_method_label
from pkl_dg.napari.output import plane_geometry, plane_suffix, same_layer
from pkl_dg.napari.worker import ComparedRun, MethodFrame
from pkl_dg.settings import METHODS
from pkl_dg.settings_rules import settings_record

if TYPE_CHECKING:
    from pkl_dg.napari.run_controller import RunState


def result_layer_name(input_name: str, method: str, plane: tuple[int, ...] = ()) -> str:
    """The name of ``method``'s result layer for the input layer ``input_name``:
    ``"<input> [compare: <method>]"``, never the PKL Deconvolution widget's output name
    ``"<input> [<method>]"``, so that a comparison does not replace that widget's result
    (it did: comparing PKL on an image removed the restored layer and its std layer).
    A plane of a stack (``plane``, its index in the leading axes) is named as that widget
    names its plane outputs: ``" @1"``, ``" @1,3"`` appended."""
    return f"{input_name} [compare: {short_method_label(method)}]{plane_suffix(plane)}"


def residual_layer_name(result_name: str) -> str:
    """The Pearson residual layer of the result layer ``result_name``."""
    return f"{result_name} residual"


def placed(image: np.ndarray, plane: tuple[int, ...]) -> np.ndarray:
    """A (Y, X) ``image`` as its layer holds it: one length-1 axis per axis of ``plane``."""
    return np.reshape(image, (1,) * len(plane) + np.shape(image)[-2:]) if plane else image


def add_plane_layer(viewer: Any, image: np.ndarray, name: str, like: Image,
                    plane: tuple[int, ...], **kwargs: Any) -> Image:
    """Add (or replace) the layer ``name`` holding the plane ``image`` at ``plane`` of the
    stack ``like`` (its geometry), with napari's ``add_image`` ``kwargs``."""
    if name in viewer.layers:
        viewer.layers.remove(name)
    data = placed(np.asarray(image, dtype=np.float32), plane)
    return viewer.add_image(data, name=name, **plane_geometry(like, data.ndim, plane), **kwargs)


def show_residual(viewer: Any, residual: np.ndarray, input_layer: Image,
                  plane: tuple[int, ...], method: str, result: Any) -> Image:
    """Add (or replace) the Pearson residual layer of ``method``'s result (a
    :class:`~pkl_dg.restoration.RestoreResult`), shown from −3 to 3 at ``plane``; its
    metadata name the forward model it was computed with."""
    name = residual_layer_name(result_layer_name(input_layer.name, method, plane))
    meta = {"status": "done", "method": method, "units": "Pearson residual (σ)",
            "calibration": result.metadata["calibration"],
            "background_photons": result.metadata["background_photons"],
            "napari": {"input_layer": input_layer.name, "plane": list(plane)}}
    left_out = int(np.isnan(residual).sum())
    if left_out:
        meta["left_out"] = f"{left_out} saturated pixel(s): NaN, not in the data fit"
    return add_plane_layer(viewer, residual, name, input_layer, plane,
                           colormap="twilight_shifted", contrast_limits=(-3, 3),
                           metadata=meta)


def own_pixel_size(layer: Image, settings: Any, settings_layer: Any) -> Any:
    """``settings`` with the pixel size ``layer`` states (its scale or file), when it is not
    the layer the settings were filled from (``settings_layer``, the PKL widget's input,
    whose 'Pixel size' field the user may have set) and states another one; an optical or
    resampled PSF was otherwise computed for that other image's pixels without a word.

    Raises
    ------
    ValueError
        When the stated pixel size is outside the setting's range.
    """
    nm = pixel_size_nm_of(layer)
    if nm is None or same_layer(layer, settings_layer) \
            or abs(nm - settings.pixel_size_nm) <= 1e-5 * nm:
        return settings
    return settings.replace(pixel_size_nm=round(nm, 4))  # as the field holds it


def link_contrast(viewer: Any, layers: Any) -> None:
    """Give the result ``layers`` still in ``viewer`` one shared contrast range (their
    lowest and highest limits), so a side-by-side grid compares like with like."""
    shown = [layer for layer in layers if layer in viewer.layers]
    if len(shown) < 2:
        return
    lo = min(layer.contrast_limits[0] for layer in shown)
    hi = max(layer.contrast_limits[1] for layer in shown)
    for layer in shown:
        layer.contrast_limits = (lo, hi)


def remove_earlier(viewer: Any, input_name: str, plane: tuple[int, ...]) -> list[str]:
    """Remove the result and residual layers of any earlier comparison on the input
    ``input_name`` at ``plane`` (every method's); return their names."""
    gone = []
    for method in METHODS:
        name = result_layer_name(input_name, method, plane)
        for each in (name, residual_layer_name(name)):
            if each in viewer.layers:
                viewer.layers.remove(each)
                gone.append(each)
    return gone


def later_seconds(running: str, running_total: float, done: dict[str, float],
                  later: list[str]) -> float | None:
    """Seconds the ``later`` methods of a comparison will take: each diffusion method
    (L2, Anscombe, PKL, the unguided prior: the same steps and samples) as long as the mean
    of those timed so far (``done``, and the ``running`` one's projected
    ``running_total``); Richardson–Lucy, a second or so where they take several, is not
    counted. None while no diffusion method has been timed, or none comes later."""
    timed = [t for m, t in done.items() if m != "rl"]
    if running != "rl":
        timed.append(running_total)
    guided = [m for m in later if m != "rl"]
    if not timed or not guided:
        return None
    return len(guided) * sum(timed) / len(timed)


class CompareView:
    """What a comparison shows (a :class:`~pkl_dg.napari.run_controller.RunView`): one layer
    per method, ``"<input> [compare: <method>]"`` (``@plane``), at the compared plane of
    the input; ``result`` is the :class:`~pkl_dg.napari.worker.ComparedRun` once done."""

    def __init__(self, viewer: Any, input_layer: Image, methods: list[str],
                 origin: str, plane: tuple[int, ...] = (), settings: Any = None) -> None:
        self.viewer = viewer
        self.input_layer = input_layer
        self.origin = origin
        self.settings = settings  # for the metadata of unfinished layers
        self.methods = list(methods)  # in the order they run
        self.layers: dict[str, Image] = {}
        #: (steps, steps in all) of the frame each method's layer holds
        self.steps: dict[str, tuple[int, int]] = {}
        self.result: ComparedRun | None = None
        #: after a cancel: the methods that had finished → their RestoreResult
        self.finished: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}  # each method's running time, as streamed
        self._earlier_removed = False  # an earlier comparison's layers (on the first frame)
        #: the index of the compared plane in a stack's leading axes (() for a 2D image)
        self.plane = tuple(plane)
        where = f" (its displayed plane {self.plane}, in 2D)" if self.plane else ""
        self.label = (f"Comparing {len(methods)} method(s) on '{input_layer.name}'{where} "
                      f"with {origin}")

    def frame_key(self, frame: MethodFrame) -> str:
        """The method a frame belongs to."""
        return frame.method

    def progress(self, frame: MethodFrame) -> tuple[int, int, str]:
        """Steps of the running method, done and in all, and which method of how many it
        is ("method 2 of 4, PKL:")."""
        rec, name = frame.record, short_method_label(frame.method)
        if frame.method in self.methods and len(self.methods) > 1:
            name = f"method {self.methods.index(frame.method) + 1} of {len(self.methods)}, {name}:"
        return rec.index, rec.total, name

    def seconds_after(self, frame: MethodFrame, left: float) -> float | None:
        """Seconds the methods after the running one will take (:func:`later_seconds`),
        given ``left`` seconds for it; None when there is no estimate yet."""
        if frame.method not in self.methods:
            return None
        i = self.methods.index(frame.method)
        done = {m: self.seconds[m] for m in self.methods[:i] if m in self.seconds}
        return later_seconds(frame.method, frame.seconds + left, done, self.methods[i + 1:])

    def open_ended(self, frame: MethodFrame) -> bool:
        """Richardson–Lucy's automatic count: its total is only the cap."""
        return frame.method == "rl" and getattr(self.settings, "rl_iterations", 1) == 0

    def show(self, frame: MethodFrame, contrast: bool = True) -> bool:
        """Put a frame into its method's layer; the methods before it are done."""
        for method, layer in self.layers.items():
            if method != frame.method and layer.metadata.get("status") == "running":
                done = self.steps.get(method, (0, 0))[0]  # an automatic RL count ends early
                layer.metadata = {**layer.metadata, "status": "done",
                                  "steps_completed": done, "steps_total": done}
        self.put(frame.method, frame.record.image, contrast)
        self.steps[frame.method] = (frame.record.index, frame.record.total)
        self.seconds[frame.method] = frame.seconds
        return True

    def notes(self) -> dict[str, Any]:
        """The ``napari`` metadata entry: where the layers came from."""
        return {"input_layer": self.input_layer.name, "plane": list(self.plane)}

    def put(self, method: str, image: np.ndarray, contrast: bool = True) -> Image:
        """Write ``image`` (Y, X) into ``method``'s layer (made, or remade if removed)."""
        image = np.asarray(image, dtype=np.float32)
        layer = self.layers.get(method)
        if layer is None or layer not in self.viewer.layers:
            if not self._earlier_removed:
                remove_earlier(self.viewer, self.input_layer.name, self.plane)
                self._earlier_removed = True
            name = result_layer_name(self.input_layer.name, method, self.plane)
            layer = add_plane_layer(self.viewer, image, name, self.input_layer, self.plane,
                                    colormap="gray",
                                    metadata={"status": "running", "method": method,
                                              "napari": self.notes()})
            self.layers[method] = layer
        else:
            layer.data = placed(image, self.plane)
        lo, hi = np.percentile(image, [0.5, 99.8])
        if contrast and hi > lo:
            layer.contrast_limits = (float(lo), float(hi))
        return layer

    def finish(self, result: ComparedRun, seconds: float) -> str:
        """Put every method's result and metadata into its layer; the status line."""
        self.result = result
        for method, restored in result.comparison.results.items():
            self._show_result(method, restored)
        return (f"Compared {len(result.comparison.results)} method(s) in {seconds:.1f} s "
                f"with {self.origin}.")

    def _show_result(self, method: str, restored: Any) -> None:
        """A method's finished result and its run's metadata into its layer."""
        meta = dict(restored.metadata)
        meta["napari"] = {**meta.get("napari", {}), **self.notes()}
        meta["status"] = "done"
        if method in self.steps:  # an automatic RL count ends early
            meta["steps_completed"] = meta["steps_total"] = self.steps[method][0]
        self.put(method, restored.image).metadata = meta

    def cancelled(self, state: RunState) -> str:
        """Mark the running method's layer 'cancelled' (the methods before it are done)."""
        self.finished = dict(state.finished)
        for method, restored in self.finished.items():  # with their run's metadata
            self._show_result(method, restored)
        return self._mark_unfinished({"status": "cancelled"})

    def failed(self, state: RunState, message: str) -> str:
        """Mark the running method's layer 'failed', with the reason."""
        return self._mark_unfinished({"status": "failed", "error": message})

    def _mark_unfinished(self, status: dict[str, str]) -> str:
        running = [m for m, layer in self.layers.items()
                   if layer.metadata.get("status") == "running" and layer in self.viewer.layers]
        for method in running:
            done, total = self.steps.get(method, (0, 0))
            settings = {} if self.settings is None else settings_record(
                self.settings.replace(method=method))
            self.layers[method].metadata = {
                "method": method, **status, "steps_completed": done, "steps_total": total,
                **settings, "napari": self.notes()}
        if not self.layers:
            return ""
        finished = [short_method_label(m) for m in self.layers if m not in running]
        parts = [f"{short_method_label(m)} holds its last estimate "
                 f"(step {self.steps.get(m, (0, 0))[0]})" for m in running]
        if finished:
            parts.append(f"{', '.join(finished)} finished")
        return "; ".join(parts)
