import numpy as np
import pytest
import torch
from scipy import ndimage

from pkl_dg.physics import (ForwardModel, PSFConvolution, airy_psf, fwhm_of, gaussian_psf,
                            prepare_psf, resample_psf, smooth_size)
from pkl_dg.psf_source import psf_from_settings
from pkl_dg.settings import RestoreSettings


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("backend", ["fft", "kornia"])
@pytest.mark.parametrize("shape", [(32, 45), (17, 17), (2, 40, 33)])
def test_adjointness(backend, shape):
    k = _rand(7, 5, seed=1)
    op = PSFConvolution(k / k.sum(), backend=backend)
    x, z = _rand(*shape, seed=2), _rand(*shape, seed=3)
    lhs = (op.A(x) * z).sum()
    rhs = (x * op.A_adjoint(z)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12), (lhs, rhs)


def test_adjoint_matches_autograd_transpose():
    k = _rand(5, 5, seed=4)
    op = PSFConvolution(k / k.sum())
    x = _rand(20, 23, seed=5).requires_grad_(True)
    z = _rand(20, 23, seed=6)
    (op.A(x) * z).sum().backward()
    assert torch.allclose(x.grad, op.A_adjoint(z), atol=1e-12)


def test_convolution_is_linear_not_circular():
    """A matches scipy's true convolution with mirrored edges; no wrap-around."""
    k = _rand(7, 5, seed=7)
    k = k / k.sum()
    x = torch.zeros(30, 30, dtype=torch.float64)
    x[0, 15] = 1.0  # at the top edge: circular convolution would leak to the bottom
    out = PSFConvolution(k).A(x)
    ref = ndimage.convolve(x.numpy(), k.numpy(), mode="mirror")
    assert np.allclose(out.numpy(), ref, atol=1e-12)
    assert out[-3:].abs().max() < 1e-12


def test_constant_image_preserved_and_mass_conserved_inside():
    op = PSFConvolution(gaussian_psf(2.0))
    ones = torch.ones(40, 40)
    assert torch.allclose(op.A(ones), ones, atol=1e-5)


def test_fft_equals_kornia():
    psf = gaussian_psf(1.7, 2.3)
    x = _rand(3, 50, 41, seed=8).float()
    a, b = PSFConvolution(psf, "fft"), PSFConvolution(psf, "kornia")
    for fa, fb in ((a.A, b.A), (a.A_adjoint, b.A_adjoint)):
        ya, yb = fa(x), fb(x)
        assert (ya - yb).norm() / yb.norm() <= 1e-4


def test_otf_cache_hits_and_lru():
    op = PSFConvolution(gaussian_psf(1.0), cache_size=2)
    x = torch.rand(32, 32)
    op.A(x)
    assert (op.cache.hits, op.cache.misses) == (0, 1)
    op.A(x)
    op.A_adjoint(x)
    assert (op.cache.hits, op.cache.misses) == (2, 1)
    op.A(torch.rand(40, 40))
    op.A(torch.rand(50, 50))  # evicts the 32×32 OTF (size 2)
    assert len(op.cache) == 2
    misses = op.cache.misses
    op.A(x)
    assert op.cache.misses == misses + 1


def test_precompute_fills_cache():
    op = PSFConvolution(gaussian_psf(1.0))
    op.precompute([(64, 64)])
    op.A(torch.rand(64, 64))
    assert op.cache.hits == 1 and op.cache.misses == 1


def _good_fft_size(m: int) -> bool:
    for p in (2, 3, 5, 7):
        while m % p == 0:
            m //= p
    return m in (1, 11, 13)


def test_smooth_size():
    assert smooth_size(97) == 98 and smooth_size(121) == 125 and smooth_size(1) == 1
    assert smooth_size(518) == 520 and smooth_size(1040) == 1040 and smooth_size(143) == 144
    for n in range(1, 600):  # the smallest good size: none between n and it
        m = smooth_size(n)
        assert m >= n and _good_fft_size(m)
        assert not any(_good_fft_size(k) for k in range(n, m))


