"""napari-pkl-dg: physics-guided diffusion deconvolution for fluorescence microscopy.

The public API: :func:`restore` (an image → the restored image, a float32 array in
photons), :func:`restore_iter` (a :class:`RestoreRun`: iterate it for each step's
:class:`StepRecord`; ``finish()`` returns the :class:`RestoreResult`: the image with its
settings, JSON-able metadata and posterior std) and :class:`RestoreSettings`, the one
settings schema (``help(pkl_dg.RestoreSettings)`` lists every field with its unit). The
core (``physics``, ``guidance``, ``diffusion``, ``restore``) imports neither napari nor Qt.
"""

from __future__ import annotations

from pkl_dg.threads import set_passive_wait_policy

set_passive_wait_policy()  # before anything imports torch (see pkl_dg.threads)

from pkl_dg._version import __version__  # noqa: E402

from pkl_dg.settings import RestoreSettings  # noqa: E402

#: names served from :mod:`pkl_dg.restoration` on first use (it imports torch)
_FROM_RESTORATION = ("RestoreResult", "RestoreRun", "StepRecord", "restore", "restore_iter")

__all__ = ["RestoreSettings", "__version__", *_FROM_RESTORATION]


def __getattr__(name: str):  # lazy: keep `import pkl_dg` light (no torch until needed)
    if name in _FROM_RESTORATION:
        from pkl_dg import restoration as _restore_mod

        return getattr(_restore_mod, name)
    raise AttributeError(f"module 'pkl_dg' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with the lazy ones, so completion and ``help`` list them."""
    return sorted(set(globals()) | set(_FROM_RESTORATION))
