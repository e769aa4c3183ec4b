"""What a comparison shows in the viewer: one result layer per method (napari, no Qt widgets).

:class:`CompareView` is the :class:`~pkl_dg.napari.run_controller.RunView` of the Compare
methods widget: every streamed frame of a method goes into the layer
``"<input> [compare: <method>]"`` (made on its first frame with the input's scale, translate, units
and axis labels, updated in place afterwards), and the finished results replace them with
their metadata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image

from pkl_dg.napari.controls import short_method_label
from pkl_dg.napari.worker import ComparedRun, MethodFrame

if TYPE_CHECKING:
    from pkl_dg.napari.run_controller import RunState


def result_layer_name(input_name: str, method: str) -> str:
    """The name of ``method``'s result layer for the input layer ``input_name``:
    ``"<input> [compare: <method>]"``, never the PKL Deconvolution widget's output name
    ``"<input> [<method>]"``, so that a comparison does not replace that widget's result
    (it did: comparing PKL on an image removed the restored layer and its std layer)."""
    return f"{input_name} [compare: {short_method_label(method)}]"


def geometry_of(layer: Image, n: int) -> dict[str, Any]:
    """Scale, translate, units and axis labels of ``layer``'s last ``n`` axes."""
    return {"scale": layer.scale[-n:], "translate": layer.translate[-n:],
            "units": layer.units[-n:], "axis_labels": layer.axis_labels[-n:]}


class CompareView:
    """What a comparison shows (a :class:`~pkl_dg.napari.run_controller.RunView`): one layer
    per method, ``"<input> [compare: <method>]"``, with the input's geometry; ``result`` is the
    :class:`~pkl_dg.napari.worker.ComparedRun` once done."""

    def __init__(self, viewer: Any, input_layer: Image, methods: list[str],
                 origin: str, plane: tuple[int, ...] = ()) -> None:
        self.viewer = viewer
        self.input_layer = input_layer
        self.origin = origin
        self.layers: dict[str, Image] = {}
        self.result: ComparedRun | None = None
        #: the index of the compared plane in a stack's leading axes (() for a 2D image)
        self.plane = tuple(plane)
        where = f" (its displayed plane {self.plane}, in 2D)" if self.plane else ""
        self.label = (f"Comparing {len(methods)} method(s) on '{input_layer.name}'{where} "
                      f"with {origin}")

    def frame_key(self, frame: MethodFrame) -> str:
        """The method a frame belongs to."""
        return frame.method

    def progress(self, frame: MethodFrame) -> tuple[int, int, float, str]:
        """Steps of the running method, done and in all, the seconds it took, its name."""
        rec = frame.record
        return rec.index, rec.total, frame.seconds, short_method_label(frame.method)

    def show(self, frame: MethodFrame, contrast: bool = True) -> bool:
        """Put a frame into its method's layer."""
        self.put(frame.method, frame.record.image, contrast)
        return True

    def put(self, method: str, image: np.ndarray, contrast: bool = True) -> Image:
        """Write ``image`` into ``method``'s layer (made, or remade if removed)."""
        image = np.asarray(image, dtype=np.float32)
        layer = self.layers.get(method)
        if layer is None or layer not in self.viewer.layers:
            name = result_layer_name(self.input_layer.name, method)
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            layer = self.viewer.add_image(image, name=name, colormap="gray",
                                          **geometry_of(self.input_layer, image.ndim))
            self.layers[method] = layer
        else:
            layer.data = image
        lo, hi = np.percentile(image, [0.5, 99.8])
        if contrast and hi > lo:
            layer.contrast_limits = (float(lo), float(hi))
        return layer

    def finish(self, result: ComparedRun, seconds: float) -> str:
        """Put every method's result and metadata into its layer; the status line."""
        self.result = result
        for method, restored in result.comparison.results.items():
            meta = dict(restored.metadata)
            meta["napari"] = {**meta.get("napari", {}), "input_layer": self.input_layer.name,
                              "plane": list(self.plane)}
            self.put(method, restored.image).metadata = meta
        return (f"Compared {len(result.comparison.results)} method(s) in {seconds:.1f} s "
                f"with {self.origin}.")

    def cancelled(self, state: RunState) -> str:
        """The layers keep the last estimates."""
        return "the result layers hold the last estimates" if self.layers else ""

    def failed(self, state: RunState, message: str) -> str:
        """Nothing to drop: every layer is its method's latest estimate."""
        return self.cancelled(state)
