"""The photon-calibration part of the dock widget: the estimate, shown and editable.

With calibration 'auto' (the default) a run estimates gain, offset and read noise from the
image itself (:func:`pkl_dg.calibration.estimate_calibration`). The panel runs the same
estimate on what a run would calibrate on (:func:`calibration_sample`: the plane shown, a
volume's or a whole stack's middle plane) when the input changes or when *Estimate* is
pressed, and again when that changes (the deconvolution mode, Stack, or the plane shown in
the viewer: a quarter of a second after the last move of a slider), writes it into the
offset / gain / read-noise fields and says in a line under them that these values are an
estimate, from which plane (with the photon level they imply). Editing one of those fields
by hand switches calibration to 'manual', so what is shown is what the next run uses. An
estimate outside a field's range (the settings schema's bounds) is written nowhere: the
line and a napari notification give it, and a run with calibration 'auto' uses it. A gain
no camera has (outside :data:`CAMERA_GAIN_RANGE`), or a layer whose metadata says it is in
photons (a restoration), is kept as estimated, but the line and a notification say what
it suggests (an image already in photons, or rescaled) and what to give instead. After a
run the line says what calibration it used (:meth:`CalibrationPanel.show_used`). The
panel's messages stay in its line: the widget's status line is the runs'.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple

from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout

from pkl_dg.calibration import Calibration
from pkl_dg.inputs import estimate_image_calibration
from pkl_dg.napari.layer_input import selected_block
from pkl_dg.settings import CAMERA_FIELDS

#: conversion gains cameras have, e⁻/ADU: sCMOS and CCD about 0.1–10, an EMCCD at high EM
#: gain down to about 0.01; far outside, the image is not in the camera's units
CAMERA_GAIN_RANGE = (0.01, 1000.0)
#: how the panel's line of an estimate ends when the fields hold it
EDIT = " Edit a value to set it by hand."


class CalibrationSample(NamedTuple):
    """What a run would calibrate on: the layer's name, the data (a copied block, or the
    layer's whole array, which the estimate only reads one plane of), which plane of it
    the estimate fits, in words ("" for a single plane), and whether the layer says it is
    in photons already (a restoration's metadata: ``"units": "photons"``)."""

    name: str
    data: Any
    where: str
    in_photons: bool = False


def calibration_sample(viewer: Any, layer: Any, mode: str, whole_stack: bool
                       ) -> CalibrationSample | None:
    """What a run of ``layer`` with deconvolution ``mode`` (and Stack 'all' when
    ``whole_stack``) estimates its calibration on; None when no layer is selected.

    Raises
    ------
    ValueError
        When the layer cannot be restored as asked (the message says why).
    """
    if layer is None:
        return None
    block, index = selected_block(viewer, layer, mode, whole_stack)
    if whole_stack and len(block.shape) > (3 if mode == "3d" else 2):
        where = "the stack's middle plane, as a whole-stack run estimates it"
    elif mode == "3d":
        where = (f"the middle plane of the displayed volume {', '.join(map(str, index))}"
                 if index else "the middle plane of the volume")
    elif index:
        where = f"the displayed plane {', '.join(map(str, index))}"
    else:
        where = ""
    meta = dict(layer.metadata or {})
    # a result in the viewer, or one saved and reopened with the pkl-dg reader (which keeps
    # the file's metadata under "pkl_dg")
    in_photons = "photons" in (meta.get("units"), dict(meta.get("pkl_dg") or {}).get("units"))
    return CalibrationSample(layer.name, block, where, in_photons)


def describe(cal: Calibration, name: str, where: str = "") -> str:
    """One line for the panel: the values, the plane they come from (``where``, in words)
    and what they mean in photons."""
    fit = cal.fit or {}
    photons = ""
    if "median_photons" in fit:
        photons = (f"; ≈ {fit['median_photons']:.3g} photons at the median, "
                   f"{fit['p99_9_photons']:.3g} at the 99.9th percentile")
    read = f"read noise {cal.read_noise:.3g} e⁻"
    if fit.get("offset_from") == "noise fit":  # see calibration.estimate_calibration
        read = ("read noise 0 e⁻ (not separable here: the darkest pixels lie below the noise "
                "fit's zero-photon level, which is taken as the offset)")
    return (f"Estimated from '{name}'{', ' + where if where else ''} (Poisson–Gaussian "
            f"noise fit): gain {cal.gain:.4g} e⁻/ADU, offset {cal.offset:.2f} ADU, "
            f"{read}{photons}.{EDIT}")


def implausible_gain(cal: Calibration) -> str | None:
    """What an estimated gain outside :data:`CAMERA_GAIN_RANGE` suggests and what to give
    instead; None for a gain a camera can have."""
    low, high = CAMERA_GAIN_RANGE
    if low <= cal.gain <= high:
        return None
    noise = "weaker" if cal.gain > high else "stronger"
    return (f"Gain {cal.gain:.4g} e⁻/ADU is far outside what cameras have (about "
            f"{low:g}–{high:g}): the noise is much {noise} than photon counts at these "
            "values would have. This looks like an image already in photons or rescaled (a "
            "restored result, an average, a filtered or normalised image). Already in "
            "photons: choose calibration 'manual' with gain 1 and offset 0. Rescaled: give "
            "the camera's values (its gain × the scale factor). The estimate is kept as it "
            "is; a run with calibration 'auto' uses it.")


def _values(cal: dict[str, Any]) -> str:
    return (f"gain {cal['gain']:.4g} e⁻/ADU, offset {cal['offset']:.2f} ADU, read noise "
            f"{cal['read_noise']:.3g} e⁻")


def used_text(record: dict[str, Any], run_name: str) -> str:
    """The panel's line after a run: the calibration ``record`` (the result's metadata
    ``calibration``: one calibration's dict, or ``{"source": "estimated per channel",
    "channels": [...]}``) that the run ``run_name`` used."""
    source = str(record.get("source", "given"))
    if "channels" in record:
        values = "; ".join(f"channel {k}: {_values(c)}"
                           for k, c in enumerate(record["channels"], 1))
        how = "each channel estimated from its own data"
    else:
        values = _values(record)
        how = {"estimated": "estimated from its data", "given": "as given"}.get(source, source)
    return f"The run '{run_name}' used {values}: {how}."


class CalibrationPanel:
    """Estimate button and status line of the 'Photon calibration' group.

    Parameters
    ----------
    controls
        The widget's controls by settings field (``calibration``, ``offset``, ``gain``,
        ``read_noise`` are used).
    sample
        Callable returning the :class:`CalibrationSample` a run would calibrate on now, or
        None when no image is selected; raises ``ValueError`` when there is none to take.
    moved
        An event emitted when the viewer shows another plane (napari's
        ``viewer.dims.events.current_step``), or None.
    """

    #: ms after the last slider move before the shown plane is estimated again
    SETTLE_MS = 250

    def __init__(self, controls: dict[str, Any],
                 sample: Callable[[], CalibrationSample | None], moved: Any = None) -> None:
        self.controls, self.sample = controls, sample
        # before, the estimate stayed that of the plane (or mode) shown when the image was
        # picked, and a run estimated on another one: the fields showed values it never used
        self.label = QLabel("")
        self._settle = QTimer(self.label)  # goes with the widget
        self._settle.setSingleShot(True)
        self._settle.setInterval(self.SETTLE_MS)
        self._settle.timeout.connect(self._plane_moved)
        controls["mode"].changed.connect(self.block_changed)
        if moved is not None:
            moved.connect(self._moved)
        self.button = QPushButton("Estimate")
        self.button.setToolTip("Estimate gain, offset and read noise from the selected image "
                               "now (calibration 'auto' does this at every run).")
        self.button.clicked.connect(self.estimate)
        self.label.setWordWrap(True)
        self.estimate_shown: Calibration | None = None
        self._shown_from: tuple[str, str] | None = None  # (name, where) of the line's values
        self._warned = ""  # the last warning notified (a re-estimate does not repeat it)
        self._quiet = False
        self._writing = False
        for name in CAMERA_FIELDS:
            controls[name].changed.connect(self._edited)
        controls["calibration"].changed.connect(self._mode_changed)

    def add_to(self, layout: QVBoxLayout) -> None:
        layout.addWidget(self.button)
        layout.addWidget(self.label)

    @property
    def auto(self) -> bool:
        return self.controls["calibration"].value == "auto"

    def estimate(self) -> Calibration | None:
        """Estimate from what a run would calibrate on and show it; a problem goes to the
        panel's line (and, for values the fields cannot hold or no camera gives, to a
        napari notification)."""
        try:
            got = self.sample()
        except ValueError as exc:  # e.g. RGB or 1×N: a run would say so in full
            got, problem = None, f"No estimate: {exc}"
        else:
            problem = "No image selected: nothing to estimate from."
        if got is None:
            self.estimate_shown, self._shown_from = None, None
            self.label.setText(problem)
            return None
        try:
            cal = estimate_image_calibration(got.data)  # exactly as a run estimates it
        except ValueError as exc:
            self.estimate_shown, self._shown_from = None, (got.name, got.where)
            self.label.setText(f"No estimate for '{got.name}': {exc}")
            return None
        outside = self._write(cal)
        self.estimate_shown, self._shown_from = cal, (got.name, got.where)
        text = describe(cal, got.name, got.where).removesuffix(EDIT)
        warn = []
        if outside:
            warn.append(f"The fields cannot show {', '.join(outside)}: they keep their "
                        "values, and a run with calibration 'auto' uses this estimate.")
        odd = implausible_gain(cal)
        if got.in_photons:  # it says so itself: no need to guess from the gain
            warn.append("This image is already in photons (a restoration: its metadata says "
                        "so), not camera data. Choose calibration 'manual' with gain 1 and "
                        "offset 0. The estimate is kept as it is; a run with calibration "
                        "'auto' uses it.")
        elif odd:
            warn.append(odd)
        self.label.setText(" ".join([text, *warn]) if warn else text + EDIT)
        message = f"Calibration of '{got.name}': {' '.join(warn)} {text}" if warn else ""
        if self._quiet:  # the line says it; notified when the user picks this image
            return cal
        if message and message != self._warned:
            show_warning(message)
        self._warned = message
        return cal

    @contextmanager
    def quietly(self) -> Iterator[None]:
        """Estimates without notifications within: the input moved to another layer by
        itself (its layer was deleted), which the user did not ask to calibrate."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def show_used(self, record: dict[str, Any], run_name: str) -> None:
        """Say in the line what calibration the run ``run_name`` used (its result's metadata
        ``calibration``, see :func:`used_text`). With calibration 'auto' and one calibration
        the fields take its values too; several (one per channel) are only listed."""
        if self.auto and "channels" not in record:
            cal = Calibration(gain=record["gain"], offset=record["offset"],
                              read_noise=record["read_noise"],
                              source=record.get("source", "given"), fit=record.get("fit"))
            if not self._write(cal):
                self.estimate_shown = cal
        self.label.setText(used_text(record, run_name))

    def _write(self, cal: Calibration) -> list[str]:
        """Put ``cal`` into the fields, calibration staying 'auto'; all or nothing, so the
        fields never mix two calibrations. Returns the values the fields cannot hold."""
        values = {"offset": cal.offset, "gain": cal.gain, "read_noise": cal.read_noise}
        outside = [f"{n} {v:.4g} (the field holds {self.controls[n].min:g} – "
                   f"{self.controls[n].max:g})" for n, v in values.items()
                   if not self.controls[n].min <= v <= self.controls[n].max]
        self._writing = True
        try:
            self.controls["calibration"].value = "auto"
            if not outside:
                for n, v in values.items():
                    self.controls[n].value = float(v)
        finally:
            self._writing = False
        return outside

    def input_changed(self) -> None:
        """Estimate again (calibration 'auto'): the input, or what a run takes of it,
        changed."""
        if self.auto:
            self.estimate()

    def block_changed(self, *_args) -> None:
        """What a run would restore changed (mode, Stack): estimate again."""
        if not self._writing:  # not while the widget loads its saved settings
            self.input_changed()

    def _plane_moved(self) -> None:
        """The viewer shows another plane: estimate again unless the run would still
        calibrate on the same one (a whole stack, a volume): the line keeps what it says."""
        if self._writing or not self.auto:
            return
        try:
            got = self.sample()
        except ValueError:
            got = None
        if got is None or (got.name, got.where) != self._shown_from:
            self.estimate()

    def _moved(self, *_args) -> None:
        try:
            self._settle.start()
        except RuntimeError:  # the dock widget was closed; the viewer still emits
            pass

    def _edited(self, *_args) -> None:
        if self._writing or not self.auto:
            return
        self.controls["calibration"].value = "manual"

    def _mode_changed(self, *_args) -> None:
        if self._writing:
            return
        if self.auto:
            self.estimate()
        else:
            self.estimate_shown = None
            self.label.setText("Manual: the offset, gain and read noise above are used as "
                               "given.")
