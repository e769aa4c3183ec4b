"""Training patch sources: procedural phantoms and the user's own TIFF images.

Both yield float32 patches in ``[0, 1]`` (see :func:`pkl_dg.training.phantoms.normalise_patch`);
the training loop maps them to the model domain with ``z = 2·x − 1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pkl_dg.training.phantoms import PhantomConfig, augment, normalise_patch, render_phantom

TIFF_SUFFIXES = (".tif", ".tiff")


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


def load_tiff_images(directory: str | Path, min_size: int) -> list[tuple[str, np.ndarray]]:
    """Load every 2-D plane of every TIFF in ``directory`` (recursively) as float32.

    Stacks (Z/T/C, ...) are split into planes. Raises ValueError/FileNotFoundError with a
    message naming the file when something is unusable.
    """
    import tifffile

    d = Path(directory).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"--data {d} is not a directory: give a folder of sharp TIFF images")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in TIFF_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"--data {d} contains no .tif/.tiff files: put sharp (ground-truth quality) "
                         "TIFF images there")
    planes: list[tuple[str, np.ndarray]] = []
    for f in files:
        try:
            arr = tifffile.imread(f)
        except Exception as exc:  # tifffile raises many types for broken files
            raise ValueError(f"cannot read TIFF {f}: {exc}") from exc
        arr = np.asarray(arr)
        if arr.ndim < 2:
            raise ValueError(f"TIFF {f} has shape {arr.shape}: need 2-D images")
        if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8:
            raise ValueError(f"TIFF {f} looks like an RGB picture {arr.shape}: save single-channel "
                             "microscopy images instead")
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise ValueError(f"TIFF {f} has unsupported dtype {arr.dtype}")
        stack = arr.reshape((-1,) + arr.shape[-2:]).astype(np.float32)
        if min(stack.shape[-2:]) < min_size:
            raise ValueError(f"TIFF {f} planes are {stack.shape[-2:]} px, smaller than the training patch "
                             f"({min_size} px): use --patch {min(stack.shape[-2:]) // 16 * 16} or larger images")
        if not np.isfinite(stack).all():
            raise ValueError(f"TIFF {f} contains NaN or infinite values")
        for i, plane in enumerate(stack):
            planes.append((f"{f}[{i}]", plane))
    return planes


class TiffSource:
    """Random, intensity-normalised, augmented patches of the user's TIFF images.

    Patches that are nearly flat (no structure: 99.9th minus 0.1th percentile below 1% of
    the image's range) are redrawn a few times before being accepted, so empty background
    does not dominate.
    """

    def __init__(self, directory: str | Path, rng: np.random.Generator, patch: int) -> None:
        self.rng = rng
        self.patch = patch
        self.planes = load_tiff_images(directory, patch)
        self.ranges = [float(np.percentile(p, 99.9) - np.percentile(p, 0.1)) for _, p in self.planes]
        self.weights = np.array([p.size for _, p in self.planes], dtype=float)
        self.weights /= self.weights.sum()

    def step(self) -> None:  # nothing to refresh
        pass

    def sample(self) -> np.ndarray:
        i = int(self.rng.choice(len(self.planes), p=self.weights))
        img, rng_i = self.planes[i][1], self.ranges[i]
        for _ in range(5):
            h, w = img.shape
            y = int(self.rng.integers(0, h - self.patch + 1))
            x = int(self.rng.integers(0, w - self.patch + 1))
            crop = img[y:y + self.patch, x:x + self.patch]
            if np.percentile(crop, 99.9) - np.percentile(crop, 0.1) > 0.01 * rng_i:
                break
        return augment(normalise_patch(crop, self.rng), self.rng)


class MixedSource:
    """Draw each patch from ``procedural`` with probability ``p_procedural``, else ``user``."""

    def __init__(self, procedural: PhantomSource | None, user: TiffSource | None,
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
