"""pkl-dg batch estimates the photon calibration of each channel on its own, as restore does
(pkl_dg.inputs.block_calibrations): two detectors with their own gains and offsets in one
file."""

import numpy as np
import pytest
import tifffile

from pkl_dg.batch import run_batch
from pkl_dg.io import read_metadata
from pkl_dg.restoration import restore_iter
from pkl_dg.settings import RestoreSettings

PSF_SIGMA = 2.0


def two_detectors(rng: np.random.Generator, n: int = 96) -> np.ndarray:
    """(C=2, n, n) uint16: channel 0 from a detector of 1 ADU/e⁻ and offset 100, channel 1
    from one of 4 ADU/e⁻ and offset 90; Poisson photons of a smooth scene of 2–62."""
    from scipy.ndimage import gaussian_filter

    from pkl_dg.napari.sample_data import make_sample

    truth = make_sample()[1][:n, :n].astype(np.float64)
    lam = gaussian_filter(truth / truth.max() * 60, PSF_SIGMA) + 2
    return np.stack([rng.poisson(lam) * 1.0 + 100,
                     rng.poisson(lam * 0.5) * 4.0 + 90]).astype(np.uint16)


def _write_cyx(path, cyx):
    tifffile.imwrite(path, cyx, ome=True, metadata={"axes": "CYX"})
    return path


def test_batch_estimates_each_channel_on_its_own_as_restore_does(tmp_path):
    """One estimate for the whole file (on its middle plane, channel 1) put every pixel of
    channel 0 below channel 1's offset of 90…: batch restored channel 0 as an empty image
    while restore gives each channel its own estimate."""
    cyx = two_detectors(np.random.default_rng(0))
    src = _write_cyx(tmp_path / "two.ome.tif", cyx)
    s = RestoreSettings(method="rl", psf_sigma=PSF_SIGMA, threads=1)
    jobs = run_batch([src], tmp_path / "out", s, workers=1, threads=1, progress=False)
    assert jobs[0].status == "done", jobs[0].message
    out = tmp_path / "out" / "two.ome.tif"
    meta = read_metadata(out)
    cal = meta["calibration"]
    assert cal["source"] == "estimated per channel" and len(cal["channels"]) == 2
    assert cal["channels"][0]["offset"] == pytest.approx(100, abs=4)
    assert cal["channels"][1]["offset"] == pytest.approx(90, abs=6)
    assert cal["channels"][1]["gain"] == pytest.approx(0.25, rel=0.25)  # e⁻/ADU
    for b in meta["blocks"]:  # each block records its own channel's estimate
        assert b["calibration"] == cal["channels"][b["index"][0]]
    got = tifffile.imread(out)
    assert got.shape == cyx.shape
    for c in (0, 1):  # as restoring the channel alone
        alone = restore_iter(cyx[c], method="rl", psf_sigma=PSF_SIGMA, threads=1).finish()
        assert alone.metadata["calibration"] == cal["channels"][c]
        np.testing.assert_allclose(got[c], alone.image, rtol=1e-5,
                                   atol=1e-4 * alone.image.max())
    assert got[0].max() > 10  # not empty


def test_chunks_of_a_channel_share_its_estimate_and_a_channel_of_zeros_is_empty(tmp_path):
    """Chunks of a large plane take their channel's estimate (cached once per input and
    channel, not estimated per chunk); a channel with only zeros has nothing to estimate
    on: its blocks are written as zeros (not the input failed)."""
    from pkl_dg.batch.reading import _OPEN
    from pkl_dg.batch.worker import plane_statistics, restore_task

    cyx = two_detectors(np.random.default_rng(1), 64)
    src = str(_write_cyx(tmp_path / "two.ome.tif", cyx))
    s = RestoreSettings(method="rl", rl_iterations=5, psf_sigma=PSF_SIGMA, threads=1).to_dict()
    stats = plane_statistics(src, (1,), s, threads=1)
    _, meta = restore_task(src, (1,), s, (0, 40, 0, 40), stats, threads=1)
    assert meta["calibration"]["offset"] == pytest.approx(90, abs=6)
    assert set(k for k in _OPEN["calibrations"] if k[0] == src) == {(src, 1)}
    _, meta0 = restore_task(src, (0,), s, None, None, threads=1)
    assert meta0["calibration"]["offset"] == pytest.approx(100, abs=4)

    zero = cyx.copy()
    zero[1] = 0
    src = str(_write_cyx(tmp_path / "dark.ome.tif", zero))
    stats = plane_statistics(src, (1,), s, threads=1)
    assert stats["empty"]
    image, meta = restore_task(src, (1,), s, None, None, threads=1)
    assert not image.any() and meta["empty"] and "calibration" not in meta
    image, meta = restore_task(src, (0,), s, None, None, threads=1)
    assert image.max() > 10 and meta["calibration"]["offset"] == pytest.approx(100, abs=4)
