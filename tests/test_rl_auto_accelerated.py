"""Richardson–Lucy's automatic stop with Biggs–Andrews acceleration: an accelerated
iteration fits about as far as three plain ones, so the stall threshold is three times
plain RL's (``pkl_dg.guidance.stopping.ACCELERATED_STALL``); with plain RL's threshold the
accelerated run went on fitting the model's error (1–2.5 dB below plain RL on a PSF that
does not match)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pkl_dg.metrics import care_scores
from pkl_dg.physics import PSFConvolution, gaussian_psf
from pkl_dg.restoration import restore_iter
from pkl_dg.training.phantoms import render_phantom


def _mismatched(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A phantom blurred by a Gaussian of σ 1.5 px (300 photons peak, 5 of background):
    restored with σ 2.2 px, RL's fit stalls above the noise."""
    obj = render_phantom(np.random.default_rng(seed), 96)
    obj = 300.0 * obj / obj.max()
    blur = PSFConvolution(gaussian_psf(1.5)).A(torch.from_numpy(obj)).numpy()
    y = np.random.default_rng(seed + 1).poisson(blur + 5.0).astype(np.float32)
    return y, obj


def _auto_rl(y: np.ndarray, acceleration: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the PSF does not fit: the misfit warning
        return restore_iter(y, psf_sigma=2.2, method="rl", rl_acceleration=acceleration,
                            calibration="manual", gain=1.0, offset=0.0, background=5.0,
                            threads=1).finish()


def test_accelerated_rl_stops_where_plain_rl_does_in_fewer_iterations():
    y, obj = _mismatched()
    plain, fast = _auto_rl(y, "none"), _auto_rl(y, "biggs-andrews")
    assert plain.metadata["rl_auto_stop"] == fast.metadata["rl_auto_stop"] == "stalled"
    assert fast.metadata["rl_auto_iterations"] < 0.5 * plain.metadata["rl_auto_iterations"]
    p_plain = care_scores(plain.image, obj)["psnr"]
    p_fast = care_scores(fast.image, obj)["psnr"]
    assert p_fast >= p_plain - 0.1, (p_plain, p_fast)


@pytest.mark.parametrize("accelerated, factor", [(False, 1.0), (True, 3.0)])
def test_the_stall_threshold_follows_the_iterations(accelerated, factor):
    from pkl_dg.guidance.stopping import STALL, AutoStop
    from pkl_dg.physics import ForwardModel

    y = torch.ones(16, 16)
    rule = AutoStop(y, ForwardModel(PSFConvolution(gaussian_psf(1.0)), 0.0),
                    accelerated=accelerated)
    assert rule.stall == pytest.approx(factor * STALL)


def test_a_plane_in_chunks_gets_the_accelerated_count(tmp_path):
    """``pkl-dg batch`` counts a large plane's RL iterations once for its chunks: with
    acceleration that must be the accelerated run's count (plain RL's count, run
    accelerated, went on three times as far)."""
    import tifffile

    from pkl_dg.batch.worker import plane_statistics
    from pkl_dg.settings import RestoreSettings

    y, _ = _mismatched()
    path = tmp_path / "plane.tif"
    tifffile.imwrite(path, y)
    s = RestoreSettings(method="rl", rl_acceleration="biggs-andrews", psf_sigma=2.2,
                        calibration="manual", gain=1.0, offset=0.0, background=5.0,
                        threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = plane_statistics(str(path), (), s.to_dict(), threads=1)
    assert stats["rl_iterations"] == _auto_rl(y, "biggs-andrews").metadata["rl_auto_iterations"]


def test_accelerated_iterates_judged_apart_on_a_helper_stop_where_judged_inline(monkeypatch):
    """With two threads an accelerated iterate's prediction (not the run's, which is at the
    extrapolated point) is computed on the helper in the rule's own buffers; the stop, its
    count and its deviance ratio are those of the one-thread run that computes it inline."""
    from pkl_dg.guidance.data_budget import budget_pass
    from pkl_dg.guidance.stopping import AutoStop
    from pkl_dg.physics import ForwardModel
    from pkl_dg.threads import torch_threads

    apart = []
    real = AutoStop._judge_apart
    monkeypatch.setattr(AutoStop, "_judge_apart",
                        lambda self, it: apart.append(it.k) or real(self, it))
    y, _ = _mismatched()
    fm = ForwardModel(PSFConvolution(gaussian_psf(2.2)), 5.0)
    with torch.inference_mode():
        with torch_threads(1):
            one, _ = budget_pass(torch.from_numpy(y), fm)
        assert apart == []
        with torch_threads(2):
            two, _ = budget_pass(torch.from_numpy(y), fm)
    # from the 10th on: each next iteration starts from an extrapolated point
    assert one.k > 12 and sorted(apart) == list(range(10, two.k + 1))
    assert (two.k, two.reason) == (one.k, one.reason)
    assert two.ratio == pytest.approx(one.ratio, rel=1e-5)
