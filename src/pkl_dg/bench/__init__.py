"""Benchmarks: restoration quality against Richardson–Lucy and a speed breakdown.

``pkl-dg bench speed`` and ``pkl-dg bench quality`` write JSON; ``pkl-dg bench report``
turns that JSON into BENCHMARKS.md and a PSNR-vs-photons plot. Every mode has a smoke
variant (tiny sizes, few steps, a tiny random network) that the test suite runs. The
prior's validation (``python -m pkl_dg.bench.validate``) and every benchmark share one
measurement simulator (:mod:`~pkl_dg.bench.simulate`), one scoring protocol with the
Richardson–Lucy oracle (:mod:`~pkl_dg.bench.protocol`) and one network timer
(:mod:`~pkl_dg.bench.network`).
"""
