"""The Compare widget's metrics table and the pixel size its FRC in nm uses (Qt widgets).

:class:`MetricsTable` shows :func:`pkl_dg.compare.metrics_table` rows under readable
headers with units ("PSNR (dB)", "FRC (nm)", "time (s)") and the methods' short names. Its
height follows its rows (at least :data:`ROWS_SHOWN`), so every row of a comparison shows
without scrolling vertically; its columns fit their contents (a dock narrower than them
scrolls sideways; they do not widen the dock). :func:`frc_pixel_size` decides the pixel
size of the FRC in nm: the one typed in the widget's *Pixel size* field, else the one the
input layer states (its scale in a length unit, or its file's metadata: what the PKL
Deconvolution widget's fields show as "from image"), else none, and the column stays
empty rather than assume the settings' 65 nm.
"""

from __future__ import annotations

from typing import Any

from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QDoubleSpinBox, QSizePolicy,
                            QTableWidget, QTableWidgetItem)

from pkl_dg.compare import METRIC_COLUMNS, METRIC_HEADERS
from pkl_dg.napari.controls import pixel_size_nm_of, short_method_label
from pkl_dg.settings import METHOD_LABELS

#: rows the table has room for at least (a typical comparison: 3–5 methods; more grow it)
ROWS_SHOWN = 3
#: the *Pixel size* field's value meaning "the image's own" (its special-value text)
FROM_IMAGE = "from image"
#: what the time column measures (the "time (s)" header's tooltip)
TIME_NOTE = ("Each method's wall time in this viewer, its live display included: drawing "
             "the layers shares the CPU with the run, which slows fast methods most "
             "(Richardson–Lucy on a small image: several times its time alone). For timings, "
             "run `pkl-dg compare` in a terminal.")
#: what each column measures (the headers' tooltips; pkl_dg.metrics, pkl_dg.frc)
HEADER_TIPS = {
    "psnr_db": "PSNR by the CARE protocol: the ground truth scaled to its 0.1–99.9 % "
               "percentiles, the result fitted to it by a·x + b (least squares), then PSNR "
               "with a peak of 1. Higher is better.",
    "ssim": "Structural similarity of the fitted result and the scaled ground truth (as for "
            "PSNR; scikit-image, data range 1). 1 is identical.",
    "nrmse": "RMS error of the fitted result divided by the scaled ground truth's standard "
             "deviation (as for PSNR). Lower is better; 1 is no better than a flat image.",
    "frc_px": "Resolution by Fourier ring correlation with the ground truth: the period (px) "
              "where the correlation falls below 1/7. Lower is finer; 2 px is Nyquist.",
    "seconds": TIME_NOTE,
}
#: an FRC resolution of ``inf`` (nothing resolved) as the table shows it
UNRESOLVED = "none"
_SHORT = {label: short_method_label(key) for key, label in METHOD_LABELS.items()}


class MetricsTable(QTableWidget):
    """The metrics table: one row per method, headers with units, no vertical scrolling."""

    def __init__(self) -> None:
        super().__init__(0, len(METRIC_COLUMNS))
        self.setHorizontalHeaderLabels([METRIC_HEADERS[k] for k in METRIC_COLUMNS])
        self.verticalHeader().setVisible(False)
        # compact: rows one line high; headers wrap at their unit ("PSNR" over "(dB)"), so
        # a column is as wide as its longest word or value, not its whole header
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.setWordWrap(False)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        header = self.horizontalHeader()
        header.setDefaultAlignment(Qt.AlignCenter | Qt.TextWordWrap)
        header.setFixedHeight(2 * header.fontMetrics().height() + 8)
        header.setStretchLastSection(True)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Fixed)
        for key, tip in HEADER_TIPS.items():
            self.horizontalHeaderItem(METRIC_COLUMNS.index(key)).setToolTip(tip)
        self._fit_columns()
        self._fit_height(ROWS_SHOWN)

    def _fit_columns(self) -> None:
        """Each column as wide as its widest value or header word, plus a margin (px)."""
        cells, words = self.fontMetrics(), self.horizontalHeader().fontMetrics()
        for j in range(self.columnCount()):
            texts = [self.item(i, j).text() for i in range(self.rowCount()) if self.item(i, j)]
            width = max([cells.horizontalAdvance(t) for t in texts] +
                        [words.horizontalAdvance(w)
                         for w in self.horizontalHeaderItem(j).text().split()])
            self.setColumnWidth(j, width + 12)

    def _fit_height(self, rows: int) -> None:
        """Room for the header, ``rows`` rows and a horizontal scroll bar if one shows."""
        row = self.verticalHeader().defaultSectionSize()
        bar = self.horizontalScrollBar().sizeHint().height()
        self.setFixedHeight(self.horizontalHeader().height() + rows * row
                            + bar + 2 * self.frameWidth())

    def show_rows(self, rows: list[dict[str, Any]]) -> None:
        """Fill the table with ``rows`` (metrics rows; the method by its short name)."""
        self.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, key in enumerate(METRIC_COLUMNS):
                v = row.get(key)
                if key == "method":
                    text = _SHORT.get(v, str(v))
                elif v is None:
                    text = ""
                elif key.startswith("frc") and v == float("inf"):  # frc.py: no ring above 1/7
                    text = UNRESOLVED
                elif isinstance(v, float):
                    text = f"{v:.3g}" if key == "seconds" else f"{v:.4g}"
                else:
                    text = str(v)
                item = QTableWidgetItem(text)
                if key == "method":
                    item.setToolTip(str(v))
                elif text == UNRESOLVED:
                    item.setToolTip("Not resolved: the correlation with the ground truth is "
                                    "below 1/7 already at the coarsest ring, so no detail "
                                    "of it is resolved")
                self.setItem(i, j, item)
        self._fit_columns()
        self._fit_height(max(ROWS_SHOWN, len(rows)))

    def set_frc_note(self, note: str) -> None:
        """Say where the FRC's pixel size came from in the "FRC (nm)" header's tooltip."""
        self.horizontalHeaderItem(METRIC_COLUMNS.index("frc_nm")).setToolTip(note)


def pixel_size_field() -> QDoubleSpinBox:
    """The widget's *Pixel size* field (nm): 0 shows "from image"."""
    box = QDoubleSpinBox()
    box.setRange(0.0, 100000.0)
    box.setDecimals(1)
    box.setSuffix(" nm")
    box.setSpecialValueText(FROM_IMAGE)
    box.setValue(0.0)
    box.setToolTip("Pixel size in the sample plane, for the FRC resolution in nm. "
                   f"'{FROM_IMAGE}': the size the image layer states (its scale or its "
                   "file); an image that states none gets no FRC in nm.")
    return box


def frc_pixel_size(typed_nm: float, layer: Image) -> tuple[float | None, str]:
    """The pixel size (nm) of the FRC in nm, and where it came from, in words.

    Parameters
    ----------
    typed_nm
        The *Pixel size* field's value in nm; 0 means "from image".
    layer
        The compared image layer.

    Returns
    -------
    (nm or None, note)
        ``typed_nm`` when > 0; else the layer's own pixel size
        (:func:`~pkl_dg.napari.controls.pixel_size_nm_of`); else None (no FRC in nm).
    """
    if typed_nm > 0:
        return float(typed_nm), f"FRC in nm for {typed_nm:g} nm pixels (typed in 'Pixel size')"
    nm = pixel_size_nm_of(layer)
    if nm is None:
        return None, (f"No FRC in nm: '{layer.name}' states no pixel size; type one in "
                      "'Pixel size'")
    return nm, f"FRC in nm for {nm:g} nm pixels (from '{layer.name}')"
