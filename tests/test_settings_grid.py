"""The steps × samples table picks the fastest setting within 0.1 dB of the best."""

from pkl_dg.bench.settings_grid import settings_grid_section


def _row(steps, samples, psnr, secs):
    return {"steps": steps, "samples": samples, "psnr": {"a": psnr}, "time_s": {"a": secs},
            "mean_psnr": psnr, "mean_time_s": secs}


def test_fastest_within_a_tenth_of_a_db_is_named():
    part = {"items": ["a"], "rows": [_row(15, 4, 27.50, 30.0), _row(10, 4, 27.45, 20.0),
                                     _row(15, 1, 27.00, 8.0), _row(25, 4, 27.52, 50.0)]}
    text = "\n".join(settings_grid_section(part))
    assert "Fastest within 0.1 dB of the best mean: 10 steps × 4 samples." in text
    assert "| 15 | 1 | 15 | 27.00 | -0.52 | 8.0 | 27.00 |" in text
