"""Shared fixtures: small synthetic scenes and the optional real-data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real test data not present at {REALDATA} (the shared/realdata folder "
                    "beside the checkout); these checks run where it exists")
    return REALDATA


@pytest.fixture
def napari_config_dir(tmp_path, monkeypatch):
    """The widget's settings file in a fresh folder (GUI tests never see the user's)."""
    monkeypatch.setenv("PKL_DG_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def notes():
    """napari notifications dispatched during the test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(event):
        seen.append((str(event.severity), str(event.message)))
    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def phantom(n: int = 48, seed: int = 0) -> np.ndarray:
    """A small non-negative object: a few bright dots and lines on a dark field."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, n), dtype=np.float32)
    for _ in range(6):
        y, x = rng.integers(4, n - 4, size=2)
        img[y, x] += rng.uniform(5, 10)
    img[n // 3, 5:-5] += 3.0
    img[5:-5, n // 2] += 2.0
    return img


@pytest.fixture
def scene():
    """(object, noisy measurement, psf, background) at ≈ 50 photons peak."""
    from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf

    x = phantom() * 10
    psf = gaussian_psf(1.5)
    fm = ForwardModel(PSFConvolution(psf), background=2.0)
    with torch.no_grad():
        mu = fm.mean(torch.from_numpy(x))
    y = torch.poisson(mu, generator=torch.Generator().manual_seed(1)).numpy()
    return x, y.astype(np.float32), psf, 2.0


class ConstantDenoiser(torch.nn.Module):
    """Analytic denoiser whose x̂0 is always ``value`` (model domain): ε = (x_t − √ᾱ·v)/√(1−ᾱ)."""

    def __init__(self, value: float = -0.8) -> None:
        super().__init__()
        from pkl_dg.diffusion.schedule import cosine_alphas_cumprod

        self.value = value
        self.register_buffer("ac", cosine_alphas_cumprod().float())
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        a = self.ac[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.value) / (1 - a).sqrt()


@pytest.fixture
def constant_denoiser():
    return ConstantDenoiser()


@pytest.fixture
def two_threads():
    """Two torch threads for the test (the count before is restored)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
