"""The PSF blur in two bands on two threads (pkl_dg.physics.bands): the whole-grid operator's
values, its adjoint, where Richardson–Lucy uses it, and no deadlock on a helper thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
from pkl_dg.physics.bands import BandedWorkspace, use_bands
from pkl_dg.richardson_lucy import rl_iterates
from pkl_dg.guidance.stopping import AutoStop
from pkl_dg.threads import helper_pool


def _skewed_psf(ny: int, nx: int) -> np.ndarray:
    """An asymmetric PSF (a flipped or transposed kernel would give other values)."""
    rng = np.random.default_rng(3)
    k = rng.random((ny, nx)) ** 3
    k[0, : nx // 2] += 2.0
    return k / k.sum()


@pytest.mark.parametrize("shape, psf", [((64, 100), (7, 11)), ((301, 257), (17, 17)),
                                        ((41, 96), (9, 3))])
def test_bands_give_the_whole_grid_blur_and_its_adjoint(shape, psf):
    conv = PSFConvolution(_skewed_psf(*psf))
    g = torch.Generator().manual_seed(0)
    x, z = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    whole, bands = conv.workspace(shape), BandedWorkspace(conv, shape)
    ax = whole.A(x, 3.5).clone()
    assert torch.allclose(bands.A(x, 3.5), ax, rtol=1e-5, atol=1e-5 * float(ax.abs().max()))
    atz = whole.adjoint(z).clone()
    assert torch.allclose(bands.adjoint(z), atz, rtol=1e-5, atol=1e-5 * float(atz.abs().max()))
    # written in place, as the RL loop does, and adjoint to A (offset 0)
    bands.adjoint_input().copy_(z)
    lhs = float((bands.A(x).double() * z.double()).sum())
    rhs = float((x.double() * bands.adjoint().double()).sum())
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_bands_run_in_inference_mode_and_inline_on_a_helper_thread(two_threads):
    conv = PSFConvolution(gaussian_psf(1.5))
    x = torch.rand(80, 90)
    expect = conv.workspace((80, 90)).A(x).clone()
    with torch.inference_mode():  # buffers made in inference mode; the helper enters it too
        bands = BandedWorkspace(conv, (80, 90))
        assert torch.allclose(bands.A(x), expect, atol=1e-5)
    # from a helper thread the bands run there, one after the other (a helper waiting on
    # the only other helper would wait for ever)
    bands = BandedWorkspace(conv, (80, 90))
    out = helper_pool(1).submit(lambda: bands.A(x).clone()).result(timeout=30)
    assert torch.allclose(out, expect, atol=1e-5)


def test_bands_refuse_an_image_too_short_for_them():
    with pytest.raises(ValueError, match="too short"):
        BandedWorkspace(PSFConvolution(gaussian_psf(2.0)), (20, 200))


def test_which_images_go_in_bands():
    conv = PSFConvolution(gaussian_psf(2.0))
    assert use_bands(torch.zeros(512, 512), conv, 2)
    assert not use_bands(torch.zeros(512, 512), conv, 1)  # one thread
    assert not use_bands(torch.zeros(256, 256), conv, 2)  # the hand-off costs more
    assert not use_bands(torch.zeros(2048, 2048), conv, 2)  # torch's threads, or tiles
    assert not use_bands(torch.zeros(2, 512, 512), conv, 2)  # a stack of planes
    conv3 = PSFConvolution(np.ones((3, 5, 5)) / 75.0)
    assert not use_bands(torch.zeros(512, 512), conv3, 2)


def test_richardson_lucy_in_bands_gives_the_iterates_of_one_thread(two_threads):
    """At 512² with two threads and no deferred stop the RL loop convolves in bands; its
    iterates are those of the one-thread whole-grid loop up to float rounding. A small
    image's automatic stop keeps the whole grid (its judgement takes the second core)."""
    conv = PSFConvolution(_skewed_psf(15, 15))
    fm = ForwardModel(conv, background=4.0)
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(512, 512, generator=g) ** 8 * 200
    y = torch.poisson(conv.A(truth).contiguous() + 4.0, generator=g)
    with torch.inference_mode():
        runs = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for it in rl_iterates(y, fm, 12):
                pass
            runs[threads] = (it.x.clone(), type(it._loop.ws).__name__)
        assert runs[1][1] == "ConvWorkspace" and runs[2][1] == "BandedWorkspace"
        assert torch.allclose(runs[2][0], runs[1][0], rtol=1e-4,
                              atol=1e-4 * float(runs[1][0].max()))
        for it in rl_iterates(y, fm, 50, stop=AutoStop(y, fm)):
            assert type(it._loop.ws).__name__ == "ConvWorkspace"


def test_the_widgets_cancel_check_sees_every_banded_convolution(two_threads):
    """RL in bands goes through the operator's ``workspace``, so the widget's wrapper
    (CancellableOperator) still checks its flag before each convolution: a run cancelled
    inside the iterations stops there (before, the bands bypassed the wrapper)."""
    from pkl_dg.napari.worker import CancelFlag, CancellableOperator, RunCancelled

    conv = PSFConvolution(gaussian_psf(2.0))
    flag = CancelFlag()
    fm = ForwardModel(CancellableOperator(conv, flag), background=2.0)
    y = torch.full((512, 512), 20.0)
    done = 0
    with pytest.raises(RunCancelled):
        for it in rl_iterates(y, fm, 50):
            assert type(it._loop.ws._inner).__name__ == "BandedWorkspace"
            done = it.k
            if it.k == 3:
                flag.set()
    assert done == 3
