"""Controls of the dock widget, generated from the settings schema (magicgui, no napari state).

:func:`make_control` turns one :class:`pkl_dg.settings.FieldSpec` into a magicgui control
with its label (and unit), tooltip (the schema's help plus the allowed range), bounds and
choices, and :func:`shown_fields` shows a control where the schema says its field applies,
so the widget never restates what the schema says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, LineEdit, SpinBox
from napari.layers import Image

from pkl_dg.inputs import non_square_pixels
from pkl_dg.napari.state import PSF_SOURCES
from pkl_dg.settings import CAMERA_FIELDS, METHOD_LABELS, PSF_KINDS, FieldSpec, field_specs
from pkl_dg.settings_rules import applies

if TYPE_CHECKING:
    import napari

GROUPS = ("Data", "PSF", "Calibration", "Guidance", "Sampler", "Model")
#: the titles of the groups' boxes in the widget
GROUP_TITLES = {"Data": "Data", "PSF": "PSF", "Calibration": "Photon calibration",
                "Guidance": "Guidance", "Sampler": "Sampler / iterations",
                "Model": "Model and device"}
#: text shown instead of a number at a field's minimum, where the minimum means "automatic"
SPECIAL_VALUE_TEXT = {
    "background": "auto",
    "psf_sigma_y": "same as σ",
    "psf_pixel_size_nm": "same as image",
    "psf_z_step_nm": "same as image",
    "z_step_nm": "not given",
    "tv_weight": "off",
    "discrepancy": "auto",
    "sub_iterations": "auto",
    "threads": "auto",
}
#: display names of choice values (the stored values stay the schema's keys)
CHOICE_LABELS = {
    "method": METHOD_LABELS,
    "mode": {"2d": "2D (plane by plane)", "3d": "3D (Z-stack volume)"},
    "step_rule": {"poisson": "Poisson-preconditioned", "adaptive": "adaptive (paper)"},
}
STEP_OVERRIDES = {"gain": 0.01, "read_noise": 0.1, "na": 0.01, "lam": 0.05}
FILE_FILTERS = {"model": "*.safetensors", "psf_path": "*.tif *.tiff *.npy"}

INPUT_TIP = ("Fluorescence image to restore (single channel, last two axes Y, X). For a "
             "stack or time series, 'Stack' chooses between the plane (or, in 3D mode, the "
             "volume) currently shown in the viewer and the whole stack, block by block.")
STACK_TIP = ("Restore only the plane shown in the viewer (in 3D mode: the Z-stack shown) "
             "into a 2D (3D) layer, or every plane (volume) of the stack one after the other "
             "into a layer of the stack's shape. Each block costs a full run.")


def fit_layer_names(combo: Any) -> Any:
    """Let a layer picker (magicgui ComboBox or QComboBox) be narrower than its longest
    layer name, which it then elides: by default a combo box is as wide as its longest
    entry, and one long file name widened the whole dock beyond the window, cutting off
    every control's right edge. Returns ``combo``."""
    from qtpy.QtWidgets import QComboBox

    native = getattr(combo, "native", combo)
    native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    native.setMinimumContentsLength(12)
    return combo


def psf_source_controls(choices: Any) -> tuple[ComboBox, ComboBox, ComboBox, SpinBox]:
    """The widget's own PSF controls: "PSF from", the PSF layer, the bead image, the bead box.

    Parameters
    ----------
    choices
        The image-layer choices callable of the two layer pickers
        (:func:`image_layer_choices`).
    """
    source = ComboBox(name="psf_source", label="PSF from",
                      choices=[(v, k) for k, v in PSF_SOURCES.items()],
                      tooltip="Where the point-spread function comes from. A PSF image layer "
                      "is used as is (normalised); from a bead image the isolated beads are "
                      "averaged. The Compare methods widget uses the same PSF.")
    psf_layer = fit_layer_names(ComboBox(
        name="psf_layer", label="PSF layer", choices=choices, nullable=True, value=None,
        tooltip="Image layer holding a measured or simulated PSF. In 2D mode a 3D stack "
        "gives its in-focus plane; in 3D mode it is the 3D PSF."))
    bead_layer = fit_layer_names(ComboBox(
        name="bead_layer", label="Bead image", choices=choices, nullable=True, value=None,
        tooltip="Image of sub-resolution beads; isolated beads are aligned to sub-pixel "
        "precision and averaged into the PSF. In 3D mode a bead Z-stack gives a 3D PSF."))
    bead_box = SpinBox(name="bead_box", label="Bead box (px)", min=5, max=255, step=2,
                       value=25, tooltip="Size of the window cut around each bead; beads "
                       "closer than half of it to another bead are skipped.")
    return source, psf_layer, bead_layer, bead_box


