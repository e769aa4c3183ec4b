"""BENCHMARKS.md: the Speed section, from the JSON of ``pkl-dg bench speed``.

The Richardson–Lucy tables of the same JSON (its ``rl`` part) are rendered by
:mod:`pkl_dg.bench.report_rl`; everything comes from the JSON.
"""

from __future__ import annotations

from pkl_dg.bench.report_rl import rl_lines


def speed_section(speed: dict, quality: dict | None = None) -> list[str]:
    """The Speed section: network, guided step, physics, RL, restore and memory per size,
    then the bf16-vs-fp32 quality and the Richardson–Lucy tables.

    Parameters
    ----------
    speed : dict
        ``pkl-dg bench speed`` results.
    quality : dict, optional
        ``pkl-dg bench quality`` results, to say whether the timed network has the
        architecture of the evaluated prior.

    Returns
    -------
    list of str
        Markdown lines.
    """
    L = ["## Speed", ""]
    net = speed["network"]
    qcfg = ((quality or {}).get("model") or {}).get("config")
    if qcfg is not None:
        keys = ("width", "channel_mult", "num_res_blocks", "attention", "attention_heads",
                "unshuffle", "groups", "in_channels", "time_embed_mult")  # what sets the cost
        same = all(qcfg.get(k) == net["config"].get(k) for k in keys)
        L += [f"The timed network's architecture is {'the same as' if same else 'DIFFERENT from'} "
              f"that of the prior evaluated in the quality section ({quality['model']['source']}).",
              ""]
    L.append(f"Network timed: {net['source']}, {net['parameters'] / 1e6:.2f} M parameters "
             f"(width {net['config'].get('width')}, channel_mult {net['config'].get('channel_mult')}). "
             f"Default network precision on this machine: {speed['default_network_precision']}. "
             f"Test image: {speed['test_image']['psf']}, {speed['test_image']['peak_photons']:.0f} "
             f"photons peak, background {speed['test_image']['background']:.0f}"
             + (f", dots on blobs of σ {speed['test_image']['blob_sigma_px']:g} px at every size"
                if "blob_sigma_px" in speed["test_image"] else "") + ". Medians of "
             f"{speed['repeats']} repeats{' (SMOKE RUN: tiny sizes, not meaningful)' if speed['smoke'] else ''}.")
    mm = speed["matmul"]
    L.append("")
    L.append(f"Measured matmul throughput ({mm['size']}² square, {speed['machine']['torch_threads']} "
             f"torch thread(s)): **{mm['fp32_gflops']:.1f} GFLOP/s fp32**, "
             f"**{mm['bf16_gflops']:.1f} GFLOP/s bf16**.")
    L += ["", "| size | network fp32 ms | network bf16 ms | guided step ms | not network | "
          "A+Aᵀ cold ms | A+Aᵀ warm ms | RL iter ours ms | RL iter skimage ms | skimage/ours | "
          "first frame s | end-to-end s | peak RSS MB (restore's own) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for row in speed["sizes"]:
        n, nt, fa, rl, rs, mem = (row["size"], row["network"], row["forward_adjoint"],
                                  row["rl_iteration"], row["restore"], row["memory"])
        share = rs["guided_step_non_network_share"]
        e2e = f"{rs['end_to_end_s']:.1f}"
        if rs["end_to_end_estimated"]:
            e2e = f"~{rs['end_to_end_s']:.0f} (est.)"
            notes.append(f"{n}²: {rs.get('end_to_end_note', 'estimated')}.")
        elif rs.get("end_to_end_repeats") == 1 and "end_to_end_note" in rs:
            e2e = f"{rs['end_to_end_s']:.1f} (1 run)"
            notes.append(f"{n}²: {rs['end_to_end_note']}.")
        L.append(f"| {n}² | {nt['ms']['fp32']:.1f} | {nt['ms']['bf16']:.1f} | "
                 f"{rs['guided_step_ms']:.0f} | {share * 100:.0f} % | {fa['cold_ms']:.2f} | "
                 f"{fa['warm_ms']:.2f} | {rl['ours_ms']:.2f} | {rl['skimage_ms']:.2f} | "
                 f"{rl['skimage_over_ours']:.2f}× | {rs['first_frame_s']:.2f} | {e2e} | "
                 f"{mem['peak_rss_mb']:.0f} (+{mem['restore_extra_mb']:.0f}) |")
    L += ["", "| size | network GFLOP per forward | achieved GFLOP/s fp32 | of fp32 matmul | "
          "achieved GFLOP/s bf16 | of bf16 matmul |", "|---|---|---|---|---|---|"]
    for row in speed["sizes"]:
        nt = row["network"]
        L.append(f"| {row['size']}² | {nt['flops'] / 1e9:.2f} | {nt['gflops']['fp32']:.1f} | "
                 f"{nt['fraction_of_matmul']['fp32'] * 100:.0f} % | {nt['gflops']['bf16']:.1f} | "
                 f"{nt['fraction_of_matmul']['bf16'] * 100:.0f} % |")
    s0 = speed["sizes"][0]["restore"]["settings"]
    rl0 = speed["sizes"][0]["rl_iteration"]
    L += ["", "How to read it:",
          f"- *guided step*: one DDIM step of `restore_iter` at the default settings "
          f"(method {s0['method']}, {s0['samples']} posterior samples as one batch, or one "
          "sample where a size runs its samples one after the other (the frames column of "
          "the notes below), "
          f"{s0['sub_iterations'] or 'automatic'} sub-iterations, step rule "
          f"{s0['step_rule']}, precision {s0['precision']}); *not network* is the share of "
          "that step outside the network forward (timed by a wrapper inside the same runs).",
          "- *A+Aᵀ*: one blur and one adjoint blur; *cold* builds a new operator each time "
          "(OTF FFT and padding indices computed), *warm* reuses one (OTF cache hits: "
          f"{speed['sizes'][0]['forward_adjoint']['warm_cache']['hits']}, misses: "
          f"{speed['sizes'][0]['forward_adjoint']['warm_cache']['misses']} at {speed['sizes'][0]['size']}²).",
          f"- *RL iter*: per-iteration time over {rl0['iterations']} iterations, ours vs "
          "`skimage.restoration.richardson_lucy` on the same image and PSF, alternating in one "
          f"process ({rl0['note']}). skimage/ours > 1 means ours is faster.",
          "- *first frame*: from calling `restore_iter` to its first streamed frame, network "
          "already loaded, new operator (cold OTF); includes the rough Richardson–Lucy "
          "estimate that sets the intensity scale (and, for the proximal step, the data "
          "budget).",
          f"- *end-to-end*: all {s0['steps']} steps (the default when measured); *peak RSS*: the "
          "memory high-water mark of a fresh process restoring that size for "
          f"{_frames_text(speed)} (imports, network and image included); in brackets what "
          "the restoration added on top of that baseline.",
          "- *achieved GFLOP/s*: FLOPs of one forward counted with "
          "`torch.utils.flop_counter.FlopCounterMode` divided by the measured forward time."]
    cast = "bf16" if "bfloat16" in speed["default_network_precision"] else "fp32"
    n_samp = s0["samples"]
    def per_step(r: dict) -> int:  # samples in one guided step: all, or one at a time
        grouped = r["restore"].get("run_frames", s0["steps"]) > s0["steps"]
        return 1 if grouped else n_samp

    ratios = ", ".join(
        f"{r['restore']['guided_step_network_ms'] / (per_step(r) * r['network']['ms'][cast]):.1f}×"
        f" at {r['size']}² ({r['restore']['steps_timed']} steps"
        + (", one sample per step" if per_step(r) == 1 and n_samp > 1 else "") + ")"
        for r in speed["sizes"])
    notes.append(f"The network time inside one guided step ({n_samp} samples or one, tiled "
                 f"above the tile size) vs as many standalone untiled {cast} forwards: {ratios}. "
                 "Above 1× is time lost inside a restoration (tile overlap, memory traffic "
                 "between network and physics, or load from other processes).")
    L += [f"- {n}" for n in notes]
    L.append("")
    L += real_lines(speed)
    L += stack_lines(speed.get("stack_3d"))
    L += precision_lines(speed.get("precision_quality"))
    L += rl_lines(speed.get("rl"))
    return L


def real_lines(speed: dict) -> list[str]:
    """Default restorations of real dev images (the ``real_images`` part of the speed
    results) beside the synthetic test image of the same size: first frame, end to end."""
    real = speed.get("real_images")
    if not real:
        return []
    L = ["### Real dev images, default settings", ""]
    if "skipped" in real:
        return L + [f"Not measured: {real['skipped']}.", ""]
    L += ["Each file restored as a user's file holds it (no calibration given, the dev set's "
          "PSF; see `pkl_dg/bench/realdata.py`), default settings, in the same process and "
          "at the same thread count as the table above; medians of the repeats.", "",
          "| image | shape | threads | first frame s | guided step ms | not network | "
          "end-to-end s |", "|---|---|---|---|---|---|---|"]
    peak = speed["test_image"]["peak_photons"]
    rows = [(f"synthetic test image ({peak:.0f} photons peak)", [r["size"]] * 2, r["restore"])
            for r in speed["sizes"]
            if r["size"] == 512 and not r["restore"]["end_to_end_estimated"]]
    rows += [(r["name"], r["shape"], r) for r in real["rows"]]
    for name, shape, r in rows:
        share = r["guided_step_non_network_share"]
        L.append(f"| {name} | {'×'.join(map(str, shape))} | {r.get('threads', '')} | "
                 f"{r['first_frame_s']:.2f} | {r['guided_step_ms']:.0f} | {share * 100:.0f} % | "
                 f"{r['end_to_end_s']:.1f} |")
    return L + [""]


def stack_lines(st: dict | None) -> list[str]:
    """The 3D row: a test stack restored to the end in 3D mode."""
    if not st:
        return []
    z, h, w = st["shape"]
    per_plane = st["frames_s"] / z
    return ["### 3D: a Z-stack restored as a volume", "",
            "| stack | mode | end-to-end s | per plane s | first frame s | frames | "
            "peak RSS MB (restore's own) |", "|---|---|---|---|---|---|---|",
            f"| {z}×{h}×{w} | {st['mode']} | {st['frames_s']:.1f} | {per_plane:.2f} | "
            f"{st['first_frame_s']:.2f} | {st['run_frames']} | {st['peak_rss_mb']:.0f} "
            f"(+{st['restore_extra_mb']:.0f}) |", "",
            "The speed test image in every plane, smoothed along Z, measured through a 3D "
            "Gaussian PSF (σ 2 px laterally, 2 planes along Z), 100 photons peak, background "
            "2; default settings in 3D mode (the physics on the volume, the 2D prior on every "
            "plane), restored to the end in a fresh process; peak RSS as in the table above.",
            ""]


def _frames_text(speed: dict) -> str:
    by_frames: dict[int, list[str]] = {}
    for row in speed["sizes"]:
        by_frames.setdefault(row["memory"]["frames"], []).append(f"{row['size']}²")
    return "; ".join(f"{f} frames ({', '.join(sizes)})" for f, sizes in sorted(by_frames.items()))


def precision_lines(pq: dict | None) -> list[str]:
    """bf16 vs fp32 network: restoration quality side by side (speed is in the table above)."""
    if not pq:
        return []
    L = ["### Network precision: bf16 vs fp32", "",
         f"{pq['images']} procedural phantoms of {pq['size']}² (seed {pq['phantom_seed']}), "
         f"Gaussian σ = 2 px, {pq['method']}, the same seed, the network under bf16 autocast "
         "or in fp32 (physics always fp32). Means over the images:", "",
         "| peak photons | PSNR fp32 | PSNR bf16 | Δ PSNR | SSIM fp32 | SSIM bf16 | Δ SSIM | "
         "largest pixel difference | time fp32 s | time bf16 s |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for peak, v in pq["by_peak"].items():
        L.append(f"| {peak} | {v['fp32_psnr']:.2f} | {v['bf16_psnr']:.2f} | {v['psnr_diff']:+.3f} | "
                 f"{v['fp32_ssim']:.3f} | {v['bf16_ssim']:.3f} | {v['ssim_diff']:+.4f} | "
                 f"{100 * v['max_rel_pixel_diff']:.2f} % of peak | {v['fp32_s']:.1f} | {v['bf16_s']:.1f} |")
    L.append("")
    return L
