"""BENCHMARKS.md lines for the Richardson–Lucy part of ``pkl-dg bench speed``
(:mod:`pkl_dg.bench.speed_rl`): everything comes from the JSON."""

from __future__ import annotations

from pkl_dg.bench.speed_rl import MIN_RUN_S, PEER_LABELS, PEER_NAMES

#: done-means of issue 18: restore's RL iteration within this factor of the FFT floor
FLOOR_BAR = 1.2


def load_avg(v: list[float] | None) -> str:
    """The 1-minute figure of a recorded ``os.getloadavg()`` ('?' when not recorded)."""
    return "?" if not v else f"{v[0]:.2f}"


def rl_lines(rl: dict | None) -> list[str]:
    """The RL speed table and the time-to-best table (nothing when the part was not run)."""
    if not rl:
        return []
    t = rl["table"]
    peers = [p for p in PEER_NAMES if p in t["peers"]]
    L = ["### Richardson–Lucy: ours against the FFT floor and other packages", "",
         f"Per iteration, ms, medians of {t['repeats']} repeats of N ≥ {t['iterations']} "
         "iterations (N per size in the table: more where a run would take under "
         f"{MIN_RUN_S} s of floor time), {t['torch_threads']} torch thread(s), one process, "
         "our variants "
         "interleaved in each repeat and the peers' repeats after ours (running sdeconv left "
         f"this process's later FFTs slower); the speed benchmark's test image, PSF {t['psf']}. "
         f"Run {t['created']}; load average at start / end {load_avg(t['load_average_start'])} / "
         f"{load_avg(t['load_average_end'])}" +
         (f" ({t['logical_cpus']} logical CPUs)" if "logical_cpus" in t else "") +
         (f"; {rl['note']}" if rl.get("note") else "") + ".", ""]
    head = ["size", "N", "FFT grid", "floor", "restore (÷ floor)", "fastest repeat: restore ÷ "
            "floor", "restore setup s",
            "restore total ÷ N", "raw loop", "accelerated"]
    head += [PEER_LABELS[p] for p in peers] + [f"{PEER_LABELS[p].split(' ')[0]} ÷ restore"
                                                for p in peers]
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t["sizes"]:
        ratio = r["restore_over_floor"]
        ok = "" if ratio <= FLOOR_BAR else " ✗"
        # a third decimal where two would round onto the bar (1.204 is over 1.2)
        digits = 3 if round(ratio, 2) == FLOOR_BAR else 2
        cells = [f"{r['size']}²", str(r.get("iterations", t["iterations"])),
                 "×".join(map(str, r["fft_shape"])), f"{r['floor_ms']:.2f}",
                 f"{r['restore_ms']:.2f} ({ratio:.{digits}f}×{ok})",
                 (f"{r['restore_min_ms']:.2f} ÷ {r['floor_min_ms']:.2f} = "
                  f"{r['restore_over_floor_min']:.2f}×" if "restore_min_ms" in r else "—"),
                 f"{r['restore_setup_s']:.3f}", f"{r['restore_total_ms']:.2f}",
                 f"{r['raw_ms']:.2f}", f"{r['accelerated_ms']:.2f}"]
        cells += [f"{r[f'{p}_ms']:.2f}" for p in peers]
        cells += [f"{r[f'{p}_over_restore']:.2f}×" for p in peers]
        L.append("| " + " | ".join(cells) + " |")
    L += ["", "How to read it:",
          "- *floor*: 4 real FFTs on our padded grid (the size the linear, reflect-padded "
          "convolution needs) with the OTF and its conjugate cached and every buffer "
          "preallocated, plus the 4 element-wise operations RL cannot avoid.",
          "- *restore*: `restore(image, method=\"rl\", rl_iterations=N, psf_sigma=2)` as a user "
          "calls it (background estimated, new operator; the misfit is offered on the frames "
          "that can be shown and computed only when read: this call, like the napari "
          "widget, reads none), the median interval between "
          "consecutive streamed frames; (÷ floor) is the median of the per-repeat ratios "
          f"(bar: ≤ {FLOOR_BAR}×, ✗ = above it). *setup*: the rest of its wall time (total − "
          "N × iteration: PSF, OTF, what restore estimates from the image (background; "
          "with the automatic calibration also gain, offset, read noise), Aᵀ1). "
          "*total ÷ N*: its whole wall time divided by N. Floor and raw loop: medians of "
          "single iterations too.",
          "- *fastest repeat*: the fastest repeat's median restore iteration against the "
          "fastest repeat's median floor iteration (the repeats least disturbed by the "
          "machine's other load).",
          "- *raw loop*: `rl_iterates` alone, no readout; *accelerated*: restore with "
          "`rl_acceleration=\"biggs-andrews\"` (per iteration; it needs fewer, see below).",
          "- Peers, per iteration (total ÷ N) on the same image and PSF: scikit-image "
          "`richardson_lucy(clip=False)` (scipy.signal.convolve, zero padding), RedLionfish's "
          "CPU path (scipy.fft, circular), sdeconv `SRichardsonLucy` (torch complex FFT, "
          "circular, PSF padded to the image by its own helper). *÷ restore*: the median over "
          "repeats of peer ÷ restore within a repeat; > 1: ours is faster. Installed by `pip install -e .[bench]` (sdeconv: `pip install --no-deps "
          "sdeconv`); versions: " +
          ", ".join(f"{p} {v}" for p, v in t.get("versions", {}).items()) + "."]
    for p, why in t.get("skipped_peers", {}).items():
        L.append(f"- {PEER_LABELS[p]}: skipped: {why}")
    L.append("")
    L += _best_lines(rl.get("time_to_best"))
    return L


