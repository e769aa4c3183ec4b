"""Image-quality metrics by the CARE protocol (Weigert et al. 2018; DESIGN §4).

The ground truth g is normalised by its 0.1/99.9 percentiles; the prediction p is fitted
to it by least squares (p' = a·p + b); then PSNR = 10·log10(1/MSE(p', g)) and SSIM with
data_range = 1 (``skimage.metrics.structural_similarity`` with its defaults: 7×7
uniform window), as in the reference figures of DESIGN §4.
"""

from __future__ import annotations

import numpy as np


def normalize_percentile(g: np.ndarray, low: float = 0.1, high: float = 99.9) -> np.ndarray:
    g = np.asarray(g, dtype=np.float64)
    lo, hi = np.percentile(g, [low, high])
    if hi <= lo:
        raise ValueError("ground truth is constant: metrics are undefined")
    return (g - lo) / (hi - lo)


def fit_affine(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Least-squares a·p + b ≈ g."""
    p = np.asarray(p, dtype=np.float64).ravel()
    gg = np.asarray(g, dtype=np.float64).ravel()
    design = np.stack([p, np.ones_like(p)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, gg, rcond=None)
    return (a * np.asarray(p) + b).reshape(np.shape(g))


def care_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """PSNR (dB), SSIM and NRMSE of ``pred`` against ``gt`` by the CARE protocol."""
    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"prediction {np.shape(pred)} and ground truth {np.shape(gt)} differ")
    g = normalize_percentile(gt)
    p = fit_affine(pred, g)
    mse = float(np.mean((p - g) ** 2))
    psnr = 10 * np.log10(1.0 / mse) if mse > 0 else float("inf")
    return {"psnr": float(psnr), "ssim": ssim(p, g), "nrmse": float(np.sqrt(mse) / (g.std() + 1e-12))}


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(a, dtype=np.float64),
                                       np.asarray(b, dtype=np.float64), data_range=data_range))
