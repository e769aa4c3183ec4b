"""``pkl-dg bench report``: BENCHMARKS.md and the PSNR-vs-photons plot from the JSON results.

Everything in the markdown comes from the two JSON files; nothing is typed in by hand.
The PKL-vs-baseline statements cover every object, PSF, photon level and the real pair.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from pkl_dg.bench.quality import METHOD_LABELS, METHODS

REGENERATE = ("pkl-dg bench speed --threads 1 --json benchmarks/speed.json\n"
              "pkl-dg bench quality --threads 1 --json benchmarks/quality.json\n"
              "pkl-dg bench quality --section real --threads 1 --json benchmarks/realdata.json\n"
              "pkl-dg bench load --json benchmarks/load.json\n"
              "pkl-dg bench report --quality benchmarks/quality.json "
              "--speed benchmarks/speed.json --batch benchmarks/batch.json "
              "--load benchmarks/load.json --realdata benchmarks/realdata.json")
TIE_DB = 0.01
SOURCE_LABELS = {"biosr": "BioSR F-actin SIM crops", "bars": "flowdec hollow bars",
                 "celegans": "C. elegans (sdeconv)", "biosr-pair": "BioSR widefield→SIM pair"}


def load_json(path: str | Path, kind: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{kind} results {p} not found: run `pkl-dg bench {kind} "
                                f"--json {p}` first")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON ({exc}): rerun `pkl-dg bench {kind}`") from None
    if data.get("kind") != kind:
        raise ValueError(f"{p} holds {data.get('kind')!r} results, expected {kind!r}: check "
                         "the --quality / --speed arguments")
    return data


# ---------------------------------------------------------------------------------------
def aggregate(records: list[dict]) -> dict[tuple, dict]:
    """(case, source, psf, photons, method) → mean/std PSNR and SSIM, median FRC, mean time."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["case"], r["source"], r["psf"], r["photons"], r["method"])].append(r)
    out = {}
    for key, rs in groups.items():
        psnr = np.array([r["psnr"] for r in rs], dtype=float)
        ssim = np.array([r["ssim"] for r in rs], dtype=float)
        # null FRC (strict JSON) = inf: nothing correlated above the threshold
        frc = np.array([np.inf if r["frc_px"] is None else r["frc_px"] for r in rs], dtype=float)
        out[key] = {"n": len(rs), "psnr": float(psnr.mean()), "psnr_std": float(psnr.std()),
                    "ssim": float(ssim.mean()), "ssim_std": float(ssim.std()),
                    "frc_px": float(np.median(frc)), "time_s": float(np.mean([r["time_s"] for r in rs])),
                    "best_iteration": [r["best_iteration"] for r in rs if "best_iteration" in r]}
    return out


def _fmt_frc(v: float) -> str:
    return "∞" if not math.isfinite(v) else f"{v:.1f}"


def _cell(a: dict | None) -> str:
    if a is None:
        return "—"
    std = f"±{a['psnr_std']:.2f}" if a["n"] > 1 else ""
    return f"{a['psnr']:.2f}{std} / {a['ssim']:.3f} / {_fmt_frc(a['frc_px'])}"


def _methods_present(quality: dict) -> list[str]:
    seen = {r["method"] for r in quality["records"]}
    return [m for m in METHODS if m in seen]


# ---------------------------------------------------------------------------------------
def speed_section(speed: dict, quality: dict | None = None) -> list[str]:
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
             f"photons peak, background {speed['test_image']['background']:.0f}. Medians of "
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
          f"(method {s0['method']}, {s0['samples']} posterior samples as one batch, "
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
          f"- *first frame*: from calling `restore_iter` to its first streamed frame, network "
          "already loaded, new operator (cold OTF); includes the 20-iteration RL scale estimate.",
          f"- *end-to-end*: all {s0['steps']} steps (the default when measured); *peak RSS*: the "
          "memory high-water mark of a fresh process restoring that size for "
          f"{_frames_text(speed)} (imports, network and image included); in brackets what "
          "the restoration added on top of that baseline.",
          "- *achieved GFLOP/s*: FLOPs of one forward counted with "
          "`torch.utils.flop_counter.FlopCounterMode` divided by the measured forward time."]
    cast = "bf16" if "bfloat16" in speed["default_network_precision"] else "fp32"
    n_samp = s0["samples"]
    ratios = ", ".join(
        f"{r['restore']['guided_step_network_ms'] / (n_samp * r['network']['ms'][cast]):.1f}× at "
        f"{r['size']}² ({r['restore']['steps_timed']} steps)" for r in speed["sizes"])
    notes.append(f"The network time inside one guided step ({n_samp} samples, tiled above the "
                 f"tile size) vs {n_samp} × its standalone untiled {cast} forward: {ratios}. "
                 "Above 1× is time lost inside a restoration (tile overlap, memory traffic "
                 "between network and physics, or load from other processes).")
    L += [f"- {n}" for n in notes]
    L.append("")
    L += precision_lines(speed.get("precision_quality"))
    from pkl_dg.bench.report_rl import rl_lines

    L += rl_lines(speed.get("rl"))
    return L


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


