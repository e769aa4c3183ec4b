"""Real training images: reading folders of TIFF/PNG/npy files into a patch dataset.

Every file becomes one or more single-channel float32 planes:

- TIFF (``tifffile``), PNG (Pillow) and ``.npy`` (``numpy.load`` without pickle); 8- and
  16-bit integers, signed integers, floats; stacks are split into 2-D planes.
- RGB(A) and palette images (display images with a colour look-up table) are reduced to one
  channel: identical channels → that channel; a single non-empty channel (a pure green LUT)
  → that channel; otherwise the luminance 0.299 R + 0.587 G + 0.114 B (a magenta, cyan or
  orange LUT is a positive combination of the channels, so luminance is proportional to the
  intensity until a channel saturates).
- Saturated pixels are flagged in integer data: those at the plane's maximum (after the
  reduction to one channel, so at the top of whatever look-up table). Patches with more than
  ``max_saturated`` of their pixels flagged are skipped.

Per-image robust normalisation: the 0.1st percentile maps to 0 and the 99.9th to 1 (the whole
plane, not the patch, so dim regions of an image stay dim). When a patch is drawn, that unit is
mapped as in :func:`pkl_dg.training.phantoms.normalise_patch`: the image's 99.9th percentile at
``q ~ U(0.7, 0.9)`` (lower if the image maximum would pass 1) plus a background ``b ~ U(0, 0.1)``.
With probability ``patch_norm`` (default 0.5) the patch's own percentiles are used instead, as
for the procedural phantoms.

Patches are random crops of ``patch / zoom`` pixels resized to ``patch`` (bilinear, antialiased)
with ``zoom`` log-uniform in ``zoom_range``, then one of the 8 flips/rotations and a mild gamma.

Split by file: :func:`split_by_file` puts whole files into validation, chosen by a hash of
their path relative to the data folder (stable, independent of the machine and of other files).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pkl_dg.training.phantoms import augment

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass
class RealImage:
    """One normalised plane: ``image`` in units of (p99.9 − p0.1), ``saturated`` mask or None."""

    path: str
    group: str
    image: np.ndarray
    saturated: np.ndarray | None
    note: str

    @property
    def max(self) -> float:
        return float(self.image.max())


def reduce_rgb(rgb: np.ndarray) -> tuple[np.ndarray, str]:
    """Reduce an (H, W, 3) display image to one float channel; return it and how."""
    a = rgb[..., :3].astype(np.float64)
    if np.abs(a - a[..., :1]).max() <= 1:
        return a[..., 0], "grey RGB"
    peak = a.reshape(-1, 3).max(0)
    used = peak > 0.02 * peak.max()
    if used.sum() == 1:
        c = int(np.argmax(used))
        return a[..., c], f"single channel {'RGB'[c]}"
    return a @ LUMA, "luminance"


def _saturation(plane: np.ndarray, integer: bool) -> np.ndarray | None:
    """Pixels at the top of the range of integer (display or camera) data, or None.

    The top is the plane's own maximum, whatever the dtype or look-up table (a colour LUT
    can end at any colour), so an unsaturated image flags only its few brightest pixels.
    Float data (already processed) are never flagged.
    """
    if not integer:
        return None
    hit = plane >= plane.max() - 1e-6 * max(abs(float(plane.max())), 1.0)
    return hit

def read_planes(path: str | Path) -> list[tuple[np.ndarray, np.ndarray | None, str]]:
    """Read one file as a list of ``(plane float64, saturated mask or None, note)``."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
        rgb = False
    elif suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(p) as tf:
            arr = tf.asarray()
            photometric = tf.pages[0].photometric
        rgb = arr.ndim >= 3 and arr.shape[-1] in (3, 4) and getattr(photometric, "name", "") == "RGB"
    elif suffix == ".png":
        from PIL import Image

        with Image.open(p) as im:
            if im.mode in ("P", "PA"):
                im = im.convert("RGB")
            elif im.mode == "LA":
                im = im.convert("L")
            arr = np.asarray(im)
        rgb = arr.ndim == 3
    else:
        raise ValueError(f"{p}: unsupported file type {suffix!r} (use {', '.join(IMAGE_SUFFIXES)})")
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr) or arr.dtype == bool:
        raise ValueError(f"{p}: unsupported dtype {arr.dtype}")
    integer = arr.dtype.kind in "ui"
    if rgb:
        plane, note = reduce_rgb(arr)
        return [(plane, _saturation(plane, integer), f"RGB → {note}")]
    if arr.ndim < 2:
        raise ValueError(f"{p} has shape {arr.shape}: need 2-D images")
    stack = arr.reshape((-1,) + arr.shape[-2:]).astype(np.float64)
    note = f"{arr.dtype}" + (f", plane {{}} of {len(stack)}" if len(stack) > 1 else "")
    return [(plane, _saturation(plane, integer), note.format(i)) for i, plane in enumerate(stack)]


