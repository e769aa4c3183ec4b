"""The output layers of a restoration run (napari, no Qt widgets).

A run writes every streamed frame into ONE image layer named ``"<input> [<method>]"``
(``@<index>`` appended when only the displayed block of a stack is restored), created on the
first frame with the input's scale, translate, units and axis labels, float32, and updated in
place afterwards. A displayed block keeps the stack's axes, each leading one of length 1 and
translated to the block's position, so it shows at its own plane, not on every plane.
Contrast limits follow the 0.1–99.9 percentiles of each frame until the user changes them.
:class:`RestorationView` is what the :class:`~pkl_dg.napari.run_controller.RunController`
shows of a restoration. The widget's *Show PSF* layer: :mod:`pkl_dg.napari.psf_layer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image

from pkl_dg.napari.kept_result import KeptResult, keep_finished, put_back
from pkl_dg.settings import RestoreSettings
from pkl_dg.settings_rules import settings_record

#: pixels used for the automatic contrast limits (every k-th pixel of a larger frame)
CONTRAST_SAMPLE = 1 << 18


def same_layer(a: Any, b: Any) -> bool:
    """Identity of layers (plugins get napari objects through proxies, so not ``is``)."""
    return a is not None and b is not None and a.unique_id == b.unique_id


@dataclass
class Run:
    """What a restoration run restores and where its output goes."""

    input_layer: Image
    settings: RestoreSettings
    name: str
    plane: tuple[int, ...]  # index of the displayed block in the leading axes; () otherwise
    whole_stack: bool  # the output has the input's shape and is filled block by block
    block_ndim: int  # 2 (YX plane) or 3 (ZYX volume)
    shape: tuple[int, ...]  # of what is restored (the output's shape)
    shown_at: float | None = None  # perf_counter of the last frame put into the layer
    auto_contrast: tuple[float, float] | None = None
    method_label: str = ""  # e.g. "PKL (Poisson KL)", for the status line
    output_gone: bool = False  # the user removed the output layer during the run
    pixel_size: str = ""  # where the pixel size in the settings came from (metadata)

    @property
    def layer_shape(self) -> tuple[int, ...]:
        """The output layer's shape: a displayed block keeps the stack's leading axes
        (length 1 each)."""
        return (1,) * len(self.plane) + tuple(self.shape)

    def placed(self, image: np.ndarray) -> np.ndarray:
        """``image`` (a frame, the result or its std) as the output layer holds it (a view)."""
        return image.reshape(self.layer_shape) if self.plane else image


def plane_suffix(plane: tuple[int, ...]) -> str:
    """What a plane output's layer name ends in: ``" @2"``, ``" @1,3"`` (``""`` for none)."""
    return f" @{','.join(map(str, plane))}" if plane else ""


def plane_geometry(layer: Image, n: int, plane: tuple[int, ...] = ()) -> dict[str, Any]:
    """Scale, translate, units and axis labels of ``layer``'s last ``n`` axes, the first
    ``len(plane)`` of them translated to ``plane`` (an index into the leading axes), so a
    plane output shows at its own plane only."""
    # copies: napari hands out its own arrays, and the plane offset must not move the input
    scale = np.array(layer.scale[-n:], dtype=float)
    translate = np.array(layer.translate[-n:], dtype=float)
    translate[:len(plane)] += np.asarray(plane, dtype=float) * scale[:len(plane)]
    return {"scale": scale, "translate": translate, "units": layer.units[-n:],
            "axis_labels": layer.axis_labels[-n:]}


def output_layer_for(viewer: Any, run: Run, current: Image | None, frame: np.ndarray
                     ) -> Image:
    """The output layer of ``run``: ``current`` if still valid, a same-named float32 layer of
    the right shape from an earlier run, or a new one (created from ``frame``)."""
    src = run.input_layer
    shape = run.layer_shape
    if current is not None and current.name == run.name and current.data.shape == shape \
            and any(same_layer(current, other) for other in viewer.layers):
        return current
    existing = viewer.layers[run.name] if run.name in viewer.layers else None
    if isinstance(existing, Image) and existing.data.shape == shape and \
            existing.data.dtype == np.float32:
        return existing
    data = np.zeros(shape, np.float32) if run.whole_stack else run.placed(frame)
    run.auto_contrast = None
    return viewer.add_image(data, name=run.name, **plane_geometry(src, len(shape), run.plane),
                            colormap=src.colormap.name, metadata={"status": "running"})


