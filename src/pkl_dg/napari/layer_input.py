"""What a run reads from the viewer's layers: the block to restore, the PSF source data and
the shapes open layers can give (napari layers, no Qt widgets)."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image

from pkl_dg.axes import axes_from_labels, layer_axes_problem
from pkl_dg.napari.controls import pixel_size_nm_of, z_step_nm_of
from pkl_dg.napari.worker import PsfRequest


def axis_labels(layer: Image) -> tuple[str, ...]:
    """The layer's axis labels, or where napari gave its numeric defaults (its built-in TIFF
    reader does for an ImageJ hyperstack), the axes its TIFF file states, when the file's
    image has the layer's shape (read in the file's order): a (Z, C, Y, X) file's channels
    must not be taken for Z planes."""
    labels = tuple(str(a) for a in layer.axis_labels)
    path = layer.source.path
    if axes_from_labels(labels) is not None or not path or \
            not str(path).lower().endswith((".tif", ".tiff")):
        return labels
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = str(series.axes), tuple(series.shape)
    except (OSError, ValueError, IndexError, KeyError):  # tifffile's errors on a file it
        return labels  # cannot parse (TiffFileError is a ValueError): the layer's labels
    if shape != tuple(full_resolution(layer).shape) or "Y" not in axes or "X" not in axes:
        return labels
    words = {"T": "t", "Z": "z", "C": "c", "S": "s", "Y": "y", "X": "x"}
    return tuple(words.get(a, "q") for a in axes)


def stack_axes(layer: Image) -> str | None:
    """The layer's axes as letters (``"ZCYX"``) where its labels, or its TIFF file, name
    them all (:func:`axis_labels`); None where they do not (napari's numeric defaults, an
    unknown label). A whole-stack run hands them to the core, which then calibrates each
    channel on its own (two detectors differ in offset and gain)."""
    axes = axes_from_labels(axis_labels(layer))
    return None if axes is None or "Q" in axes else axes


def full_resolution(layer: Image) -> Any:
    """The layer's data at full resolution (level 0 of a multiscale layer), not copied."""
    return layer.data[0] if layer.multiscale else layer.data


def open_shapes(viewer: Any) -> set[tuple[int, ...]]:
    """Shapes a run on an open image layer can have (the whole data, its planes and
    volumes): forward models for other shapes can be freed."""
    shapes = set()
    for layer in viewer.layers:
        if isinstance(layer, Image):
            shape = tuple(full_resolution(layer).shape)
            shapes.update(shape[i:] for i in range(len(shape) - 1))
    return shapes


def selected_block(viewer: Any, layer: Image, mode: str = "2d",
                   whole_stack: bool = False) -> tuple[Any, tuple[int, ...]]:
    """What a run restores, and the index of the displayed block in the leading axes.

    A block is a YX plane (``mode`` "2d") or a ZYX volume ("3d"). The displayed block is
    returned as a copy; the whole stack (``whole_stack``) as the layer's own array, which
    the core only reads (block by block, so dask data stay lazy).
    """
    if layer.rgb:
        raise ValueError(f"'{layer.name}' is an RGB image: deconvolution needs one "
                         "fluorescence channel. Split the channels (right-click the layer "
                         "> Split RGB) and pick one.")
    data = full_resolution(layer)
    problem = layer_axes_problem(layer.name, axis_labels(layer), data.shape, mode)
    if problem:  # a channel or time axis where Y, X (or Z) are expected
        raise ValueError(problem)
    block_ndim = 3 if mode == "3d" else 2
    shape = " × ".join(map(str, data.shape))
    if data.ndim < 2 or min(data.shape[-2:]) < 2:
        raise ValueError(f"'{layer.name}' ({shape}) is not an image: pick a 2D image or a "
                         "stack whose last two axes are Y, X.")
    if data.ndim < block_ndim:
        raise ValueError(f"'{layer.name}' ({shape}) is 2D: 3D deconvolution needs a "
                         "Z-stack (last three axes Z, Y, X). Choose Deconvolution '2d'.")
    if data.ndim == block_ndim:
        return np.array(data, copy=True), ()
    if whole_stack:
        return data, ()
    point = layer.world_to_data(viewer.dims.point)
    index = tuple(int(np.clip(round(p), 0, n - 1))
                  for p, n in zip(point[:data.ndim - block_ndim], data.shape))
    return np.array(data[index], copy=True), index


def psf_request(viewer: Any, source: str, bead_box: int, psf_layer: Image | None,
                bead_layer: Image | None, mode: str = "2d",
                image_known: frozenset[str] = frozenset()) -> PsfRequest:
    """What the worker needs for the PSF: the source plus a copy of the layer it reads and
    the sampling it states; ``image_known``: the image's own sampling settings (see
    :attr:`PsfRequest.image_known`)."""
    request = PsfRequest(source=source, bead_box=int(bead_box), image_known=image_known)
    if source in ("layer", "beads"):
        layer = psf_layer if source == "layer" else bead_layer
        if layer is None:
            raise ValueError(f"Pick the {'PSF' if source == 'layer' else 'bead'} image "
                             "layer (or choose another 'PSF from').")
        request.layer_name = layer.name
        request.stated_nm = (z_step_nm_of(layer), pixel_size_nm_of(layer))
        if source == "layer":
            request.data = np.array(full_resolution(layer))
        else:  # a bead stack's displayed volume: in 2D the worker takes its in-focus plane
            # (the Z slider is the image's, so the beads' focus cannot be shown with it)
            request.data, _ = selected_block(viewer, layer, "3d" if layer.ndim >= 3 else mode)
    return request