def psf_kind_of(source: str) -> str:
    """The core's PSF model for a "PSF from" choice (a key of ``state.PSF_SOURCES``): a PSF
    image layer or a bead average reaches the core as an array."""
    return source if source in PSF_KINDS else "array"


def shown_fields(values: Mapping[str, Any]) -> dict[str, bool]:
    """Which settings controls are shown, by field name.

    Parameters
    ----------
    values
        The controls' current values by settings field, ``psf_kind`` included
        (:func:`psf_kind_of` the "PSF from" choice).

    Returns
    -------
    dict
        Every field of the schema: shown where it applies (:func:`pkl_dg.settings.applies`),
        and the camera fields always: with calibration 'auto' they show the estimate a run
        makes (:class:`~pkl_dg.napari.calibration_panel.CalibrationPanel`).
    """
    return {spec.name: applies(spec.name, values) or spec.name in CAMERA_FIELDS
            for spec in field_specs()}


def short_method_label(method: str) -> str:
    return METHOD_LABELS[method].split(" (")[0]


def image_layer_choices(viewer: "napari.viewer.Viewer"):
    def choices(_widget=None):
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]
    return choices


def same_layer(a: Any, b: Any) -> bool:
    """Identity of layers (plugins get napari objects through proxies, so not ``is``)."""
    return a is not None and b is not None and a.unique_id == b.unique_id


#: decimals a field shows at least (an estimated gain of 0.055 e⁻/ADU must not read 0.06; a
#: file's pixel size of 42.6137 nm must not become 42.61 nm "set in the widget")
MIN_DECIMALS = {"gain": 4, "offset": 2, "read_noise": 3, "pixel_size_nm": 4}


def _float_step(spec: FieldSpec) -> float:
    if spec.name in STEP_OVERRIDES:
        return STEP_OVERRIDES[spec.name]
    hi = spec.max if spec.max is not None else 1e6
    for limit, step in ((0.1, 0.001), (1.0, 0.01), (10.0, 0.1), (100.0, 0.1)):
        if hi <= limit:
            return step
    return 1.0


def _decimals(value: float) -> int:
    """Decimal places needed to show ``value`` exactly (at most 6)."""
    text = repr(float(value))
    return 0 if "e" in text or "." not in text else min(len(text.split(".")[1].rstrip("0")), 6)


def make_control(spec: FieldSpec):
    """One magicgui control for a settings field (label with unit, tooltip with range)."""
    label = f"{spec.label} ({spec.unit})" if spec.unit else spec.label
    tip = spec.help
    if spec.min is not None and spec.max is not None and not spec.choices:
        low, high = ((f"{spec.min:g}", f"{spec.max:g}") if spec.type != "int"
                     else (str(int(spec.min)), str(int(spec.max))))  # not 2.14748e+09
        tip += f"\nRange {low} – {high}{' ' + spec.unit if spec.unit else ''}."
    common = {"name": spec.name, "label": label, "tooltip": tip}
    if spec.choices:
        names = CHOICE_LABELS.get(spec.name, {})
        return ComboBox(choices=[(names.get(c, c), c) for c in spec.choices],
                        value=spec.default, **common)
    if spec.type == "float":
        ctrl = FloatSpinBox(min=spec.min, max=spec.max, step=_float_step(spec),
                            value=spec.default, **common)
        places = max(_decimals(spec.default), MIN_DECIMALS.get(spec.name, 0))
        if places > ctrl.native.decimals():  # e.g. a refractive index of 1.515
            ctrl.native.setDecimals(places)
            ctrl.value = spec.default
    elif spec.type == "int":
        if spec.name in SPECIAL_VALUE_TEXT:  # superqt's int spin box shows no special text
            common["label"] += f" ({spec.min:g} = {SPECIAL_VALUE_TEXT[spec.name]})"
        return SpinBox(min=int(spec.min), max=int(spec.max), step=1, value=spec.default,
                       **common)
    elif spec.type == "bool":
        return CheckBox(value=spec.default, **common)
    elif spec.type == "str" and spec.name in FILE_FILTERS:
        ctrl = FileEdit(mode="r", filter=FILE_FILTERS[spec.name], **common)
        ctrl.line_edit.value = spec.default
        return ctrl
    elif spec.type == "str":
        return LineEdit(value=spec.default, **common)
    else:
        raise TypeError(f"no widget control for setting {spec.name} of type {spec.type}")
    if spec.name in SPECIAL_VALUE_TEXT:
        ctrl.native.setSpecialValueText(SPECIAL_VALUE_TEXT[spec.name])
    return ctrl


