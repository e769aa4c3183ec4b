"""The acquisition model y ~ Poisson(A x + B) (+ Gaussian read noise of variance s²)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pkl_dg.physics.convolution import PSFConvolution


@dataclass
class ForwardModel:
    """A PSF blur, a background and the camera's read-noise variance, in photon units.

    ``background`` is a scalar or a tensor broadcastable to the image (a background map);
    ``read_noise_var`` is s² in photons² (read noise in e⁻ rms, squared). ``mask`` (optional,
    broadcastable to the image, 1 = use, 0 = ignore) leaves pixels out of the data fit, e.g.
    saturated ones (:mod:`pkl_dg.saturation`): every likelihood weights its per-pixel terms
    by it, and :meth:`adjoint_ones` returns Aᵀ(mask), the normaliser that keeps the
    Richardson–Lucy / Poisson-preconditioned step exact on the pixels that remain.
    """

    conv: PSFConvolution
    background: float | torch.Tensor = 0.0
    read_noise_var: float = 0.0
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        b = self.background
        if torch.is_tensor(b):
            if not torch.isfinite(b).all() or (b < 0).any():
                raise ValueError("background map must be finite and non-negative")
        elif not (b == b and b >= 0 and b != float("inf")):
            raise ValueError(f"background must be a finite non-negative number, got {b}")
        if not self.read_noise_var >= 0:
            raise ValueError(f"read-noise variance must be ≥ 0, got {self.read_noise_var}")
        if self.mask is not None:
            m = self.mask
            if not torch.is_tensor(m) or not torch.isfinite(m).all() or (m < 0).any() or \
                    (m > 1).any():
                raise ValueError("likelihood mask must be a tensor of weights in [0, 1]")
            if not bool((m > 0).any()):
                raise ValueError("likelihood mask leaves no pixel to fit")
        self._masked_ones: dict = {}

    def weight(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` times the likelihood mask (unchanged without one)."""
        return v if self.mask is None else v * self.mask.to(v.device, v.dtype)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv.A(x)

    def A_adjoint(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv.A_adjoint(z)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Expected photon counts μ = A x + B, never below 0.

        For x ≥ 0 the blur is ≥ 0, but the FFT rounds: over exact-zero background it
        returns values like −1e-7, whose logarithm is NaN. A Poisson mean cannot be
        negative, so μ is clamped at 0 (a no-op on everything but rounding error).
        """
        return (self.conv.A(x) + self.background).clamp(min=0)

    def adjoint_ones(self, like: torch.Tensor) -> torch.Tensor:
        """Aᵀ1 over the last d axes of ``like`` (Aᵀ(mask) when a mask is set)."""
        d = self.conv.ndim
        if self.mask is None:
            return self.conv.adjoint_ones(*like.shape[-d:], dtype=like.dtype,
                                          device=like.device)
        key = (tuple(like.shape[-d:]), like.dtype, str(like.device))
        if key not in self._masked_ones:
            m = self.mask.to(like.device, like.dtype).expand(like.shape[-d:])
            self._masked_ones[key] = self.conv.A_adjoint(m.contiguous())
        return self._masked_ones[key]
