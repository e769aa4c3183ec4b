"""``pkl-dg demo --screenshot``: a real napari window, a short run, a PNG of the whole window."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)")
def test_demo_screenshot(tmp_path):
    out = tmp_path / "shot.png"
    env = {**os.environ, "PKL_DG_CONFIG_DIR": str(tmp_path / "config")}
    proc = subprocess.run([sys.executable, "-m", "pkl_dg.cli", "demo", "--screenshot", str(out),
                           "--method", "rl", "--steps", "3", "--size", "1200x800"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    from skimage.io import imread

    img = imread(out)
    # the whole window (menu bar, layer list, widget), not just the canvas
    assert img.shape[0] >= 700 and img.shape[1] >= 1100
    assert img[..., :3].std() > 10  # not a blank frame
    assert not (tmp_path / "config").exists()  # the demo never touches saved settings
    assert np.isfinite(img).all()
