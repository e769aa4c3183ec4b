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
    ``data_budget`` the plane's PKL data budget (RL-equivalent iterations, and why:
    :func:`pkl_dg.guidance.data_budget.data_budget`), which the chunks share.
    """

    box: tuple[int, int, int, int]
    plane_shape: tuple[int, int]
    rl_start: float
    intensity_scale: float | None = None
    data_budget: tuple[int, str] | None = None


__all__ = ["PlaneChunk"]
