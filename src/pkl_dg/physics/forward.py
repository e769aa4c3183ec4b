"""The acquisition model y ~ Poisson(A x + B) (+ Gaussian read noise of variance s²)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pkl_dg.physics.convolution import PSFConvolution


@dataclass
class ForwardModel:
    """A PSF blur, a background and the camera's read-noise variance, in photon units.

    ``background`` is a scalar or a tensor broadcastable to the image (a background map);
    ``read_noise_var`` is s² in photons² (read noise in e⁻ rms, squared).
    """

    conv: PSFConvolution
    background: float | torch.Tensor = 0.0
    read_noise_var: float = 0.0

    def __post_init__(self) -> None:
        b = self.background
        if torch.is_tensor(b):
            if not torch.isfinite(b).all() or (b < 0).any():
                raise ValueError("background map must be finite and non-negative")
        elif not (b == b and b >= 0 and b != float("inf")):
            raise ValueError(f"background must be a finite non-negative number, got {b}")
        if not self.read_noise_var >= 0:
            raise ValueError(f"read-noise variance must be ≥ 0, got {self.read_noise_var}")

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
        d = self.conv.ndim
        return self.conv.adjoint_ones(*like.shape[-d:], dtype=like.dtype, device=like.device)
