"""Reading images and writing float32 results with their parameters as JSON metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_image(path: str | Path, what: str = "input image") -> np.ndarray:
    """Read a TIFF or ``.npy`` image (``what`` names it in error messages)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            return np.asarray(tifffile.imread(p))
        except (ValueError, tifffile.TiffFileError) as exc:
            raise ValueError(f"cannot read TIFF {p}: {exc}") from None
    if suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"cannot read {p}: {exc}") from None
    raise ValueError(f"{what} {p} has unsupported type {suffix!r}: use .tif, .tiff or .npy")


def write_result(path: str | Path, image: np.ndarray, metadata: dict, overwrite: bool = False) -> None:
    """Write ``image`` as float32 TIFF with ``metadata`` as JSON in the image description."""
    import tifffile

    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists: pass --overwrite to replace it")
    if p.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"output must be a .tif or .tiff file, got {p.name}")
    tifffile.imwrite(p, np.asarray(image, dtype=np.float32),
                     description=json.dumps(metadata, sort_keys=True), metadata=None)


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata written by :func:`write_result`."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return json.loads(tif.pages[0].description)
