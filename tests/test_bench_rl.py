"""The Richardson–Lucy part of ``pkl-dg bench speed`` (smoke sizes) and its report lines."""

import numpy as np

from pkl_dg.bench import speed_rl
from pkl_dg.bench.report_rl import rl_lines


def test_rl_part_smoke_runs_every_variant_and_renders():
    part = speed_rl.run_rl_part([32, 40], iterations=3, repeats=1, smoke=True,
                                log=lambda m: None)
    table = part["table"]
    assert [r["size"] for r in table["sizes"]] == [32, 40]
    for r in table["sizes"]:
        for key in ("floor_ms", "raw_ms", "restore_ms", "accelerated_ms", "restore_over_floor"):
            assert np.isfinite(r[key]) and r[key] > 0, key
        for p in table["peers"]:
            assert r[f"{p}_ms"] > 0
    assert set(table["peers"]) | set(table["skipped_peers"]) == set(speed_rl.PEER_NAMES)
    assert part["time_to_best"] == {"skipped": "smoke run"}
    # tiny sizes: more than the 3 asked iterations, so that a timed run is not a few ms
    assert all(3 < r["iterations"] <= speed_rl.MAX_TIMED_ITERATIONS for r in table["sizes"])
    text = "\n".join(rl_lines(part))
    assert "FFT floor" in text and "32²" in text and "Not run: smoke run" in text
    # every placeholder of the description is filled in (an f-prefix once went missing)
    assert "{" not in text and f"PSF {table['psf']}" in text
    assert f"({table['logical_cpus']} logical CPUs)" in text
    for p, why in table["skipped_peers"].items():
        assert why in text


def test_timed_iterations_fill_the_minimum_run_time():
    import time

    slow = speed_rl.timed_iterations(lambda: time.sleep(0.02), 5)  # 0.25 s ÷ ≥ 20 ms
    assert 5 <= slow <= 13
    assert speed_rl.timed_iterations(lambda: None, 5) == speed_rl.MAX_TIMED_ITERATIONS
    assert speed_rl.timed_iterations(lambda: None, 500) == 500  # never fewer than asked


def test_a_ratio_just_over_the_floor_bar_shows_why_it_fails():
    row = {"size": 512, "fft_shape": [540, 540], "floor_ms": 2.46, "restore_ms": 2.97,
           "restore_over_floor": 1.204, "restore_setup_s": 0.05, "restore_total_ms": 8.0,
           "raw_ms": 2.96, "accelerated_ms": 3.7}
    table = {"repeats": 3, "iterations": 10, "torch_threads": 2, "psf": "gaussian", "peers": [],
             "skipped_peers": {}, "created": "now", "load_average_start": [0.5, 0.5, 0.5],
             "load_average_end": [0.5, 0.5, 0.5], "sizes": [row, {**row, "size": 1024,
                                                                  "restore_over_floor": 1.19}]}
    text = "\n".join(rl_lines({"table": table, "time_to_best": {"skipped": "smoke run"}}))
    assert "(1.204× ✗)" in text and "(1.19×)" in text


def test_missing_peer_is_skipped_with_a_reason(monkeypatch):
    def broken():
        raise ImportError("No module named 'RedLionfishDeconv'")

    monkeypatch.setattr(speed_rl, "_redlionfish", broken)
    ok, skipped = speed_rl.load_peers(("skimage", "redlionfish"))
    assert "skimage" in ok and "redlionfish" in skipped
    assert "pip install -e .[bench]" in skipped["redlionfish"]


def test_skimage_replica_equals_the_library():
    from skimage.restoration import richardson_lucy

    from pkl_dg.physics import gaussian_psf

    rng = np.random.default_rng(0)
    y = rng.poisson(rng.random((40, 44)) * 50 + 1).astype(np.float32)
    psf = gaussian_psf(2.0)
    ours = list(speed_rl.skimage_iterates(y, psf, 4))[-1]
    assert np.allclose(ours, richardson_lucy(y, psf, num_iter=4, clip=False), rtol=1e-6)


def test_floor_iteration_runs():
    from pkl_dg.physics import PSFConvolution, gaussian_psf

    speed_rl.floor_iteration(PSFConvolution(gaussian_psf(2.0)), (64, 64))()
