"""What a chunk of a plane shares with the whole plane when ``pkl-dg batch`` restores the
plane in chunks (:func:`pkl_dg.restoration.restore_iter`'s ``chunk``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlaneChunk:
    """What a chunk of a plane shares with the whole plane (``pkl-dg batch``).

    ``box`` (y0, y1, x0, x1), half-open px, within a plane of ``plane_shape`` (H, W);
    ``rl_start`` the plane's Richardson–Lucy start level and ``intensity_scale`` its scale
    s, photons (the chunk's own would differ; None for Richardson–Lucy, which has none);
    ``rl_auto_iterations`` the plane's automatic RL count, which sets PKL's data budget.
    """

    box: tuple[int, int, int, int]
    plane_shape: tuple[int, int]
    rl_start: float
    intensity_scale: float | None = None
    rl_auto_iterations: int | None = None


__all__ = ["PlaneChunk"]