def show_frame(layer: Image, run: Run, block: tuple[int, ...], image: np.ndarray) -> None:
    """Put one frame into the output layer, in place."""
    if run.whole_stack:
        if layer.data.dtype != np.float32 or not layer.data.flags.writeable:
            layer.data = np.zeros(layer.data.shape, np.float32)
        layer.data[block] = image
        layer.refresh()
    else:
        layer.data = run.placed(image)


def auto_contrast(layer: Image, run: Run, frame: np.ndarray) -> None:
    """Contrast from the 0.1–99.9 % range, until the user sets the contrast themselves."""
    current = tuple(float(v) for v in layer.contrast_limits)
    if run.auto_contrast is not None and not np.allclose(current, run.auto_contrast):
        return
    step = max(1, frame.size // CONTRAST_SAMPLE)  # a subsample: fast on 4096² frames
    sample = frame.reshape(-1)[::step]
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return
    lo, hi = (float(v) for v in np.percentile(finite, (0.1, 99.9)))
    if hi <= lo:
        hi = lo + 1.0
    fmin, fmax = float(np.nanmin(frame)), float(np.nanmax(frame))  # the whole frame
    lo_range = min(lo, fmin) if np.isfinite(fmin) else lo
    hi_range = max(hi, fmax) if np.isfinite(fmax) else hi
    layer.contrast_limits_range = (lo_range, hi_range)
    layer.contrast_limits = (lo, hi)
    run.auto_contrast = tuple(float(v) for v in layer.contrast_limits)


def std_name(output_name: str) -> str:
    return f"{output_name} std"


def blank_std(viewer: Any, output_name: str) -> None:
    """A run started writing into ``output_name``: its std layer no longer belongs to what
    is shown, so it is zeroed and says so until the run ends (see :func:`remove_std`).
    Zeroed in place, not removed: napari runs a full garbage collection on every layer
    removal, a GUI freeze of up to a second in a process holding torch."""
    name = std_name(output_name)
    if name in viewer.layers and isinstance(viewer.layers[name], Image):
        layer = viewer.layers[name]
        layer.data = np.zeros(layer.data.shape, np.float32)
        layer.metadata = {"description": "being recomputed by the run in progress",
                          "of_layer": output_name}


def remove_std(viewer: Any, output_name: str) -> None:
    """Remove the std layer of the output ``output_name`` (it belongs to an older result)."""
    name = std_name(output_name)
    if name in viewer.layers:
        viewer.layers.remove(name)


#: colormap of the std layer (see :func:`show_std`); :data:`STD_COLORMAP_ALT` over a result
#: that is itself shown in magenta
STD_COLORMAP, STD_COLORMAP_ALT = "magenta", "green"


def std_description(samples: int) -> str:
    """What the std layer holds, for its metadata (README, "Reading the posterior std")."""
    return (f"posterior std (photons) of {samples} single posterior samples; the result is "
            f"their mean (a mean's sampling error: this / √{samples}). Noise and the prior's "
            "freedom under the forward model, not errors of the model (PSF, calibration): "
            "not a calibrated error bar. Drawn additively onto the layers below it.")


def show_std(viewer: Any, out: Image, std: np.ndarray, samples: int) -> Image:
    """Per-pixel standard deviation over posterior samples, as its own (hidden) layer.

    The layer takes the result layer's scale, translate, units and axis labels, so it
    lines up with the result and the viewer's axes keep their names (z, y, x …).

    It is drawn with additive blending in a colormap that starts at black (magenta; green
    when the result itself is shown in magenta). A microscopist reads an uncertainty map
    as an overlay on its image, like a second channel of a Fiji composite: ticking the
    layer's eye tints the result where the samples disagree (zero std adds nothing);
    the opaque viridis map it replaces covered the result as if that had gone. To see
    the map alone, hide the layers below it (or set its blending to 'translucent').

    Parameters
    ----------
    viewer
        The napari viewer.
    out
        The result layer the std belongs to.
    std
        The per-pixel standard deviation, photons, shaped like ``out.data``.
    samples
        How many posterior samples it was computed from (≥ 2).

    Returns
    -------
    Image
        The std layer (new, or the same-named one updated in place).
    """
    name = std_name(out.name)
    geometry = {"scale": out.scale, "translate": out.translate, "units": out.units,
                "axis_labels": out.axis_labels}
    colormap = STD_COLORMAP_ALT if out.colormap.name == STD_COLORMAP else STD_COLORMAP
    if name in viewer.layers and isinstance(viewer.layers[name], Image):
        layer = viewer.layers[name]
        layer.data = std
        for key, value in geometry.items():  # its colormap and blending: the user's
            setattr(layer, key, value)
    else:
        layer = viewer.add_image(std, name=name, colormap=colormap, blending="additive",
                                 visible=False, **geometry)
        # adding selects the new (hidden) layer: keep the result selected, so the layer
        # controls at hand (contrast, colormap) are the visible result's
        viewer.layers.selection.active = out
    hi = float(np.nanpercentile(std, 99.9)) if np.isfinite(std).any() else 1.0
    layer.contrast_limits = (0.0, hi if hi > 0 else 1.0)
    layer.metadata = {"description": std_description(samples), "of_layer": out.name}
    return layer


class RestorationView:
    """What a restoration run shows (a :class:`~pkl_dg.napari.run_controller.RunView`): its
    output layer, the layer's metadata and the posterior std layer.

    ``current`` is the output layer of the previous run, reused when this run writes the
    same name and shape.
    """

    def __init__(self, viewer: Any, run: Run, current: Image | None) -> None:
        self.viewer = viewer
        self.run = run
        self.output_layer = current
        self.label = f"Restoring '{run.input_layer.name}' with {run.method_label}"
        self._blocks: list[tuple[int, ...]] = []  # blocks shown, in the run's order
        self._last_done = False  # whether the last frame shown ended its block
        self._kept: KeptResult | None = None  # the finished result this run writes over

    def frame_key(self, record: Any) -> tuple[int, ...]:
        """The block of the stack a frame belongs to."""
        return tuple(record.block)

    def progress(self, record: Any) -> tuple[int, int, str]:
        """Steps done and in all over the whole run (one part: no name)."""
        return record.index, record.total, ""

    def open_ended(self, record: Any) -> bool:
        """Richardson–Lucy's automatic count: its total is only the cap."""
        return self.run.settings.method == "rl" and self.run.settings.rl_iterations == 0

    def show(self, record: Any, contrast: bool = True) -> bool:
        """Write a frame into the output layer (made on the first frame); False once the
        user removed that layer."""
        run = self.run
        if run.output_gone:
            return False
        frame = np.asarray(record.image, dtype=np.float32)
        if run.shown_at is None:  # the first frame: a finished result is kept until the end
            self._kept = keep_finished(self.viewer, run.name, std_name(run.name))
            blank_std(self.viewer, run.name)
        self.output_layer = output_layer_for(self.viewer, run, self.output_layer, frame)
        block = tuple(record.block)
        show_frame(self.output_layer, run, block, frame)
        if not self._blocks or self._blocks[-1] != block:
            self._blocks.append(block)
        self._last_done = 0 < record.steps <= record.step
        run.shown_at = time.perf_counter()
        if contrast:
            auto_contrast(self.output_layer, run, frame)
        return True

    def finish(self, result: Any, seconds: float) -> str:
        """Put the result, its std and its metadata into the layers; the status line."""
        run = self.run
        image = np.asarray(result.image, dtype=np.float32)
        layer = output_layer_for(self.viewer, run, self.output_layer, image)
        self.output_layer = layer
        layer.data = run.placed(image)
        auto_contrast(layer, run, image)
        if result.std is not None and run.settings.samples > 1:
            show_std(self.viewer, layer, run.placed(np.asarray(result.std, dtype=np.float32)),
                     run.settings.samples)
        else:  # this result has no std: an older one must not stay beside it
            remove_std(self.viewer, run.name)
        metadata = dict(result.metadata)
        metadata["napari"] = self._notes(metadata.get("napari", {}))
        layer.metadata = metadata
        self._kept = None
        n = metadata.get("threads", "?")
        return (f"'{run.name}': restored in {seconds:.1f} s "
                f"({n} CPU thread{'' if n == 1 else 's'}).")

    def cancelled(self, state: Any) -> str:
        """Mark the output layer as a cancelled run's (``state`` counts its steps)."""
        return self._mark_unfinished(state, {"status": "cancelled"})

    def failed(self, state: Any, message: str) -> str:
        """Mark the output layer as a failed run's, with the reason (``message``): a stack
        keeps the blocks restored before the failure."""
        return self._mark_unfinished(state, {"status": "failed", "error": message})

    def _mark_unfinished(self, state: Any, status: dict[str, str]) -> str:
        """Say in the layer's name and metadata what an unfinished run left: a cancelled or
        failed whole stack's blocks never started are NaN (not restored, not 0 photons)."""
        run = self.run
        layer = self.output_layer
        if run.shown_at is None or layer is None:
            return ""
        if self._kept is None:  # the output changed: its old result's std goes
            remove_std(self.viewer, run.name)
        established = dict(state.metadata)  # calibration, PSF, background…
        extra: dict[str, Any] = {}
        if run.whole_stack:
            done = self._blocks if self._last_done else self._blocks[:-1]
            started = set(self._blocks)
            missing = [b for b in np.ndindex(*run.shape[:len(run.shape) - run.block_ndim])
                       if b not in started]
            data = layer.data
            if missing and data.dtype == np.float32 and data.flags.writeable:
                for b in missing:
                    data[b] = np.nan
                layer.refresh()
            extra = {"blocks_restored": [list(b) for b in done],
                     "block_in_progress": (None if self._last_done or not self._blocks
                                           else list(self._blocks[-1])),
                     "blocks_not_restored": {"count": len(missing), "value": "NaN"}}
            total = len(done) + len(missing) + (not self._last_done and bool(self._blocks))
            unit = "planes" if run.block_ndim == 2 else "volumes"
            what = f"{len(done)} of {total} {unit} restored"
        else:
            what = f"at step {state.frames} of {state.total or '?'}"
        layer.metadata = {
            **established, **status, **extra, "steps_completed": state.frames,
            "steps_total": state.total, **settings_record(run.settings),
            "napari": self._notes(established.get("napari", {}))}
        # a new name: the layer no longer looks like a result, and the next run writes
        # a new layer instead of overwriting what this one left; a finished result it
        # wrote over is put back under its own name
        name = f"{run.name} ({status['status']}, {what})"
        if self._kept is not None:
            self.output_layer = layer = put_back(self.viewer, layer, self._kept, name,
                                                 std_name(run.name))
            self._kept = None
        layer.name = name
        if not run.whole_stack:
            return f"'{layer.name}' holds the last estimate"
        partial = extra["block_in_progress"]
        return (f"'{layer.name}' holds the {unit} restored"
                + (f", {unit[:-1]} {','.join(map(str, partial))} part way (an unfinished "
                   "estimate)" if partial is not None else "")
                + (f"; the {unit} not started are NaN"
                   if extra["blocks_not_restored"]["count"] else ""))

    def _notes(self, notes: dict[str, Any]) -> dict[str, Any]:
        """The run's ``napari`` metadata: the worker's ``notes`` and where the output came
        from (input layer, plane, pixel size)."""
        run = self.run
        out = {**notes, "input_layer": run.input_layer.name, "plane": list(run.plane)}
        if run.pixel_size:
            out["pixel_size"] = run.pixel_size
        return out

    def output_removed(self, layer: Any) -> bool:
        """The user removed ``layer``: if it was the output, forget it and its std layer.
        True when it was the layer this run writes into (a running run should stop)."""
        if not same_layer(layer, self.output_layer):
            return False
        self.output_layer = None
        remove_std(self.viewer, layer.name)
        if layer.name != self.run.name:
            return False
        self.run.output_gone = True
        return True
