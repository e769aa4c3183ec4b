"""Preallocated A and Aᵀ of one PSF operator for images of one shape (Richardson–Lucy's and
the proximal step's inner loop)."""

from __future__ import annotations

import torch

from pkl_dg.physics.convolution import PSFConvolution
from pkl_dg.physics.filtering import fft_filter, use_blocks, valid_filter


class ConvWorkspace:
    """A and Aᵀ of one :class:`PSFConvolution` for images of one shape, buffers preallocated.

    Each application is exactly two real FFTs (``rfftn``/``irfftn`` on the smooth padded
    grid, OTF cached) plus the reflect padding or its fold as slice copies of the margins;
    nothing is allocated per call. Results are *views of internal buffers*, valid until the
    next call of the same kind: copy what must outlive it.

    Parameters
    ----------
    conv
        The operator (FFT backend).
    shape
        Full input shape ``(..., [Z,] Y, X)``; leading axes are a batch.
    dtype, device
        float32 or float64; where the buffers live.

    Memory: three arrays of the padded FFT size (canvas, its spectrum, the inverse), i.e.
    about 3 × 4 bytes × ∏(n + 2r → smooth) per batch element in float32. A large 2D image on
    the CPU (:func:`pkl_dg.physics.blocked.use_blocks`) is filtered in tiles instead
    (:func:`pkl_dg.physics.blocked.valid_filter`), with buffers of the padded image size.
    """

    def __init__(self, conv: PSFConvolution, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> None:
        if conv.backend != "fft":
            raise ValueError("ConvWorkspace needs the 'fft' backend")
        d = conv.ndim
        self.conv, self.shape = conv, tuple(shape)
        self.image_shape = self.shape[-d:]
        conv._check_fits(self.image_shape)
        lead = self.shape[:-d]
        # a large 2D image on the CPU goes through the operator's tiles instead
        self._blocked = use_blocks(d, conv.radius, self.image_shape,
                                   torch.empty(0, device=device))
        if self._blocked:  # buffers: padded input, Cᵀz with 2r of zeros, both outputs
            padded = tuple(n + 2 * r for n, r in zip(self.image_shape, conv.radius))
            self._padded = padded
            self._pad = torch.empty(*lead, *padded, dtype=dtype, device=device)
            self._u = torch.zeros(*lead, *(n + 2 * r for n, r in zip(padded, conv.radius)),
                                  dtype=dtype, device=device)
            self._zin = self._u[conv._centre(self.image_shape, offset=2)]
            self._out = torch.zeros(self.shape, dtype=dtype, device=device)
            self._full = torch.empty(*lead, *padded, dtype=dtype, device=device)
            self._tile_otfs = (conv._tile_otf(self._out, conj=False),
                               conv._tile_otf(self._out, conj=True))
            return
        self.fshape = conv.padded_shape(*self.image_shape)
        self._dims = conv._dims()
        self._otf = conv.otf(self.fshape, dtype, device)
        self._otf_conj = conv.otf_conj(self.fshape, dtype, device)
        self._canvas = torch.zeros(*lead, *self.fshape, dtype=dtype, device=device)
        self._spec = torch.empty(*lead, *self._otf.shape, dtype=self._otf.dtype, device=device)
        self._full = torch.empty(*lead, *self.fshape, dtype=dtype, device=device)
        self._centre = conv._centre(self.image_shape)
        self._margins = [t for axis in range(d) if conv.radius[axis] > 0 for t, _ in
                         conv._margin_slices(self.image_shape, axis)]
        self._margins_hold_data = False

    def _transform(self, otf: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
        return fft_filter(self._canvas, otf, self.fshape, self._dims, offset,
                          spec=self._spec, out=self._full)

    def A(self, x: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
        """A x + ``offset`` (a view, valid until the next :meth:`A` or :meth:`adjoint`).

        The constant is added on the spectrum's zero-frequency bin: no extra pass.
        """
        if self._blocked:
            self.conv._pad_into(self._pad, x)
            return valid_filter(self._pad, self._tile_otfs[0], self.conv.radius,
                                self.image_shape, out=self._out, offset=offset)
        self.conv._pad_into(self._canvas, x)
        self._margins_hold_data = True
        return self._transform(self._otf, offset)[self._centre]

    def output(self) -> torch.Tensor:
        """The view :meth:`A` and :meth:`adjoint` return (usable as scratch in between)."""
        return self._out if self._blocked else self._full[self._centre]

    def adjoint_input(self) -> torch.Tensor:
        """The view to write z into before :meth:`adjoint` (saves a copy)."""
        if self._blocked:
            return self._zin
        if self._margins_hold_data:  # Cᵀ z is zero outside the image
            for m in self._margins:
                self._canvas[m] = 0
            self._margins_hold_data = False
        return self._canvas[self._centre]

    def adjoint(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """Aᵀ z (a view, valid until the next call); z = None uses what was written into
        :meth:`adjoint_input`."""
        if self._blocked:
            if z is not None:
                self._zin.copy_(z)
            full = valid_filter(self._u, self._tile_otfs[1], self.conv.radius, self._padded,
                                out=self._full)
            return self.conv._fold_into(full, self.image_shape)
        target = self.adjoint_input()
        if z is not None:
            target.copy_(z)
        return self.conv._fold_into(self._transform(self._otf_conj), self.image_shape)
