"""The photon-calibration part of the dock widget: the estimate, shown and editable.

With calibration 'auto' (the default) a run estimates gain, offset and read noise from the
image itself (:func:`pkl_dg.calibration.estimate_calibration`). The panel runs the same
estimate on the selected plane when the input changes or when *Estimate* is pressed, and
again when what a run would restore changes (the deconvolution mode, or the plane shown in
the viewer: a quarter of a second after the last move of a slider), writes
it into the offset / gain / read-noise fields and says in a line under them that these
values are an estimate (with the photon level they imply). Editing one of those fields by
hand switches calibration to 'manual', so what is shown is what the next run uses. An
estimate outside a field's range (the settings schema's bounds) is written nowhere: the
line and a napari notification give it, and a run with calibration 'auto' uses it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout

from pkl_dg.calibration import Calibration
from pkl_dg.inputs import estimate_image_calibration
from pkl_dg.settings import CAMERA_FIELDS



def describe(cal: Calibration, name: str) -> str:
    """One line for the panel: the values and what they mean in photons."""
    fit = cal.fit or {}
    photons = ""
    if "median_photons" in fit:
        photons = (f"; ≈ {fit['median_photons']:.3g} photons at the median, "
                   f"{fit['p99_9_photons']:.3g} at the 99.9th percentile")
    read = f"read noise {cal.read_noise:.3g} e⁻"
    if fit.get("offset_from") == "noise fit":  # see calibration.estimate_calibration
        read = ("read noise 0 e⁻ (not separable here: the darkest pixels lie below the noise "
                "fit's zero-photon level, which is taken as the offset)")
    return (f"Estimated from '{name}' (Poisson–Gaussian noise fit): gain "
            f"{cal.gain:.4g} e⁻/ADU, offset {cal.offset:.4g} ADU, {read}{photons}. Edit a "
            "value to set it by hand.")


class CalibrationPanel:
    """Estimate button and status line of the 'Photon calibration' group.

    Parameters
    ----------
    controls
        The widget's controls by settings field (``calibration``, ``offset``, ``gain``,
        ``read_noise`` are used).
    plane
        Callable returning ``(name, 2D array)`` of the plane a run would restore, or None
        when no image is selected.
    report
        Callable taking a message for the widget's status line.
    moved
        An event emitted when the viewer shows another plane (napari's
        ``viewer.dims.events.current_step``), or None.
    """

    #: ms after the last slider move before the shown plane is estimated again
    SETTLE_MS = 250

    def __init__(self, controls: dict[str, Any], plane: Callable[[], tuple[str, Any] | None],
                 report: Callable[[str], None], moved: Any = None) -> None:
        self.controls, self.plane, self.report = controls, plane, report
        # before, the estimate stayed that of the plane (or mode) shown when the image was
        # picked, and a run estimated on another one: the fields showed values it never used
        self.label = QLabel("")
        self._settle = QTimer(self.label)  # goes with the widget
        self._settle.setSingleShot(True)
        self._settle.setInterval(self.SETTLE_MS)
        self._settle.timeout.connect(self._block_changed)
        controls["mode"].changed.connect(self._block_changed)
        if moved is not None:
            moved.connect(self._moved)
        self.button = QPushButton("Estimate")
        self.button.setToolTip("Estimate gain, offset and read noise from the selected image "
                               "now (calibration 'auto' does this at every run).")
        self.button.clicked.connect(self.estimate)
        self.label.setWordWrap(True)
        self.estimate_shown: Calibration | None = None
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
        """Estimate from the selected plane, show it; errors go to the line and status."""
        got = self.plane()
        if got is None:
            self.label.setText("No image selected: nothing to estimate from.")
            return None
        name, arr = got
        try:
            cal = estimate_image_calibration(np.asarray(arr))  # exactly as a run estimates it
        except ValueError as exc:
            self.estimate_shown = None
            self.label.setText(f"No estimate for '{name}': {exc}")
            self.report(f"Calibration: {exc}")
            return None
        values = {"offset": cal.offset, "gain": cal.gain, "read_noise": cal.read_noise}
        outside = [f"{n} {v:.4g} (the field holds {self.controls[n].min:g} – "
                   f"{self.controls[n].max:g})" for n, v in values.items()
                   if not self.controls[n].min <= v <= self.controls[n].max]
        self._writing = True
        try:
            self.controls["calibration"].value = "auto"
            if not outside:  # all or nothing: the fields never mix two calibrations
                for n, v in values.items():
                    self.controls[n].value = float(v)
        finally:
            self._writing = False
        self.estimate_shown = cal
        text = describe(cal, name)
        if outside:
            text = (f"{text.removesuffix(' Edit a value to set it by hand.')} The fields "
                    f"cannot show {', '.join(outside)}: they keep their values, and a run "
                    "with calibration 'auto' uses this estimate.")
            show_warning(f"Calibration of '{name}': {text}")
        self.label.setText(text)
        return cal

    def input_changed(self) -> None:
        if self.auto:
            self.estimate()

    def _block_changed(self, *_args) -> None:
        if not self._writing:  # not while the widget loads its saved settings
            self.input_changed()

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
