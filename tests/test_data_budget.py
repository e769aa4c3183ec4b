"""PKL's data budget (``pkl_dg.guidance.data_budget``): three times Richardson–Lucy's automatic
count where the forward model explains the data, RL's count where it does not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pkl_dg.guidance.data_budget import FIT_BUDGET, PLAIN_FIRST, budget_pass, data_budget
from pkl_dg.guidance.stopping import ACCELERATED_STALL, MAX_ITERATIONS, AutoStop
from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
from pkl_dg.restoration import restore_iter
from pkl_dg.richardson_lucy import rl_iterates
from pkl_dg.training.phantoms import render_phantom


def _measured(sigma: float = 2.0, peak: float = 200.0, seed: int = 0,
              beads: float = 0.0, clip: float = np.inf) -> np.ndarray:
    """An 80² phantom peaking at ``peak`` photons blurred by a Gaussian of ``sigma`` px, with
    two point beads of ``beads`` photons, Poisson noise over 5 photons of background, clipped
    at ``clip``."""
    obj = render_phantom(np.random.default_rng(seed), 80)
    obj = peak * obj / obj.max()
    obj[20, 20] = obj[60, 50] = beads
    blur = PSFConvolution(gaussian_psf(sigma)).A(torch.from_numpy(obj)).numpy()
    y = np.random.default_rng(seed + 1).poisson(np.clip(blur, 0, None) + 5.0)
    return np.minimum(y, clip).astype(np.float32)


def _budget(y: np.ndarray, sigma: float, mask: np.ndarray | None = None):
    fm = ForwardModel(PSFConvolution(gaussian_psf(sigma)), 5.0, 0.0,
                      None if mask is None else torch.from_numpy(mask))
    with torch.inference_mode():
        rule, it = budget_pass(torch.from_numpy(y), fm)
        return rule, data_budget(rule, it, fm)


def test_the_budget_is_three_times_rls_count_where_the_fit_reaches_the_noise():
    rule, (budget, why) = _budget(_measured(), 2.0)
    assert rule.reason == "noise level"
    assert budget == FIT_BUDGET * rule.equivalent and why.startswith("×3")


def test_a_psf_unlike_the_real_one_keeps_rls_count():
    rule, (budget, why) = _budget(_measured(sigma=1.0), 2.5)  # too wide: cannot fit
    assert rule.reason == "stalled" and rule.ratio > 2 * rule.target
    assert budget == rule.equivalent and why.startswith("×1")


def test_a_stall_caused_only_by_unfit_pixels_gets_the_larger_budget():
    """Clipped beads stall RL (their reach cannot be fitted): judged away from them the fit
    is at the noise level, so the budget is ×3; with the whole field misfit it is not."""
    clipped = _measured(beads=2e6, clip=65535)
    mask = (clipped < 65535).astype(np.float32)
    assert mask.min() == 0
    rule, (budget, why) = _budget(clipped, 2.0, mask)
    assert rule.reason == "stalled"
    assert budget == FIT_BUDGET * rule.equivalent and "away from them" in why
    wrong = _measured(sigma=1.0, beads=2e6, clip=65535)
    rule, (budget, _) = _budget(wrong, 2.5, (wrong < 65535).astype(np.float32))
    assert rule.reason == "stalled" and budget == rule.equivalent


@pytest.mark.parametrize("sigma, factor", [(2.0, FIT_BUDGET), (1.0, 1)])
def test_a_restore_shares_the_budget_over_its_steps(sigma, factor):
    """The sampler's sub-iterations follow the budget, which the metadata records."""
    y = _measured(sigma=sigma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the misfit warning of the wide PSF
        meta = restore_iter(y, psf_sigma=2.5 if factor == 1 else 2.0, steps=4, samples=1,
                            calibration="manual", gain=1.0, offset=0.0, background=5.0,
                            threads=1).finish().metadata
    assert meta["data_budget"] == factor * meta["rl_auto_plain_equivalent"]
    assert meta["data_budget_reason"].startswith(f"×{factor}")
    k = min(-(-meta["data_budget"] // 4), 30)
    assert meta["sub_iterations"] == (k if k < 4 else max(-(-k // 2), 3))


def test_the_budget_pass_is_plain_rl_then_accelerated_counted_in_plain_iterations():
    """Its first PLAIN_FIRST iterates are plain RL's; then it extrapolates, and the count
    converts each accelerated iteration into ACCELERATED_STALL plain ones. A short count
    (the fit at the noise level within PLAIN_FIRST) is plain RL's automatic count."""
    y = torch.from_numpy(_measured(sigma=1.0))
    fm = ForwardModel(PSFConvolution(gaussian_psf(2.5)), 5.0)  # too wide: a long count
    with torch.inference_mode():
        rule, last = budget_pass(y, fm)
        assert rule.k > PLAIN_FIRST + 2
        assert rule.equivalent == PLAIN_FIRST + round(ACCELERATED_STALL * (rule.k - PLAIN_FIRST))
        plain = [it.x.clone() for it in rl_iterates(y, fm, PLAIN_FIRST + 2)]
        ours = list(rl_iterates(y, fm, PLAIN_FIRST + 2, accelerate=True,
                                plain_first=PLAIN_FIRST))
        for k in range(PLAIN_FIRST):
            assert torch.allclose(ours[k].x, plain[k], rtol=1e-5, atol=1e-4)
            assert ours[k].alpha == 0.0
        assert ours[PLAIN_FIRST].alpha > 0  # extrapolated from the plain changes
        assert not torch.allclose(ours[-1].x, plain[-1], rtol=1e-3, atol=1e-2)
        # at the noise level early: the plain count, and its budget ×3
        short = torch.from_numpy(_measured(peak=20.0))
        fm2 = ForwardModel(PSFConvolution(gaussian_psf(2.0)), 5.0)
        rule, _ = budget_pass(short, fm2)
        ref = AutoStop(short, fm2)
        for _ in rl_iterates(short, fm2, MAX_ITERATIONS, stop=ref):
            pass
    assert ref.k <= PLAIN_FIRST and rule.reason == ref.reason == "noise level"
    assert rule.k == rule.equivalent == ref.k
