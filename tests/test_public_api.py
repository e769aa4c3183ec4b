"""The package's public names: ``import pkl_dg`` stays light, and the lazy exports (the
restoration API) are the restoration module's own objects, documented and listed."""

from __future__ import annotations

import subprocess
import sys


def test_lazy_exports_are_the_restoration_api():
    import pkl_dg
    from pkl_dg import restoration

    for name in ("restore", "restore_iter", "RestoreRun", "RestoreResult", "StepRecord"):
        assert name in pkl_dg.__all__ and name in dir(pkl_dg)
        assert getattr(pkl_dg, name) is getattr(restoration, name)
        assert getattr(pkl_dg, name).__doc__
    assert "iterate it" in pkl_dg.RestoreRun.__doc__


def test_restore_iter_returns_the_exported_run():
    import numpy as np

    from pkl_dg import RestoreRun, restore_iter

    run = restore_iter(np.full((32, 32), 10.0, np.float32), method="rl", rl_iterations=2,
                       calibration="manual")
    assert isinstance(run, RestoreRun)
    assert run.finish().image.shape == (32, 32)


def test_import_does_not_load_torch():
    code = "import sys, pkl_dg; assert 'torch' not in sys.modules; pkl_dg.RestoreRun"
    subprocess.run([sys.executable, "-c", code], check=True)
