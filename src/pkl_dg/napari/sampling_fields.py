"""The dock widget's 'Pixel size' and 'Z step' fields and where their values come from
(magicgui, no Qt).

A layer that states its sampling (a physical scale, or a file whose metadata has one) fills
the field, and the label says "from image". That value belongs to that image: it is not
saved as the user's setting, and a layer that states none gets the user's own value back
(the last one typed, or the saved one), labelled "assumed" (a Z step of 0 is "not given":
no label); a value typed over an image's own is labelled "set here". Before, the fields
kept whatever the previous image had set, from one session to the next, and a run recorded
that other file's sampling for an image that has none; the Z step was never read from the
image at all.
"""

from __future__ import annotations

from typing import Any, Callable

from napari.layers import Image

from pkl_dg.napari.controls import pixel_size_nm_of, z_step_nm_of
from pkl_dg.napari.state import WidgetState
from pkl_dg.settings import field_specs

#: label suffixes: the image's own value; the user's, for an image that states none; the
#: user's, typed over the image's own
FROM_IMAGE, ASSUMED, SET_HERE = "from image", "assumed", "set here"
#: the settings these fields hold, and how a layer states each (nm, None: it does not)
READERS: dict[str, Callable[[Image], float | None]] = {"pixel_size_nm": pixel_size_nm_of,
                                                       "z_step_nm": z_step_nm_of}


class SamplingField:
    """Tracks one sampling control: the user's own value and the image's.

    Parameters
    ----------
    ctrl
        The magicgui float control of the setting ``name`` (nm).
    name
        "pixel_size_nm" or "z_step_nm" (a key of :data:`READERS`).
    """

    def __init__(self, ctrl: Any, name: str) -> None:
        self.ctrl, self.name, self.read = ctrl, name, READERS[name]
        self.base_label = ctrl.label
        spec = next(s for s in field_specs() if s.name == name)
        self._range = (max(spec.min, 1e-9), spec.max)  # a stated 0 is no value
        #: the user's own value (nm): typed, loaded from the saved settings or the default
        self.own = float(ctrl.value)
        #: whether the field now shows the selected image's own value
        self.from_image = False
        #: the selected layer's own value (nm; None: it states none), "" for no layer
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
        if self._stated == "" or (not self.from_image and not self.ctrl.value):
            self.ctrl.label = self.base_label  # no layer, or a Z step not given
            return
        suffix = FROM_IMAGE if self.from_image else ASSUMED if self._stated is None else SET_HERE
        self.ctrl.label = f"{self.base_label}, {suffix}"

    def layer_changed(self, layer: Image | None) -> None:
        """Show ``layer``'s own value when it states one within the field's range, else
        the user's own value; label the field accordingly."""
        nm = None if layer is None else self.read(layer)
        self._stated = "" if layer is None else nm
        if nm is not None and self._range[0] <= nm <= self._range[1]:
            self._write(nm, True)
        elif self.from_image:
            self._write(self.own, False)
        self._relabel()


class SamplingFields:
    """The 'Pixel size' and 'Z step' fields of the widget's ``controls`` (by setting name)."""

    def __init__(self, controls: dict[str, Any]) -> None:
        self.fields = [SamplingField(controls[name], name) for name in READERS]

    def layer_changed(self, layer: Image | None) -> None:
        """See :meth:`SamplingField.layer_changed`."""
        for f in self.fields:
            f.layer_changed(layer)

    def known(self) -> frozenset[str]:
        """The settings whose value is the selected image's own, or typed over it (not
        assumed): a PSF's own sampling is resampled to these only."""
        return frozenset(f.name for f in self.fields if f._stated not in (None, ""))

    def as_saved(self, state: WidgetState) -> WidgetState:
        """``state`` as the settings file keeps it: with the user's own values, never an
        image's."""
        own = {f.name: f.own for f in self.fields if f.from_image}
        if own:
            state.settings = state.settings.replace(**own)
        return state