def test_prepare_psf_normalises_centres_and_crops_odd():
    raw = np.zeros((20, 24))
    raw[7:10, 13:16] = [[1, 2, 1], [2, 8, 2], [1, 2, 1]]
    raw -= 0.05  # negative floor
    psf = prepare_psf(raw)
    assert psf.shape[0] % 2 == 1 and psf.shape[1] % 2 == 1
    assert psf.min() >= 0 and abs(psf.sum() - 1) < 1e-6
    cy, cx = ndimage.center_of_mass(psf)
    assert abs(cy - psf.shape[0] // 2) < 0.05 and abs(cx - psf.shape[1] // 2) < 0.05


def test_prepare_psf_subpixel_centroid_and_3d():
    g = gaussian_psf(2.0, size=21).astype(np.float64)
    shifted = ndimage.shift(g, (0.4, -0.3), order=3)
    stack = np.stack([shifted * 0.2, shifted, shifted * 0.5])
    psf = prepare_psf(stack)  # in-focus plane = the brightest
    cy, cx = ndimage.center_of_mass(psf)
    c = psf.shape[0] // 2
    assert abs(cy - c) < 0.05 and abs(cx - psf.shape[1] // 2) < 0.05


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((5, 5)), "no positive"),
    (np.full((5, 5), np.nan), "NaN"),
    (np.zeros((0, 3)), "empty"),
])
def test_prepare_psf_refuses_bad(bad, msg):
    with pytest.raises(ValueError, match=msg):
        prepare_psf(bad)


def test_gaussian_psf_width_and_anisotropy():
    psf = gaussian_psf(2.0, 3.0)
    assert psf.shape == (25, 17)
    c = np.array(psf.shape) // 2
    fx, fy = fwhm_of(psf[c[0]]), fwhm_of(psf[:, c[1]])
    assert fy > fx
    assert abs(fx - 2.355 * 2.0) < 0.25  # pixel integration widens slightly


@pytest.mark.parametrize("na,wl,px", [(1.4, 520, 20), (0.8, 600, 30), (1.2, 460, 15)])
def test_airy_fwhm(na, wl, px):
    psf = airy_psf(na, wl, px)
    c = psf.shape[0] // 2
    fwhm_nm = fwhm_of(psf[c]) * px
    expected = 0.51 * wl / na
    assert abs(fwhm_nm - expected) / expected < 0.03, (fwhm_nm, expected)
    assert abs(psf.sum() - 1) < 1e-5


def test_resample_psf_keeps_physical_width():
    fine = gaussian_psf(4.0)  # σ = 4 px at 25 nm = 100 nm
    coarse = resample_psf(fine, 25.0, 50.0)  # σ should become ≈ 2 px
    c = coarse.shape[0] // 2
    assert abs(fwhm_of(coarse[c]) - 2.355 * 2.0) < 0.4
    assert abs(coarse.sum() - 1) < 1e-5


def test_psf_larger_than_image_refused():
    s = RestoreSettings(psf_sigma=10.0)
    with pytest.raises(ValueError, match=r"larger than the image \(48×48\)"):
        psf_from_settings(s, (48, 48))


def test_forward_model_validates_background():
    op = PSFConvolution(gaussian_psf(1.0))
    with pytest.raises(ValueError, match="background"):
        ForwardModel(op, background=-1.0)
    fm = ForwardModel(op, background=torch.full((16, 16), 3.0))
    assert torch.allclose(fm.mean(torch.zeros(16, 16)), torch.full((16, 16), 3.0))


@pytest.mark.parametrize("backend", ["fft", "kornia"])
def test_3d_adjointness_and_linear_convolution(backend):
    k = _rand(5, 7, 3, seed=11)
    k = k / k.sum()
    op = PSFConvolution(k, backend=backend)
    x, z = _rand(2, 9, 20, 17, seed=12), _rand(2, 9, 20, 17, seed=13)
    assert torch.allclose((op.A(x) * z).sum(), (x * op.A_adjoint(z)).sum(), rtol=1e-12)
    ref = ndimage.convolve(x[0].numpy(), k.numpy(), mode="mirror")
    assert np.allclose(op.A(x)[0].numpy(), ref, atol=1e-12)


