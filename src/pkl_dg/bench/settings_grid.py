"""``pkl-dg bench quality --section settings``: what PKL's cost buys on the real-data dev set.

Default PKL runs ``steps`` diffusion steps for ``samples`` posterior samples (the network
is called steps × samples times per plane; its data step adds sub-iterations that follow
the automatic RL count). This bench restores a subset of the dev set of
:mod:`pkl_dg.bench.realdata` (both BioSR PSFs, the bars and C. elegans as camera counts,
four W2S pairs: 011_0, 013_1 and the two brightest, 012_2 and 014_2, where 8 steps lost
most) at a grid of (steps, samples), everything else at its default, and reports
the mean PSNR and time per setting, so that the default can be checked against the
fastest setting within 0.1 dB of the best (issue 18). The result is stored beside the
real-data section, as the ``settings_grid`` part of its JSON.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

#: (steps, samples) tried
GRID = ((25, 4), (15, 4), (13, 4), (12, 4), (11, 4), (12, 3), (10, 4), (10, 3), (8, 4), (6, 4),
        (8, 2), (15, 1))
#: dev inputs used (name prefixes, see :func:`pkl_dg.bench.realdata.dev_inputs`)
SUBSET = ("BioSR F-actin, σ 2", "BioSR F-actin, σ fitted", "bars, uint16 ADU",
          "celegans, uint16 ADU", "W2S 011_0", "W2S 013_1", "W2S 012_2", "W2S 014_2")
#: a setting "scores the same" within this many dB of the best mean
WITHIN_DB = 0.1


def run_settings_grid(root: Path, grid=GRID, smoke: bool = False, denoiser=None,
                      log=print) -> dict:
    """PSNR (CARE protocol) and wall time of default PKL at each (steps, samples).

    Returns
    -------
    dict
        ``grid`` (the settings), ``items`` (input names), ``rows``: per setting its
        ``psnr`` and ``time_s`` per input and their means.
    """
    from pkl_dg.bench.realdata import dev_inputs
    from pkl_dg.metrics import care_scores
    from pkl_dg.restoration import restore_iter

    items = [i for i in dev_inputs(root, smoke) if i["name"].startswith(SUBSET)]
    if smoke:
        items, grid = items[:1], tuple((2, n) for _, n in grid[:2])
    rows = []
    for steps, samples in grid:
        psnr, secs = {}, {}
        for item in items:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # each input's warnings: the real section
                res = restore_iter(item["image"], psf=item["psf"], method="pkl", steps=steps,
                                   samples=samples, denoiser=denoiser,
                                   threads=torch.get_num_threads()).finish()
            secs[item["name"]] = time.perf_counter() - t0
            psnr[item["name"]] = care_scores(res.image, item["gt"])["psnr"]
        row = {"steps": steps, "samples": samples, "psnr": psnr, "time_s": secs,
               "mean_psnr": float(np.mean(list(psnr.values()))),
               "mean_time_s": float(np.mean(list(secs.values())))}
        rows.append(row)
        log(f"steps {steps:2d}, samples {samples}: mean {row['mean_psnr']:.2f} dB, "
            f"{row['mean_time_s']:.1f} s per image")
    return {"grid": [list(g) for g in grid], "items": [i["name"] for i in items],
            "rows": rows}


def settings_grid_section(part: dict) -> list[str]:
    """Markdown lines: one row per setting, the fastest within 0.1 dB of the best marked."""
    rows = part["rows"]
    best = max(r["mean_psnr"] for r in rows)
    ok = [r for r in rows if r["mean_psnr"] >= best - WITHIN_DB]
    fastest = min(ok, key=lambda r: r["mean_time_s"])
    L = ["### What PKL's cost buys (steps × samples)", "",
         f"Default PKL at each (diffusion steps, posterior samples), everything else at its "
         f"default, on {len(part['items'])} dev inputs ({', '.join(part['items'])}). "
         f"Network calls per plane = steps × samples. **Fastest within {WITHIN_DB} dB of "
         f"the best mean: {fastest['steps']} steps × {fastest['samples']} samples.**", "",
         "| steps | samples | network calls | mean PSNR dB | Δ to best | mean s per image | "
         + " | ".join(part["items"]) + " |",
         "|---|---|---|---|---|---|" + "---|" * len(part["items"])]
    for r in rows:
        L.append(f"| {r['steps']} | {r['samples']} | {r['steps'] * r['samples']} | "
                 f"{r['mean_psnr']:.2f} | {r['mean_psnr'] - best:+.2f} | "
                 f"{r['mean_time_s']:.1f} | "
                 + " | ".join(f"{r['psnr'][n]:.2f}" for n in part["items"]) + " |")
    return L + [""]