def _best_lines(b: dict | None) -> list[str]:
    if not b:
        return []
    L = ["### Richardson–Lucy: time to the best result (real data)", ""]
    if "skipped" in b:
        return L + [f"Not run: {b['skipped']}.", ""]
    L += [f"{b['data']}, PSF {b['psf']}, PSNR by the CARE protocol against the SIM image at "
          f"every iteration (cap {b['cap']}). Target: **{b['target_psnr']:.3f} dB**, the lowest "
          "of the three methods' best PSNRs, so that each reaches it. Seconds: the call a user "
          f"makes for that many iterations, median of {b['repeats']}. {b['note']}.", "",
          "| method | best PSNR dB (iteration) | iterations to target | seconds to target | "
          "PSNR of the timed call | scikit-image time ÷ this |", "|---|---|---|---|---|---|"]
    labels = {"plain": "ours, plain RL (`restore`, method rl)",
              "accelerated": "ours, Biggs–Andrews (`rl_acceleration=\"biggs-andrews\"`)",
              "skimage": "scikit-image `richardson_lucy` (clip=False)"}
    for m, r in b["methods"].items():
        L.append(f"| {labels[m]} | {r['best_psnr']:.3f} ({r['best_iteration']}) | "
                 f"{r['iterations_to_target']} | {r['seconds_to_target']:.3f} | "
                 f"{r['psnr_of_timed_call']:.3f} | {r['skimage_over_this']:.2f}× |")
    m = b["methods"]
    L += ["", f"Accelerated against plain RL (ours): best PSNR {m['accelerated']['best_psnr']:.3f} "
          f"vs {m['plain']['best_psnr']:.3f} dB at iteration {m['accelerated']['best_iteration']} "
          f"vs {m['plain']['best_iteration']} "
          f"({m['accelerated']['best_iteration'] / m['plain']['best_iteration']:.2f}× the "
          "iterations). The scikit-image loop used for its PSNR curve equals the library call "
          f"(largest difference after 5 iterations: {b['skimage_replica_max_abs_diff_at_5']:.2g}).",
          ""]
    return L
