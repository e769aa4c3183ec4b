"""Layer pickers of the Compare methods widget: Qt combo boxes whose items hold the layers.

Each item holds its layer (not only its name), so a renamed layer stays picked under its
new name; before, the picker kept the old name, which no layer had any more ('Run compare'
then asked to pick an image, and a renamed ground truth was no longer scored). The image
picker opens on the PKL Deconvolution widget's image, else on the viewer's selected layer
(:func:`pick_active`), not on the first one.
"""

from __future__ import annotations

from typing import Any, Sequence

from napari.layers import Image
from qtpy.QtWidgets import QComboBox

from pkl_dg.napari.output import same_layer


def refill(combo: QComboBox, layers: Sequence[Image], extra: Sequence[str] = ()) -> None:
    """Fill ``combo`` with the entries ``extra`` (holding no layer), then one item per layer
    named as the layer is now; the layer picked before stays picked (by identity, so also
    when it was renamed), else the entry of the same text, else the first.

    Parameters
    ----------
    combo
        The picker.
    layers
        The image layers to offer, in order.
    extra
        Entries before the layers (e.g. "(none)").
    """
    current, text = combo.currentData(), combo.currentText()
    combo.blockSignals(True)
    try:
        combo.clear()
        for name in extra:
            combo.addItem(name, None)
        for layer in layers:
            combo.addItem(layer.name, layer)
        index = next((i for i in range(combo.count())
                      if same_layer(combo.itemData(i), current)), combo.findText(text))
        if index >= 0:
            combo.setCurrentIndex(index)
    finally:
        combo.blockSignals(False)


def picked(combo: QComboBox, viewer: Any) -> Image | None:
    """The image layer picked in ``combo`` while it is still in ``viewer``; None for an
    entry without a layer (e.g. "(none)") or a layer since removed."""
    layer = combo.currentData()
    if not isinstance(layer, Image):
        return None
    return next((each for each in viewer.layers if same_layer(each, layer)), None)


def pick_active(combo: QComboBox, viewer: Any, preferred: Any = None) -> None:
    """Pick ``preferred`` in ``combo`` when it is one of its images, else the viewer's
    selected layer when it is (a widget opening on the sample would otherwise start on its
    first layer, the ground truth). ``preferred``: the PKL Deconvolution widget's input
    (after a run napari selects its result, which is no image to restore again)."""
    for layer in (preferred, viewer.layers.selection.active):
        index = next((i for i in range(combo.count())
                      if same_layer(combo.itemData(i), layer)), -1)
        if index >= 0:
            combo.setCurrentIndex(index)
            return