def quality_section(quality: dict, plot_rel: str | None) -> list[str]:
    cfg = quality["config"]
    agg = aggregate(quality["records"])
    methods = _methods_present(quality)
    L = ["## Quality", ""]
    if quality.get("smoke"):
        L += ["**SMOKE RUN: tiny crops, 3 steps, a tiny random network: the numbers below "
              "test the pipeline and mean nothing.**", ""]
    if quality.get("reduced"):
        L += [f"**Reduced run** (time-limited): {cfg['seeds']} noise seed(s) and "
              f"{cfg['biosr_crops']} BioSR crop(s) instead of the full run's 3 seeds and 2 crops.", ""]
    objs = "; ".join(f"{o['name']} ({o['shape'][0]}×{o['shape'][1]})" for o in quality["objects"])
    L.append(f"Synthetic objects (none made by our training generator): {objs}. Each is scaled "
             f"to a maximum of P photons ({cfg['photons_definition']}), blurred with a Gaussian "
             f"PSF (σ = {cfg['gaussian_sigma_px']} px) or an Airy PSF (NA {cfg['airy']['na']}, "
             f"λ {cfg['airy']['wavelength_nm']:.0f} nm, {cfg['airy']['pixel_size_nm']:.0f} nm "
             f"pixels, kernel {cfg['airy_psf_shape'][0]}²), plus a background of "
             f"{cfg['background_photons']:.0f} photons/pixel, Poisson noise; P ∈ "
             f"{', '.join(map(str, cfg['photons']))}; {cfg['seeds']} noise seed(s) per case "
             "(mean ± std over seeds and crops). Every method gets the true PSF and background. "
             f"RL best iteration is an oracle (PSNR against the ground truth, cap "
             f"{cfg['rl_cap']} iterations). Diffusion methods: {cfg['diffusion_settings']}.")
    L.append("")
    L.append("Cells: **PSNR dB (± std) / SSIM / FRC resolution px** (DESIGN §4 protocol; FRC "
             "against the ground truth, 1/7 threshold, 2 px = Nyquist, ∞ = nothing correlated). "
             "Time is the mean wall time of one restoration of that object (for the RL oracle: RL "
             "time up to its best iteration, scoring excluded).")
    L.append("")
    model = quality.get("model", {})
    skipped = quality.get("skipped_methods", {})
    if skipped:
        L += [f"**The diffusion rows ({', '.join(METHOD_LABELS[m] for m in skipped)}) await the "
              f"trained prior:** {next(iter(skipped.values()))}", ""]
    elif model.get("source") not in (None, "not used"):
        desc = model.get("description") or model.get("name") or ""
        L += [f"Prior: {model.get('source')}" + (f" ({desc})" if desc else "") + ".", ""]
    sources = [s for s in ("biosr", "bars", "celegans")
               if any(k[1] == s for k in agg)]
    psf_names = [p for p in ("gaussian", "airy") if any(k[2] == p for k in agg)]
    for src in sources:
        for pn in psf_names:
            L.append(f"### {SOURCE_LABELS[src]}, {pn} PSF")
            L.append("")
            L.append("| method | " + " | ".join(f"{P} photons" for P in cfg["photons"]) +
                     " | time s |")
            L.append("|---|" + "---|" * (len(cfg["photons"]) + 1))
            for m in methods:
                cells, times = [], []
                for P in cfg["photons"]:
                    a = agg.get(("synthetic", src, pn, P, m))
                    cells.append(_cell(a))
                    if a:
                        times.append(a["time_s"])
                label = METHOD_LABELS[m]
                if m == "rl_best":
                    its = [agg.get(("synthetic", src, pn, P, m), {}).get("best_iteration", [])
                           for P in cfg["photons"]]
                    med = [int(np.median(i)) if i else "—" for i in its]
                    label += f" (iterations {', '.join(map(str, med))})"
                L.append(f"| {label} | " + " | ".join(cells) +
                         f" | {np.mean(times):.2f} |" if times else f"| {label} | " +
                         " | ".join(cells) + " | — |")
            L.append("")
    fit = quality["real_fit"]
    L.append(f"### {SOURCE_LABELS['biosr-pair']} (real data)")
    L.append("")
    L.append(f"Gaussian PSF σ fitted by least squares on the pair: **σ = {fit['sigma_px']:.3f} px** "
             f"(raw ≈ {fit['scale']:.3f}·G∗gt + {fit['offset']:.2f}, Pearson r = "
             f"{fit['pearson_r']:.4f}); background estimated from the data; the SIM image is the "
             "reference (it is not an exact object).")
    L += ["", "| method | PSNR dB | SSIM | FRC px | time s |", "|---|---|---|---|---|"]
    for m in methods:
        a = agg.get(("real", "biosr-pair", "gaussian-fit", None, m))
        if a is None:
            continue
        std = f" ± {a['psnr_std']:.2f}" if a["n"] > 1 else ""
        label = METHOD_LABELS[m] + (f" (iteration {a['best_iteration'][0]})"
                                    if a["best_iteration"] else "")
        L.append(f"| {label} | {a['psnr']:.2f}{std} | {a['ssim']:.3f} | "
                 f"{_fmt_frc(a['frc_px'])} | {a['time_s']:.2f} |")
    L.append("")
    if plot_rel:
        L += [f"![PSNR against photons per method]({plot_rel})", ""]
    L += verdict_section(agg, cfg, methods, skipped)
    return L


