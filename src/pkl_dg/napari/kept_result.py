"""A finished result that a rerun of the same name writes over, kept until the rerun ends.

A rerun streams into the layer of the result before it (a new layer per run costs napari a
GUI freeze of up to a second, created and later removed). Before its first frame the
finished result's data and metadata, and its std layer's, are copied; a rerun that finishes
drops the copy, and one that is cancelled or fails moves its partial estimate into a layer
of its own and puts the finished result back. A cancelled rerun had replaced a finished
result by its partial estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image


@dataclass
class KeptResult:
    """A finished result's data, metadata and contrast, and its std layer's data and
    metadata (None without one)."""

    data: np.ndarray
    metadata: dict[str, Any]
    contrast: tuple[float, float]
    std: tuple[np.ndarray, dict[str, Any]] | None


def keep_finished(viewer: Any, name: str, std_name: str) -> KeptResult | None:
    """A copy of the finished result in layer ``name`` (with its std layer ``std_name``);
    None where there is none (no layer, or an unfinished one: running, cancelled,
    failed)."""
    layer = viewer.layers[name] if name in viewer.layers else None
    meta = dict(getattr(layer, "metadata", None) or {})
    if not isinstance(layer, Image) or "settings" not in meta or \
            meta.get("status", "done") != "done":
        return None
    std = viewer.layers[std_name] if std_name in viewer.layers else None
    return KeptResult(np.array(layer.data, copy=True), meta,
                      tuple(float(v) for v in layer.contrast_limits),
                      None if std is None else (np.array(std.data, copy=True),
                                                dict(std.metadata)))


def put_back(viewer: Any, layer: Image, kept: KeptResult, partial_name: str,
             std_name: str) -> Image:
    """Move ``layer``'s unfinished estimate (data and metadata) into a new layer
    ``partial_name`` with its geometry and display, and put the ``kept`` result (and its
    std) back into ``layer``; return the new layer."""
    partial = viewer.add_image(
        np.array(layer.data, copy=True), name=partial_name, scale=layer.scale,
        translate=layer.translate, units=layer.units, axis_labels=layer.axis_labels,
        colormap=layer.colormap.name, contrast_limits=layer.contrast_limits,
        metadata=dict(layer.metadata))
    layer.data, layer.metadata = kept.data, kept.metadata
    layer.contrast_limits = kept.contrast
    if kept.std is not None and std_name in viewer.layers:
        viewer.layers[std_name].data, viewer.layers[std_name].metadata = kept.std
    return partial
