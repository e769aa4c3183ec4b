"""The "PSF (PKL)" layer the widget's *Show PSF* writes (napari, no Qt widgets)."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image


#: the layer *Show PSF* writes into
PSF_LAYER = "PSF (PKL)"


def show_psf_layer(viewer: Any, psf: np.ndarray, like: Image | None,
                   metadata: dict[str, Any]) -> Image:
    """Add (or update in place) the :data:`PSF_LAYER` layer showing ``psf``.

    Parameters
    ----------
    viewer
        The napari viewer.
    psf
        The PSF (normalised, 2D or 3D).
    like
        The image it is for: the layer takes the scale, units and axis labels of its
        last ``psf.ndim`` axes; None for pixels.
    metadata
        The layer's metadata (its description and the PSF's diagnostics).

    Returns
    -------
    Image
        The PSF layer.
    """
    limits = (0.0, float(psf.max()))
    n = psf.ndim
    geometry = {} if like is None else {"scale": like.scale[-n:], "units": like.units[-n:],
                                        "axis_labels": like.axis_labels[-n:]}
    if PSF_LAYER in viewer.layers and isinstance(viewer.layers[PSF_LAYER], Image):
        layer = viewer.layers[PSF_LAYER]
        layer.data, layer.contrast_limits = psf, limits
        for key, value in geometry.items():  # the image (or mode) may have changed
            setattr(layer, key, value)
    else:
        layer = viewer.add_image(psf, name=PSF_LAYER, colormap="inferno",
                                 contrast_limits=limits, **geometry)
    layer.metadata = metadata
    return layer