def verdict_section(agg: dict, cfg: dict, methods: list[str], skipped: dict) -> list[str]:
    L = ["### Where PKL beats or loses to Richardson–Lucy and L2", ""]
    if "pkl" not in methods:
        why = skipped.get("pkl", "PKL was not part of this run")
        return L + [f"No PKL results in this run: {why}", ""]
    rivals = [m for m in ("rl_best", "rl30", "l2") if m in methods]
    order = {"biosr": 0, "bars": 1, "celegans": 2, "gaussian": 0, "airy": 1}
    keys = sorted({(k[0], k[1], k[2], k[3]) for k in agg if k[4] == "pkl"},
                  key=lambda k: (k[0] != "synthetic", order.get(k[1], 9), order.get(k[2], 9),
                                 k[3] or 0))
    tally = {m: [0, 0, 0] for m in rivals}
    rows = []
    for case, src, pn, P in keys:
        pk = agg[(case, src, pn, P, "pkl")]
        parts = []
        for m in rivals:
            r = agg.get((case, src, pn, P, m))
            if r is None:
                continue
            d = pk["psnr"] - r["psnr"]
            ds = pk["ssim"] - r["ssim"]
            if abs(d) < TIE_DB:
                tally[m][2] += 1
                parts.append(f"ties with {METHOD_LABELS[m]} (|ΔPSNR| < {TIE_DB} dB, "
                             f"SSIM {ds:+.3f})")
                continue
            word = "beats" if d > 0 else "loses to"
            tally[m][0 if d > 0 else 1] += 1
            parts.append(f"{word} {METHOD_LABELS[m]} by {abs(d):.2f} dB (SSIM {ds:+.3f})")
        where = (f"{SOURCE_LABELS[src]}, {pn} PSF, {P} photons" if case == "synthetic"
                 else SOURCE_LABELS[src])
        rows.append(f"- {where}: PKL " + "; ".join(parts) + ".")
    for m in rivals:
        w, lo, tie = tally[m]
        L.append(f"- PKL vs {METHOD_LABELS[m]}: higher PSNR in **{w}** of {w + lo + tie} "
                 f"conditions, lower in **{lo}**" + (f", tied in {tie}" if tie else "") + ".")
    L += ["", "Every condition (mean PSNR over seeds and crops):", ""] + rows + [""]
    return L


