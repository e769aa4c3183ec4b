"""The network's 2×2 grid seen at four phases: exact inverse, the pattern cancels in the mean,
and the sampler gives every step all phases over its samples."""

import numpy as np
import pytest
import torch

from pkl_dg.diffusion.grid_phase import PHASES, phase_shifted
from conftest import ConstantDenoiser


class GridLocked(torch.nn.Module):
    """A denoiser whose output is its input plus a pattern locked to the pixel grid of what
    it sees (odd columns +a, odd rows +b), like a pixel-unshuffle network's."""

    def __init__(self, inner=None, a=0.3, b=0.2):
        super().__init__()
        self.inner, self.a, self.b = inner, a, b

    def forward(self, x, t):
        out = x.clone() if self.inner is None else self.inner(x, t)
        h, w = x.shape[-2:]
        cols = (torch.arange(w) % 2 == 1).to(x.dtype) * self.a
        rows = (torch.arange(h) % 2 == 1).to(x.dtype) * self.b
        return out + cols + rows[:, None]


@pytest.mark.parametrize("shape", [(3, 1, 16, 20), (3, 1, 15, 21), (2, 1, 16, 9)])
def test_every_phase_maps_back_to_the_same_pixels(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(shape[0], dtype=torch.long)
    identity = lambda z, tt: z.clone()  # noqa: E731
    for phase in range(PHASES):
        out = phase_shifted(identity, x, t, [phase] * shape[0])
        assert out.shape == x.shape and torch.equal(out, x)
    mixed = phase_shifted(identity, x, t, [k % PHASES for k in range(shape[0])])
    assert torch.equal(mixed, x)


@pytest.mark.parametrize("hw", [(16, 20), (15, 21)])
def test_the_grid_pattern_cancels_over_the_four_phases(hw):
    x = torch.zeros(1, 1, *hw)
    t = torch.zeros(1, dtype=torch.long)
    net = GridLocked()
    plain = phase_shifted(net, x, t, [0])
    assert float(plain[..., 1::2].mean() - plain[..., ::2].mean()) == pytest.approx(0.3)
    # each phase moves the pattern; their mean is flat (odd lengths: all but the border
    # pixel the reflected one stands in for)
    mean = sum(phase_shifted(net, x, t, [p]) for p in range(PHASES)) / PHASES
    inner = mean[..., 1:-1, 1:-1]
    assert float(inner.max() - inner.min()) < 1e-6
    assert float(inner.mean()) == pytest.approx((0.3 + 0.2) / 2)
    with pytest.raises(ValueError, match="one phase"):
        phase_shifted(net, x, t, [4])


def test_sampler_shows_every_step_all_phases_and_the_result_has_no_grid_pattern(monkeypatch):
    from pkl_dg import restoration
    from pkl_dg.diffusion import sampler

    seen = []
    real = sampler.phase_shifted
    monkeypatch.setattr(sampler, "phase_shifted",
                        lambda d, x, t, phases: (seen.append(list(phases)),
                                                 real(d, x, t, phases))[1])
    rng = np.random.default_rng(0)
    y = rng.poisson(np.full((48, 48), 30.0)).astype(np.float32)
    kw = dict(psf_sigma=1.5, device="cpu", calibration="manual", gain=1.0, offset=0.0,
              read_noise=0.0, background=2.0, steps=6, samples=4, seed=0)
    out = restoration.restore(y, denoiser=GridLocked(ConstantDenoiser(-0.5), 0.4, 0.4), **kw)
    steps, final = seen[:6], seen[6:]
    assert all(sorted(p) == [0, 1, 2, 3] for p in steps)  # 4 samples: each phase once
    assert [p[0] for p in steps[:4]] == [0, 1, 2, 3]  # a sample's phase cycles over steps
    # the final pass: all phases at one timestep (a batch), phase 0 at its neighbour
    assert final[0] == [0, 1, 2, 3] and final[1:] in ([], [[0]])
    # the pattern the denoiser adds everywhere is gone from the result (a mean over samples)
    inner = out[4:-4, 4:-4]
    odd_even = float(inner[:, 1::2].mean() - inner[:, ::2].mean())
    monkeypatch.setattr(sampler, "phase_shifted", lambda d, x, t, phases: d(x, t))
    plain = restoration.restore(y, denoiser=GridLocked(ConstantDenoiser(-0.5), 0.4, 0.4), **kw)
    plain_odd_even = float(plain[4:-4, 4:-4][:, 1::2].mean() - plain[4:-4, 4:-4][:, ::2].mean())
    assert abs(plain_odd_even) > 5 * abs(odd_even) and abs(plain_odd_even) > 0.1
