"""napari-pkl-dg: physics-guided diffusion deconvolution for fluorescence microscopy.

The core (``physics``, ``guidance``, ``diffusion``, ``restore``) imports neither napari nor Qt.
"""

from __future__ import annotations

from pkl_dg.threads import set_passive_wait_policy

set_passive_wait_policy()  # before anything imports torch (see pkl_dg.threads)

from pkl_dg._version import __version__  # noqa: E402

from pkl_dg.settings import RestoreSettings  # noqa: E402

__all__ = ["RestoreResult", "RestoreSettings", "StepRecord", "__version__", "restore", "restore_iter"]


def __getattr__(name: str):  # lazy: keep `import pkl_dg` light (no torch until needed)
    if name in ("restore", "restore_iter", "RestoreResult", "StepRecord"):
        from pkl_dg import restoration as _restore_mod

        return getattr(_restore_mod, name)
    raise AttributeError(f"module 'pkl_dg' has no attribute {name!r}")
