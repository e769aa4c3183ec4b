"""``pkl-dg demo --screenshot``: a real napari window, a short run, a PNG of the whole window."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.skipif(not os.environ.get("DISPLAY"),
                                                  reason="needs a display (run under xvfb-run)")]


def run_demo(tmp_path, *args):
    """Run ``pkl-dg demo --screenshot`` with ``args``; the process and the screenshot."""
    out = tmp_path / "shot.png"
    env = {**os.environ, "PKL_DG_CONFIG_DIR": str(tmp_path / "config")}
    proc = subprocess.run([sys.executable, "-m", "pkl_dg.cli", "demo", "--screenshot", str(out),
                           "--threads", "1", *args],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert not (tmp_path / "config").exists()  # the demo never touches saved settings
    from skimage.io import imread

    img = imread(out)
    assert np.isfinite(img).all()
    assert img[..., :3].std() > 10  # not a blank frame
    return proc, img


def test_demo_screenshot(tmp_path):
    proc, img = run_demo(tmp_path, "--method", "rl", "--steps", "3", "--size", "1200x800")
    # it says what it does while it runs (a default run takes minutes on a laptop)
    lines = proc.stdout.splitlines()
    assert lines[0] == "pkl-dg demo: napari is up with the sample data and the widget"
    assert lines[1].startswith("pkl-dg demo: restoring 'cells' (256 × 256) with 3 "
                               "Richardson–Lucy iterations on 1 CPU thread(s)")
    assert any(line.startswith("pkl-dg demo: done in") for line in lines), proc.stdout
    # the whole window (menu bar, layer list, widget), not just the canvas
    assert img.shape[0] >= 700 and img.shape[1] >= 1100


def test_demo_compare_screenshot(tmp_path):
    proc, img = run_demo(tmp_path, "--compare", "--steps", "2", "--size", "1400x900")
    assert img.shape[0] >= 800 and img.shape[1] >= 1300
    # the widget's metrics table, printed as markdown: header, rule, one row per method
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("|")]
    assert rows[0] == ["method", "PSNR (dB)", "SSIM", "NRMSE", "FRC (px)", "FRC (nm)",
                       "time (s)"]
    assert [r[0] for r in rows[2:]] == ["input", "Richardson–Lucy", "L2", "Anscombe + L2",
                                        "PKL"]
    for row in rows[2:]:
        psnr, ssim = float(row[1]), float(row[2])
        assert 10 < psnr < 60 and 0 < ssim <= 1


def test_demo_compare_rejects_method(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pkl_dg.cli", "demo", "--compare",
                           "--method", "pkl"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--compare runs rl, l2, anscombe, pkl" in proc.stderr