def settings_controls(exclude: tuple[str, ...] = ()
                      ) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """A control per settings field (:func:`make_control`) but those in ``exclude``:
    ``(name → control, group → its controls in schema order)``, groups in :data:`GROUPS`
    order first."""
    controls: dict[str, Any] = {}
    by_group: dict[str, list[Any]] = {g: [] for g in GROUPS}
    for spec in field_specs():
        if spec.name not in exclude:
            controls[spec.name] = make_control(spec)
            by_group.setdefault(spec.group, []).append(controls[spec.name])
    return controls, by_group


def read_control(ctrl) -> Any:
    return ctrl.line_edit.value.strip() if isinstance(ctrl, FileEdit) else ctrl.value


def write_control(ctrl, value: Any) -> None:
    if isinstance(ctrl, FileEdit):
        ctrl.line_edit.value = str(value)
    else:
        ctrl.value = value


def pixel_size_nm_of(layer: Image) -> float | None:
    """The layer's X pixel size in nm: from its scale when that has physical units, else
    from the file it was opened from (napari's built-in TIFF reader leaves a TIFF's
    resolution out of the scale); ``None`` when neither states one."""
    return _sampling_and_source(layer, -1)[0]


def z_step_nm_of(layer: Image) -> float | None:
    """The layer's Z step (plane spacing) in nm, read as :func:`pixel_size_nm_of` reads the
    pixel size; ``None`` for a layer with fewer than 3 axes or when nothing states one."""
    return _sampling_and_source(layer, -3)[0] if layer.ndim >= 3 else None


def _sampling_and_source(layer: Image, axis: int) -> tuple[float | None, str]:
    """(spacing along ``axis`` (-1: X, -3: Z) in nm or None, where it was read)."""
    nm = _scale_nm(layer, axis)
    if nm is not None:
        return nm, "the layer's scale"
    return _file_nm(layer, axis), "the metadata of the layer's file"


def _scale_nm(layer: Image, axis: int = -1) -> float | None:
    from pkl_dg.io.read import in_unit

    return in_unit(layer.scale[axis], layer.units[axis], "nm")


def _file_nm(layer: Image, axis: int = -1) -> float | None:
    """The spacing along ``axis`` (-1: X, -2: Y, -3: Z; nm) that the layer's source file
    states (read with this package's reader)."""
    from pkl_dg.io.read import open_image

    path = layer.source.path
    if not path:
        return None
    try:
        img = open_image(path)
    except (ValueError, OSError):  # not a file our reader knows: the note says "assumed"
        return None
    if axis == -3:
        return None if not img.z_step_nm else float(img.z_step_nm)
    return None if img.pixel_size_nm is None else float(img.pixel_size_nm[axis])


def pixel_size_note(layer: Image, settings: Any, warn: Callable[[str], Any]) -> str:
    """Where a run's pixel size (``settings.pixel_size_nm``) comes from, for its metadata.

    An optical PSF model ('airy', 'vectorial') computed at a pixel size the image does not
    carry is also passed to ``warn``: its width in pixels depends on that value; so are
    pixels that are not square (the PSF is built on square pixels of the X size).
    """
    used = settings.pixel_size_nm
    nm, where = _sampling_and_source(layer, -1)
    problem = non_square_pixels((_sampling_and_source(layer, -2)[0], nm), f"'{layer.name}'")
    if problem and settings.psf_kind != "none":
        warn(problem)
    if nm is None:
        if settings.psf_kind in ("airy", "vectorial"):
            warn(f"'{layer.name}' carries no physical pixel size: the {settings.psf_kind} PSF "
                 f"is computed for {used:g} nm pixels (the 'Pixel size' field). Check that "
                 "value, or the PSF's width in pixels is wrong.")
        return (f"{used:g} nm from the 'Pixel size' field, assumed: the layer has no physical "
                "pixel size")
    if abs(nm - used) <= 1e-5 * nm:  # the field holds 4 decimals
        return f"{used:g} nm from {where}"
    return f"{used:g} nm set in the widget ({where} says {nm:g} nm)"