def plot_quality(quality: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(quality["records"])
    methods = _methods_present(quality)
    photons = quality["config"]["photons"]
    sources = [s for s in ("biosr", "bars", "celegans") if any(k[1] == s for k in agg)]
    psf_names = [p for p in ("gaussian", "airy") if any(k[2] == p for k in agg)]
    fig, axes = plt.subplots(len(sources), len(psf_names), squeeze=False,
                             figsize=(5.2 * len(psf_names), 3.4 * len(sources)))
    for i, src in enumerate(sources):
        for j, pn in enumerate(psf_names):
            ax = axes[i][j]
            for m in methods:
                pts = [(P, agg[("synthetic", src, pn, P, m)]) for P in photons
                       if ("synthetic", src, pn, P, m) in agg]
                if not pts:
                    continue
                ax.errorbar([p for p, _ in pts], [a["psnr"] for _, a in pts],
                            yerr=[a["psnr_std"] for _, a in pts], marker="o", ms=3,
                            capsize=2, label=METHOD_LABELS[m])
            ax.set_xscale("log")
            ax.set_title(f"{SOURCE_LABELS[src]}, {pn} PSF", fontsize=9)
            ax.set_xlabel("peak photons")
            ax.set_ylabel("PSNR (dB)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def machine_section(speed: dict, quality: dict) -> list[str]:
    m = speed["machine"]
    L = ["## Machine", "",
         f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs (bf16 kernels: "
         f"{'yes' if m['cpu_bf16'] else 'no'}), {m['memory_gb']} GB RAM, CUDA: "
         f"{'yes' if m['cuda'] else 'no'}; {m['platform']}",
         f"- Python {m['python']}, torch {m['torch']} ({m['torch_threads']} thread(s) used), "
         f"numpy {m['numpy']}, scipy {m['scipy']}, scikit-image {m['scikit_image']}, "
         f"pkl-dg {m['pkl_dg']}",
         f"- Load average at start / end of the speed run: "
         f"{_load(m.get('load_average_start'))} / {_load(m.get('load_average_end'))}; quality "
         f"run: {_load(quality['machine'].get('load_average_start'))} / "
         f"{_load(quality['machine'].get('load_average_end'))} "
         f"(quality run: {quality['machine']['torch_threads']} thread(s), "
         f"{quality['wall_s'] / 60:.1f} min; speed run {speed['wall_s'] / 60:.1f} min)"]
    for name, d in (("speed", speed), ("quality", quality)):
        if d.get("note"):
            L.append(f"- Note on the {name} run: {d['note']}")
    L.append("")
    return L


def _load(v) -> str:
    return "?" if not v else f"{v[0]:.2f}"


def render(quality: dict, speed: dict, plot_rel: str | None, batch: dict | None = None,
           load: dict | None = None, real: dict | None = None) -> str:
    L = ["# Benchmarks", "",
         "Generated by `pkl-dg bench report` from `benchmarks/speed.json` and "
         "`benchmarks/quality.json`; do not edit by hand. Regenerate everything with:", "",
         "```bash", REGENERATE, "```", "",
         f"Speed results from {speed['created']}, quality results from {quality['created']}.",
         ""]
    L += machine_section(speed, quality)
    L += speed_section(speed, quality)
    if load is not None:
        from pkl_dg.bench.load import load_section

        L += load_section(load)
    if batch is not None:
        from pkl_dg.bench.batch import batch_section

        L += batch_section(batch)
    L += quality_section(quality, plot_rel)
    if real is not None:
        from pkl_dg.bench.realdata import realdata_section

        L += [f"Real-data results from {real['created']} (`benchmarks/realdata.json`, "
              f"{real['wall_s'] / 60:.0f} min; load average at the end "
              f"{_load(real['machine'].get('load_average_end'))}).", ""]
        L += realdata_section(real)
    return "\n".join(L).rstrip() + "\n"


def write_report(quality_path: str | Path, speed_path: str | Path, out: str | Path = "BENCHMARKS.md",
                 plot: str | Path | None = "benchmarks/quality_psnr.png",
                 batch_path: str | Path | None = None,
                 load_path: str | Path | None = None,
                 realdata_path: str | Path | None = None) -> Path:
    quality = load_json(quality_path, "quality")
    load = load_json(load_path, "load") if load_path else None
    speed = load_json(speed_path, "speed")
    batch = load_json(batch_path, "batch") if batch_path else None
    real = load_json(realdata_path, "realdata") if realdata_path else None
    out = Path(out)
    plot_rel = None
    if plot:
        p = plot_quality(quality, plot)
        try:
            plot_rel = str(Path(p).resolve().relative_to(out.resolve().parent))
        except ValueError:
            plot_rel = str(Path(p).resolve())
    out.write_text(render(quality, speed, plot_rel, batch, load, real), encoding="utf-8")
    return out