def normalise_image(img: np.ndarray) -> np.ndarray:
    """Robust per-image unit: (img − p0.1) / (p99.9 − p0.1), negatives clipped to 0 (float32)."""
    lo, hi = np.percentile(img, [0.1, 99.9])
    span = hi - lo if hi > lo else max(float(img.max() - lo), 1e-12)
    return np.maximum((img - lo) / span, 0.0).astype(np.float32)


def list_image_files(directory: str | Path) -> list[Path]:
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"--data {d} is not a directory: give a folder of sharp images")
    files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--data {d} contains no image files ({', '.join(IMAGE_SUFFIXES)}): put sharp "
                         "(ground-truth quality) images there")
    return files


def _group(rel: str) -> str:
    parts = Path(rel).parts
    return parts[0] if len(parts) > 1 else "."


def split_by_file(rel_paths: list[str], val_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """Deterministic split of files into (train, validation).

    Files are grouped by their top folder (the source). In a group of ≥ 3 files,
    ``round(n · val_fraction)`` of them (at least one) go to validation: those with the smallest
    SHA-1 of their relative path. Groups of 1–2 files stay in training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {val_fraction}")
    groups: dict[str, list[str]] = {}
    for r in sorted(rel_paths):
        groups.setdefault(_group(r), []).append(r)
    val: set[str] = set()
    for members in groups.values():
        if len(members) < 3 or val_fraction == 0:
            continue
        k = max(1, int(round(len(members) * val_fraction)))
        val.update(sorted(members, key=lambda r: hashlib.sha1(r.encode()).hexdigest())[:k])
    return [r for r in sorted(rel_paths) if r not in val], sorted(val)


def load_images(directory: str | Path, min_size: int, files: list[str] | None = None) -> list[RealImage]:
    """Load (a subset ``files`` of) the images under ``directory`` as normalised planes.

    Planes smaller than ``min_size`` px raise ValueError. Planes smaller than the patch are
    still usable: their crops are upsampled to the patch size.
    """
    d = Path(directory).expanduser()
    paths = list_image_files(d) if files is None else [d / f for f in files]
    out = []
    for f in paths:
        rel = f.relative_to(d).as_posix()
        try:
            planes = read_planes(f)
        except ValueError:
            raise
        except Exception as exc:  # readers raise many types for broken files
            raise ValueError(f"cannot read {f}: {exc}") from exc
        for plane, sat, note in planes:
            if min(plane.shape) < min_size:
                raise ValueError(f"{f} is {plane.shape} px, smaller than {min_size} px (the patch size divided by "
                                 "the largest zoom): use a smaller --patch, a larger --zoom maximum or larger images")
            if not np.isfinite(plane).all():
                raise ValueError(f"{f} contains NaN or infinite values")
            out.append(RealImage(rel, _group(rel), normalise_image(plane), sat, note))
    return out


def _resize(region: np.ndarray, size: int) -> np.ndarray:
    if region.shape == (size, size):
        return region
    t = torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)[0, 0].numpy()


class RealImageSource:
    """Random patches of real images for the training loop (same interface as PhantomSource).

    Parameters
    ----------
    images : list of RealImage
    rng : numpy Generator (shared with the training loop, saved in checkpoints)
    patch : patch size in px
    zoom_range : (min, max) resampling factor, log-uniform; 1 = native pixels, 2 = each
        native pixel becomes 2 px (structures look twice as wide)
    max_saturated : skip a patch with more than this fraction of saturated pixels
    min_contrast : skip a patch whose p99.9 − p0.1 is below this (in image units, p99.9 = 1)
    patch_norm : probability of normalising a patch by its own p0.1/p99.9 instead of the
        image's (keeps dim regions of large images from dominating)
    blur : probability of blurring a patch (after resampling) with a Gaussian of σ drawn
        uniformly from ``blur_sigma`` px, so that the prior also knows these structures
        at widefield resolution (a denoising-only restoration asks it for those)

    Files are balanced by source: each top folder is drawn equally often, and within a
    folder a file with probability ∝ √(pixels).
    """

    def __init__(self, images: list[RealImage], rng: np.random.Generator, patch: int,
                 zoom_range: tuple[float, float] = (0.5, 2.0), max_saturated: float = 0.01,
                 min_contrast: float = 0.05, patch_norm: float = 0.5, tries: int = 10,
                 blur: float = 0.0, blur_sigma: tuple[float, float] = (0.5, 2.5)) -> None:
        if not images:
            raise ValueError("no real images to draw patches from")
        lo, hi = zoom_range
        if not 0 < lo <= hi:
            raise ValueError(f"zoom range must be 0 < min ≤ max, got {zoom_range}")
        self.images, self.rng, self.patch = images, rng, patch
        self.zoom_range, self.max_saturated, self.min_contrast, self.tries = zoom_range, max_saturated, \
            min_contrast, tries
        self.patch_norm = patch_norm
        if not 0.0 <= blur <= 1.0 or not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur must be a probability and 0 < σ min ≤ σ max, got {blur}, "
                             f"{blur_sigma}")
        self.blur, self.blur_sigma = blur, blur_sigma
        groups = sorted({im.group for im in images})
        w = np.array([np.sqrt(im.image.size) for im in images])
        for g in groups:
            idx = [i for i, im in enumerate(images) if im.group == g]
            w[idx] /= w[idx].sum() * len(groups)
        self.weights = w / w.sum()
        self.skipped = {"saturated": 0, "flat": 0}

    def step(self) -> None:  # nothing to refresh
        pass

    def _crop(self, im: RealImage, rng: np.random.Generator) -> tuple[np.ndarray, float] | None:
        h, w = im.image.shape
        lo, hi = self.zoom_range
        zoom = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        r = min(max(int(round(self.patch / zoom)), 8), h, w)
        y, x = int(rng.integers(0, h - r + 1)), int(rng.integers(0, w - r + 1))
        if im.saturated is not None and im.saturated[y:y + r, x:x + r].mean() > self.max_saturated:
            self.skipped["saturated"] += 1
            return None
        region = im.image[y:y + r, x:x + r]
        lo_v, hi_v = np.percentile(region, [0.1, 99.9])
        if hi_v - lo_v < self.min_contrast:
            self.skipped["flat"] += 1
            return None
        return _resize(region, self.patch), zoom

    def sample_with(self, rng: np.random.Generator, gamma: bool = True, return_path: bool = False):
        """One patch in [0, 1] (float32), drawn with ``rng`` (and its file's path if asked)."""
        for _ in range(100):
            im = self.images[int(rng.choice(len(self.images), p=self.weights))]
            for _ in range(self.tries):
                got = self._crop(im, rng)
                if got is not None:
                    break
            if got is not None:
                break
        else:
            raise ValueError("no usable patch found in 1000 tries: the images are flat or saturated "
                             "(lower --max-saturated's strictness or check the data)")
        crop = got[0]
        if self.blur > 0 and rng.random() < self.blur:  # no draw at all without blur
            from scipy.ndimage import gaussian_filter

            crop = gaussian_filter(crop, float(rng.uniform(*self.blur_sigma)), mode="reflect")
        b, q = rng.uniform(0.0, 0.1), rng.uniform(0.7, 0.9)
        if rng.random() < self.patch_norm:  # the patch's own p0.1 / p99.9, as for the phantoms
            lo_v, hi_v = np.percentile(crop, [0.1, 99.9])
            crop = np.maximum(crop - lo_v, 0.0) / max(hi_v - lo_v, 1e-12)
            top = float(crop.max())
        else:
            top = im.max
        scale = min(q - b, (1.0 - b) / max(top, 1e-12))
        x = np.clip(b + crop * scale, 0.0, 1.0).astype(np.float32)
        if gamma:
            x = augment(x, rng)
        else:
            x = np.ascontiguousarray(np.rot90(x, int(rng.integers(0, 4))), dtype=np.float32)
        return (x, im.path) if return_path else x

    def sample(self) -> np.ndarray:
        return self.sample_with(self.rng)


class RealPatchDataset(torch.utils.data.Dataset):
    """A fixed, reproducible set of ``n`` patches: item ``i`` is drawn with ``default_rng([seed, i])``.

    Used for validation (held-out files, native pixel size, no gamma) and usable with a
    ``DataLoader``. Items are (1, patch, patch) float32 tensors in [0, 1].
    """

    def __init__(self, source: RealImageSource, n: int, seed: int = 0, gamma: bool = False) -> None:
        self.source, self.n, self.seed, self.gamma = source, n, seed, gamma

    def __len__(self) -> int:
        return self.n

    def item(self, i: int) -> tuple[np.ndarray, str]:
        """Patch ``i`` as a (patch, patch) array and the relative path of its file."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source.sample_with(np.random.default_rng([self.seed, i]), gamma=self.gamma, return_path=True)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.item(i)[0])[None]


def describe(images: list[RealImage]) -> dict[str, int]:
    """Number of planes per source folder."""
    out: dict[str, int] = {}
    for im in images:
        out[im.group] = out.get(im.group, 0) + 1
    return out
