"""The dock widget's 'Pixel size' field and where its value comes from (magicgui, no Qt).

A layer that states its pixel size (a physical scale, or a file whose metadata has one)
fills the field, and the label says "from image". That value belongs to that image: it is
not saved as the user's setting, and a layer that states no pixel size gets the user's own
value back (the last one typed, or the saved one), labelled "assumed"; a value typed over an
image's own is labelled "set here". Before, the field kept whatever the previous image had
set, from one session to the next, and a run recorded that other file's pixel size for an
image that has none.
"""

from __future__ import annotations

from typing import Any

from napari.layers import Image

from pkl_dg.napari.controls import pixel_size_nm_of
from pkl_dg.napari.state import WidgetState
from pkl_dg.settings import field_specs

#: label suffixes: the image's own value; the user's, for an image that states none; the
#: user's, typed over the image's own
FROM_IMAGE, ASSUMED, SET_HERE = "from image", "assumed", "set here"


class PixelSizeField:
    """Tracks the 'Pixel size' control: the user's own value and the image's.

    Parameters
    ----------
    ctrl
        The magicgui float control of ``pixel_size_nm`` (nm).
    """

    def __init__(self, ctrl: Any) -> None:
        self.ctrl = ctrl
        self.base_label = ctrl.label
        spec = next(s for s in field_specs() if s.name == "pixel_size_nm")
        self._range = (spec.min, spec.max)
        #: the user's own value (nm): typed, loaded from the saved settings or the default
        self.own = float(ctrl.value)
        #: whether the field now shows the selected image's own pixel size
        self.from_image = False
        #: the selected layer's own pixel size (nm; None: it states none), "" for no layer
        self._stated: float | None | str = ""
        self._writing = False
        ctrl.changed.connect(self._on_changed)

    def _write(self, value: float, from_image: bool) -> None:
        self.from_image = from_image  # before the write: the widget saves on the change
        self._writing = True
        try:
            self.ctrl.value = value
        finally:
            self._writing = False

    def _on_changed(self, *_args: Any) -> None:
        if not self._writing:  # typed, or set by loading the saved settings or defaults
            self.own, self.from_image = float(self.ctrl.value), False
            self._relabel()

    def _relabel(self) -> None:
        if self._stated == "":
            self.ctrl.label = self.base_label
            return
        suffix = FROM_IMAGE if self.from_image else ASSUMED if self._stated is None else SET_HERE
        self.ctrl.label = f"{self.base_label}, {suffix}"

    def layer_changed(self, layer: Image | None) -> None:
        """Show ``layer``'s pixel size when it states one within the field's range, else
        the user's own value; label the field accordingly."""
        nm = None if layer is None else pixel_size_nm_of(layer)
        self._stated = "" if layer is None else nm
        if nm is not None and self._range[0] <= nm <= self._range[1]:
            self._write(nm, True)
        elif self.from_image:
            self._write(self.own, False)
        self._relabel()

    def as_saved(self, state: WidgetState) -> WidgetState:
        """``state`` as the settings file keeps it: with the user's own pixel size, never
        an image's."""
        if self.from_image:
            state.settings = state.settings.replace(pixel_size_nm=self.own)
        return state
