"""Training patch sources: procedural phantoms, and the mix of phantoms with real images.

Real images come from :class:`pkl_dg.training.images.RealImageSource`. Both yield float32 patches in ``[0, 1]`` (see :func:`pkl_dg.training.phantoms.normalise_patch`);
the training loop maps them to the model domain with ``z = 2·x − 1``.
"""

from __future__ import annotations

import numpy as np

from pkl_dg.training.images import RealImageSource
from pkl_dg.training.phantoms import PhantomConfig, augment, normalise_patch, render_phantom

class PhantomSource:
    """Random crops from a pool of procedural canvases, refreshed a few at a time.

    Rendering a 256² canvas costs ~20 ms; keeping a pool and replacing ``refresh`` canvases
    per batch keeps data generation a small fraction of a training step while still
    showing the network new structures all the time.
    """

    def __init__(self, rng: np.random.Generator, patch: int, pool: int = 64, refresh: int = 2,
                 canvas: int | None = None, config: PhantomConfig | None = None) -> None:
        if patch < 16:
            raise ValueError(f"patch size must be at least 16 px, got {patch}")
        self.rng = rng
        self.patch = patch
        self.canvas = max(canvas or 256, patch)
        self.refresh = refresh
        self.config = config
        self.pool = [render_phantom(rng, self.canvas, config) for _ in range(pool)]
        self._next = 0

    def step(self) -> None:
        """Replace the ``refresh`` oldest canvases."""
        for _ in range(self.refresh):
            self.pool[self._next] = render_phantom(self.rng, self.canvas, self.config)
            self._next = (self._next + 1) % len(self.pool)

    def sample(self) -> np.ndarray:
        img = self.pool[int(self.rng.integers(len(self.pool)))]
        return _crop_normalise(img, self.patch, self.rng)


def _crop_normalise(img: np.ndarray, patch: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    y = int(rng.integers(0, h - patch + 1))
    x = int(rng.integers(0, w - patch + 1))
    crop = img[y:y + patch, x:x + patch]
    return augment(normalise_patch(crop, rng), rng)


class MixedSource:
    """Draw each patch from ``procedural`` with probability ``p_procedural``, else ``user``."""

    def __init__(self, procedural: PhantomSource | None, user: RealImageSource | None,
                 p_procedural: float, rng: np.random.Generator) -> None:
        if procedural is None and user is None:
            raise ValueError("no training data source")
        if not 0.0 <= p_procedural <= 1.0:
            raise ValueError(f"procedural fraction must be in [0, 1], got {p_procedural}")
        self.procedural, self.user, self.p, self.rng = procedural, user, p_procedural, rng

    def batch(self, n: int) -> np.ndarray:
        for s in (self.procedural, self.user):
            if s is not None:
                s.step()
        out = []
        for _ in range(n):
            use_proc = self.user is None or (self.procedural is not None and self.rng.random() < self.p)
            out.append((self.procedural if use_proc else self.user).sample())
        return np.stack(out)[:, None]