def test_3d_fft_equals_kornia_and_2d_psf_acts_per_plane():
    k = _rand(3, 5, 5, seed=14).float()
    k = k / k.sum()
    x = _rand(6, 16, 16, seed=15).float()
    a, b = PSFConvolution(k, "fft"), PSFConvolution(k, "kornia")
    assert (a.A(x) - b.A(x)).norm() / b.A(x).norm() <= 1e-4
    assert (a.A_adjoint(x) - b.A_adjoint(x)).norm() / b.A_adjoint(x).norm() <= 1e-4
    op2 = PSFConvolution(gaussian_psf(1.0))
    stacked = op2.A(x)
    assert torch.allclose(stacked[3], op2.A(x[3]), atol=1e-6)


def test_batched_blur_equals_the_blur_of_each_image():
    """On the CPU a batch is transformed image by image (faster there); the workspace, the
    allocating operator and its autograd path all give each image's own blur."""
    g = torch.Generator().manual_seed(7)
    op = PSFConvolution(gaussian_psf(1.5))
    x = torch.rand(3, 1, 40, 52, generator=g)
    single = torch.stack([op.A(x[i]) for i in range(3)])
    assert torch.allclose(op.A(x), single, atol=1e-6)
    ws = op.workspace(tuple(x.shape))
    assert torch.allclose(ws.A(x, 2.5), single + 2.5, atol=1e-5)
    z = torch.rand(3, 1, 40, 52, generator=g)
    adj = torch.stack([op.A_adjoint(z[i]) for i in range(3)])
    assert torch.allclose(ws.adjoint(z), adj, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    blurred = op.A(xg)
    assert torch.allclose(blurred.detach(), single, atol=1e-6)
    (blurred * z).sum().backward()  # the gradient of ⟨A x, z⟩ is Aᵀ z
    assert torch.allclose(xg.grad, adj, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_large_images_are_blurred_in_tiles_exactly(threads):
    """From BLOCK_FROM px A and Aᵀ run in overlap-save tiles (on one or more threads): the
    same operator as one FFT to rounding, still adjoint, through the workspace too."""
    from pkl_dg.physics import filtering as blocked

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_tiles(blocked)
        side = blocked.BLOCK_FROM
        assert not blocked.use_blocks(2, (8, 8), (side - 1, side + 100), torch.empty(0))
        assert blocked.use_blocks(2, (8, 8), (side, side), torch.empty(0))
        assert not blocked.use_blocks(2, (blocked.BLOCK_FFT // 4,) * 2, (side, side),
                                      torch.empty(0))
    finally:
        torch.set_num_threads(before)


def _check_tiles(blocked):
    g = torch.Generator().manual_seed(11)
    op = PSFConvolution(gaussian_psf(2.0))
    shape = (blocked.BLOCK_FROM + 37, blocked.BLOCK_FROM + 5)  # partial last tiles
    x = torch.rand(2, *shape, generator=g)
    z = torch.rand(2, *shape, generator=g)
    assert blocked.use_blocks(2, op.radius, shape, x)
    one_fft = blocked.BLOCK_FROM
    try:
        blocked.BLOCK_FROM = 10 ** 9  # the reference: one FFT per image
        ax_ref, atz_ref = op.A(x), op.A_adjoint(z)
    finally:
        blocked.BLOCK_FROM = one_fft
    ax, atz = op.A(x), op.A_adjoint(z)
    assert torch.allclose(ax, ax_ref, atol=2e-6) and torch.allclose(atz, atz_ref, atol=2e-6)
    assert float((ax * z).sum()) == pytest.approx(float((x * atz).sum()), rel=1e-5)
    ws = op.workspace(tuple(x.shape))
    assert torch.allclose(ws.A(x, 3.0), ax_ref + 3.0, atol=5e-6)
    ws.adjoint_input().copy_(z)
    assert torch.allclose(ws.adjoint(), atz_ref, atol=2e-6)
