"""Preallocated A and Aᵀ of one PSF operator for images of one shape (Richardson–Lucy's and
the proximal step's inner loop)."""

from __future__ import annotations

import numpy as np
import torch

from pkl_dg.physics.convolution import PSFConvolution
from pkl_dg.physics.filtering import fft_filter, use_blocks, valid_filter


class _MarginViews:
    """The reflect margins of one padded CPU buffer and the pixels they mirror, as fixed numpy
    views: the padding and its adjoint (the fold) without any per-call indexing.

    Why numpy and not torch: these are small copies and additions (O(n·r) pixels each, four
    per direction in 2D). As torch operations each costs 5–15 µs of slicing and dispatch; as
    copies between prebuilt numpy views about 1–2 µs. Measured at 512² (r = 8 px, 2
    threads): 0.25–0.3 ms of a 3.3 ms Richardson–Lucy iteration went to them.

    Parameters
    ----------
    conv
        The operator whose :meth:`~PSFConvolution._margin_slices` define the margins.
    buf
        The padded CPU buffer (..., n + 2r, …) the views are of (kept alive by the views).
    shape
        The image's shape (the last ``conv.ndim`` axes).
    """

    def __init__(self, conv: PSFConvolution, buf: torch.Tensor, shape: tuple[int, ...]) -> None:
        a = buf.numpy()
        # (margin, mirrored interior flipped along the axis), axis by axis, as _pad_into
        self.axes = [[(a[margin], np.flip(a[source], axis - conv.ndim))
                      for margin, source in conv._margin_slices(shape, axis)]
                     for axis in range(conv.ndim) if conv.radius[axis] > 0]

    def pad(self) -> None:
        """Fill the margins from the interior (which must hold the image)."""
        for pairs in self.axes:
            for margin, mirrored in pairs:
                np.copyto(margin, mirrored)

    def fold(self) -> None:
        """Add every margin pixel onto the pixel it mirrors (the transpose of :meth:`pad`:
        axes last to first, in :meth:`PSFConvolution._fold_into`'s order)."""
        for pairs in reversed(self.axes):
            for margin, mirrored in pairs:
                np.add(mirrored, margin, out=mirrored)

    def zero(self) -> None:
        """Set the margins to 0."""
        for pairs in self.axes:
            for margin, _ in pairs:
                margin.fill(0)


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
    the CPU (:func:`pkl_dg.physics.filtering.use_blocks`) is filtered in tiles instead
    (:func:`pkl_dg.physics.filtering.valid_filter`), with buffers of the padded image size.
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
        centre = conv._centre(self.image_shape)
        cpu = torch.device(device).type == "cpu"
        # a large 2D image on the CPU goes through the operator's tiles instead
        self._blocked = use_blocks(d, conv.radius, self.image_shape,
                                   torch.empty(0, device=device))
        if self._blocked:  # buffers: padded input, Cᵀz with 2r of zeros, both outputs
            padded = tuple(n + 2 * r for n, r in zip(self.image_shape, conv.radius))
            self._padded = padded
            self._canvas = torch.empty(*lead, *padded, dtype=dtype, device=device)
            self._u = torch.zeros(*lead, *(n + 2 * r for n, r in zip(padded, conv.radius)),
                                  dtype=dtype, device=device)
            self._zin = self._u[conv._centre(self.image_shape, offset=2)]
            self._out = torch.zeros(self.shape, dtype=dtype, device=device)
            self._full = torch.empty(*lead, *padded, dtype=dtype, device=device)
            self._tile_otfs = (conv._tile_otf(self._out, conj=False),
                               conv._tile_otf(self._out, conj=True))
        else:
            self.fshape = conv.padded_shape(*self.image_shape)
            self._dims = conv._dims()
            self._otf = conv.otf(self.fshape, dtype, device)
            self._otf_conj = conv.otf_conj(self.fshape, dtype, device)
            self._canvas = torch.zeros(*lead, *self.fshape, dtype=dtype, device=device)
            self._spec = torch.empty(*lead, *self._otf.shape, dtype=self._otf.dtype,
                                     device=device)
            self._full = torch.empty(*lead, *self.fshape, dtype=dtype, device=device)
            self._out = self._full[centre]
            self._zin = self._canvas[centre]
            self._margins = [t for axis in range(d) if conv.radius[axis] > 0 for t, _ in
                             conv._margin_slices(self.image_shape, axis)]
            self._margins_hold_data = False
        self._x_in = self._canvas[centre]
        self._full_in = self._full[centre]
        # on the CPU the margins are copied between fixed numpy views (see _MarginViews)
        self._pad_views = _MarginViews(conv, self._canvas, self.image_shape) if cpu else None
        self._fold_views = _MarginViews(conv, self._full, self.image_shape) if cpu else None

    def _transform(self, otf: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
        return fft_filter(self._canvas, otf, self.fshape, self._dims, offset,
                          spec=self._spec, out=self._full)

    def _pad(self, x: torch.Tensor) -> None:
        """x reflect-padded into the canvas (the buffer the blur reads)."""
        if self._pad_views is None:
            self.conv._pad_into(self._canvas, x)
        else:
            self._x_in.copy_(x)
            self._pad_views.pad()

    def _fold(self) -> torch.Tensor:
        """The adjoint of :meth:`_pad` applied to the full output, in place; its interior."""
        if self._fold_views is None:
            return self.conv._fold_into(self._full, self.image_shape)
        self._fold_views.fold()
        return self._full_in

    def A(self, x: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
        """A x + ``offset`` (a view, valid until the next :meth:`A` or :meth:`adjoint`).

        The constant is added on the spectrum's zero-frequency bin: no extra pass.
        """
        self._pad(x)
        if self._blocked:
            return valid_filter(self._canvas, self._tile_otfs[0], self.conv.radius,
                                self.image_shape, out=self._out, offset=offset)
        self._margins_hold_data = True
        self._transform(self._otf, offset)
        return self._out

    def output(self) -> torch.Tensor:
        """The view :meth:`A` and :meth:`adjoint` return (usable as scratch in between)."""
        return self._out

    def adjoint_input(self) -> torch.Tensor:
        """The view to write z into before :meth:`adjoint` (saves a copy)."""
        if not self._blocked and self._margins_hold_data:  # Cᵀ z is zero outside the image
            if self._pad_views is None:
                for m in self._margins:
                    self._canvas[m] = 0
            else:
                self._pad_views.zero()
            self._margins_hold_data = False
        return self._zin

    def adjoint(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """Aᵀ z (a view, valid until the next call); z = None uses what was written into
        :meth:`adjoint_input`."""
        target = self.adjoint_input()
        if z is not None:
            target.copy_(z)
        if self._blocked:
            valid_filter(self._u, self._tile_otfs[1], self.conv.radius, self._padded,
                         out=self._full)
        else:
            self._transform(self._otf_conj)
        return self._fold()
