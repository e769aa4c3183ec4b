"""The benchmarks' smoke modes run end to end, write the expected JSON and render a report."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from pkl_dg.cli import main

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
SPEED_ROW_KEYS = {"size", "network", "forward_adjoint", "rl_iteration", "restore", "memory"}


@pytest.fixture(scope="module")
def speed_json(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "speed.json"
    with one_thread():
        assert main(["bench", "speed", "--smoke", "--threads", "1", "--json", str(out),
                     "--sizes", "32"]) == 0
    return strict_load(out)


@contextmanager
def one_thread():
    """The smoke runs use 1 torch thread (robust to a busy machine); restore the setting."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def strict_load(path: Path) -> dict:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_speed_smoke_writes_expected_keys(speed_json):
    d = speed_json
    assert d["kind"] == "speed" and d["smoke"] is True
    assert {"machine", "network", "matmul", "sizes", "repeats"} <= set(d)
    assert d["matmul"]["fp32_gflops"] > 0 and d["matmul"]["bf16_gflops"] > 0
    row = d["sizes"][0]
    assert SPEED_ROW_KEYS <= set(row) and row["size"] == 32
    net = row["network"]
    assert net["ms"]["fp32"] > 0 and net["ms"]["bf16"] > 0 and net["flops"] > 0
    assert row["forward_adjoint"]["warm_cache"]["misses"] == 1
    assert row["forward_adjoint"]["warm_cache"]["hits"] >= 1
    rl = row["rl_iteration"]
    assert rl["ours_ms"] > 0 and rl["skimage_ms"] > 0
    assert rl["skimage_over_ours"] == pytest.approx(rl["skimage_ms"] / rl["ours_ms"])
    rs = row["restore"]
    assert rs["first_frame_s"] > 0 and rs["guided_step_ms"] > 0
    assert 0 <= rs["guided_step_non_network_share"] <= 1
    assert rs["end_to_end_estimated"] is False and rs["end_to_end_s"] >= rs["first_frame_s"]
    mem = row["memory"]
    assert mem["peak_rss_mb"] >= mem["baseline_rss_mb"] > 0
    assert mem["restore_extra_mb"] == pytest.approx(mem["peak_rss_mb"] - mem["baseline_rss_mb"])
    st = d["stack_3d"]  # the 3D row: a smoke stack restored to the end in 3D mode
    assert st["shape"] == [18, 32, 32] and st["mode"] == "3d"
    assert st["run_frames"] == st["frames"] >= 2 and st["frames_s"] >= st["first_frame_s"] > 0
    assert st["peak_rss_mb"] >= st["baseline_rss_mb"] > 0
    pq = d["precision_quality"]
    assert set(pq["by_peak"]) == {"30"} and len(pq["per_case"]) == 1
    v = pq["by_peak"]["30"]
    assert v["psnr_diff"] == pytest.approx(v["bf16_psnr"] - v["fp32_psnr"])
    assert 0 <= v["max_rel_pixel_diff"] < 0.5  # same seed: bf16 changes details, not the image


def test_speed_estimates_sizes_above_e2e_max_from_the_memory_process():
    from pkl_dg.bench.speed import run_speed

    d = run_speed([48], repeats=1, smoke=True, e2e_max=32, log=lambda m: None)
    rs, mem = d["sizes"][0]["restore"], d["sizes"][0]["memory"]
    assert rs["end_to_end_estimated"] is True and rs["steps_timed"] == 2 == len(mem["step_ms"])
    assert rs["first_frame_s"] == mem["first_frame_s"] > 0
    # the run's frames: steps × the sample groups a large image runs one after the other,
    # and the final denoising pass
    frames = rs["run_frames"]
    from pkl_dg.settings import RestoreSettings

    assert frames == mem["run_frames"] and (frames - 1) % RestoreSettings().steps == 0
    assert rs["end_to_end_s"] == pytest.approx(rs["first_frame_s"]
                                               + (frames - 1) * rs["guided_step_ms"] / 1e3)
    assert 0 <= rs["guided_step_non_network_share"] <= 1


def test_speed_restores_sizes_up_to_once_max_to_the_end_in_the_memory_process():
    from pkl_dg.bench.report_speed import speed_section
    from pkl_dg.bench.speed import run_speed

    d = run_speed([48], repeats=1, smoke=True, e2e_max=32, once_max=48, stack=None,
                  log=lambda m: None)
    rs, mem = d["sizes"][0]["restore"], d["sizes"][0]["memory"]
    assert rs["end_to_end_estimated"] is False and rs["end_to_end_repeats"] == 1
    assert mem["frames"] == mem["run_frames"] == rs["run_frames"] > 2  # the whole run
    assert rs["steps_timed"] == rs["run_frames"] - 1
    assert rs["end_to_end_s"] == mem["frames_s"] >= rs["first_frame_s"] > 0
    assert d["run_once_max_size"] == 48
    d["rl"] = {}
    assert "(1 run)" in "\n".join(speed_section(d))


def test_memory_high_water_mark_resets_and_sees_an_allocation():
    """The peak-memory method must see what happens after the reset, and only that."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak memory is measured through /proc (Linux only)")
    code = (
        "import numpy as np\n"
        "from pkl_dg.bench.speed_restore import proc_status_mb\n"
        "big = np.ones(300 * 2**20 // 8); del big\n"          # an early peak, then freed
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = proc_status_mb('VmRSS'); hwm0 = proc_status_mb('VmHWM')\n"
        "a = np.ones(100 * 2**20 // 8)\n"
        "print(base, hwm0, proc_status_mb('VmHWM'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, hwm0, hwm1 = map(float, out.stdout.split())
    assert hwm0 < base + 50          # the 300 MB peak before the reset is forgotten
    assert 90 < hwm1 - base < 150    # the 100 MB array after it is seen


def test_speed_rejects_bad_arguments(tmp_path, capsys):
    assert main(["bench", "speed", "--smoke", "--json", str(tmp_path / "s.json"),
                 "--sizes", "8"]) == 2
    assert "at least 32" in capsys.readouterr().err
    assert main(["bench", "speed", "--smoke", "--json", str(tmp_path / "no" / "s.json"),
                 "--sizes", "abc"]) == 2
    for bad in ("32", "32,512,2", "4,8"):
        assert main(["bench", "speed", "--smoke", "--json", str(tmp_path / "s.json"),
                     "--stack", bad]) == 2
        assert "PLANES,SIDE" in capsys.readouterr().err


def test_quality_missing_realdata_is_a_clear_error(tmp_path, capsys):
    code = main(["bench", "quality", "--smoke", "--json", str(tmp_path / "q.json"),
                 "--realdata", str(tmp_path / "nowhere")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "realdata" in err


@pytest.fixture(scope="module")
def quality_json(tmp_path_factory) -> dict:
    if not REALDATA.is_dir():
        pytest.skip(f"real test data not present at {REALDATA} (the shared/realdata folder "
                    "beside the checkout): the quality benchmark's objects come from it")
    out = tmp_path_factory.mktemp("bench") / "quality.json"
    with one_thread():
        assert main(["bench", "quality", "--smoke", "--threads", "1", "--json", str(out),
                     "--realdata", str(REALDATA)]) == 0
    return strict_load(out)


def test_quality_smoke_writes_expected_keys(quality_json):
    d = quality_json
    assert d["kind"] == "quality" and d["smoke"] is True
    assert {"config", "objects", "real_fit", "records", "model", "skipped_methods"} <= set(d)
    assert {o["source"] for o in d["objects"]} == {"biosr", "bars", "celegans"}
    methods = {r["method"] for r in d["records"]}
    assert methods == {"widefield", "rl_best", "rl30", "l2", "anscombe", "pkl", "none"}
    for r in d["records"]:
        assert r["frc_px"] is None or r["frc_px"] >= 2.0
        assert {"case", "source", "psf", "photons", "seed", "psnr", "ssim", "frc_px",
                "time_s"} <= set(r)
    assert {r["psf"] for r in d["records"] if r["case"] == "synthetic"} == {"gaussian", "airy"}
    assert any(r["case"] == "real" for r in d["records"])
    assert 0.5 < d["real_fit"]["sigma_px"] < 5.0
    rl = [r for r in d["records"] if r["method"] == "rl_best"]
    assert all(1 <= r["best_iteration"] <= r["iteration_cap"] for r in rl)


def test_report_renders_markdown_and_plot(tmp_path, quality_json, speed_json):
    q, s = tmp_path / "q.json", tmp_path / "s.json"
    q.write_text(json.dumps(quality_json))
    s.write_text(json.dumps(speed_json))
    md, png = tmp_path / "B.md", tmp_path / "plot.png"
    assert main(["bench", "report", "--quality", str(q), "--speed", str(s), "--out", str(md),
                 "--plot", str(png)]) == 0
    text = md.read_text()
    for needle in ("# Benchmarks", "## Machine", "## Speed", "## Quality", "SMOKE RUN",
                   "pkl-dg bench report", "PKL vs", "BioSR widefield→SIM pair", "plot.png",
                   "bf16 vs fp32", "restore's own", "3D: a Z-stack restored as a volume"):
        assert needle in text, needle
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_states_missing_diffusion_rows(tmp_path, speed_json):
    from pkl_dg.bench.report import render

    quality = {
        "kind": "quality", "smoke": False, "reduced": False, "created": "now",
        "machine": speed_json["machine"], "wall_s": 1.0,
        "config": {"photons": [10], "seeds": 1, "biosr_crops": 1, "rl_cap": 5,
                   "photons_definition": "max", "gaussian_sigma_px": 2.0,
                   "airy": {"na": 1.2, "wavelength_nm": 520.0, "pixel_size_nm": 45.0},
                   "airy_psf_shape": [43, 43], "background_photons": 2.0,
                   "diffusion_settings": "defaults"},
        "objects": [{"source": "bars", "name": "bars", "shape": [64, 64]}],
        "real_fit": {"sigma_px": 2.0, "scale": 1.0, "offset": 0.0, "pearson_r": 0.99},
        "model": {"source": "missing"},
        "skipped_methods": {"pkl": "not run: no trained prior available (x)"},
        "records": [
            {"case": "synthetic", "source": "bars", "psf": "gaussian", "photons": 10, "seed": 0,
             "method": m, "psnr": p, "ssim": 0.5, "frc_px": float("inf"), "time_s": 0.1}
            for m, p in (("widefield", 20.0), ("rl30", 22.0))],
    }
    text = render(quality, speed_json, None)
    assert "await the trained prior" in text
    assert "No PKL results in this run" in text
    assert "| widefield input | 20.00 / 0.500 / ∞ |" in text


def test_report_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "report", "--quality", str(tmp_path / "q.json"), "--speed",
                 str(tmp_path / "s.json"), "--out", str(tmp_path / "B.md")]) == 2
    assert "pkl-dg bench quality" in capsys.readouterr().err


@pytest.fixture
def single_thread():
    with one_thread():
        import torch

        torch.set_num_threads(1)
        yield


def test_fitted_sigma_recovers_the_blur(single_thread):
    import numpy as np
    import torch

    from pkl_dg.bench.quality import fit_gaussian_sigma
    from pkl_dg.physics import PSFConvolution, gaussian_psf

    rng = np.random.default_rng(0)
    gt = np.zeros((96, 96))
    gt[rng.integers(0, 96, 60), rng.integers(0, 96, 60)] = 100.0
    with torch.inference_mode():
        raw = PSFConvolution(gaussian_psf(1.7)).A(torch.from_numpy(gt.astype(np.float32)))
    raw = 0.5 * raw.numpy().astype(np.float64) + 20.0
    fit = fit_gaussian_sigma(raw, gt)
    assert fit["sigma_px"] == pytest.approx(1.7, abs=0.02)
    assert fit["scale"] == pytest.approx(0.5, rel=0.02)
    assert fit["offset"] == pytest.approx(20.0, abs=0.5)


def test_rl_oracle_picks_the_best_psnr_iteration(single_thread):
    import numpy as np
    import torch

    from pkl_dg.bench.protocol import psnr, rl_iterates, rl_oracle
    from pkl_dg.bench.simulate import simulate_measurement
    from pkl_dg.metrics import normalize_percentile
    from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
    from pkl_dg.richardson_lucy import richardson_lucy_iter

    rng = np.random.default_rng(1)
    obj = np.zeros((48, 48), dtype=np.float32)
    obj[rng.integers(4, 44, 20), rng.integers(4, 44, 20)] = 1.0
    psf = gaussian_psf(2.0)
    y = simulate_measurement(obj, psf, background=2.0, peak=30, seed=0)
    best = rl_oracle(rl_iterates(y, psf, 2.0, 40), obj)
    img, it, secs = best.image, best.iteration, best.seconds
    assert 1 <= it <= 40 and secs >= 0
    assert psnr(img, normalize_percentile(obj)) == pytest.approx(best.psnr)
    fm = ForwardModel(PSFConvolution(psf), 2.0)
    with torch.inference_mode():
        scores = [psnr(x.numpy(), normalize_percentile(obj))
                  for x in richardson_lucy_iter(torch.from_numpy(y), fm, 40)]
    assert best.psnr == pytest.approx(max(scores)) and scores[it - 1] == pytest.approx(best.psnr)


def test_gpu_bench_smoke_on_cpu_and_its_report(tmp_path, quality_json, speed_json):
    """`bench gpu` runs its cases through restore_iter (here on the CPU, tiny sizes) and the
    report renders every case, a failed one as failed."""
    out = tmp_path / "gpu.json"
    with one_thread():
        assert main(["bench", "gpu", "--smoke", "--device", "cpu", "--repeats", "1",
                     "--json", str(out)]) == 0
    gpu = strict_load(out)
    assert gpu["kind"] == "gpu" and gpu["device"] == "cpu"
    assert [(r["size"], r["method"], r["precision"]) for r in gpu["rows"]] == [
        (32, "pkl", "bf16"), (32, "rl", None), (32, "pkl", "fp32"),
        (48, "pkl", "bf16"), (48, "rl", None), (48, "pkl", "fp32")]
    for r in gpu["rows"] + [gpu["stack"]]:
        assert "error" not in r, r
        assert 0 < r["first_frame_s"] <= r["end_to_end_s"] and r["frames"] >= 1
    # PKL: 2 steps + the final denoising pass
    assert gpu["rows"][0]["frames"] == 3 and gpu["stack"]["shape"] == [18, 32, 32]
    gpu["rows"][1] = {"size": 32, "method": "pkl", "precision": "fp32",
                      "error": "OutOfMemoryError: CUDA out of memory"}
    q, s, g = tmp_path / "q.json", tmp_path / "s.json", tmp_path / "g.json"
    q.write_text(json.dumps(quality_json))
    s.write_text(json.dumps(speed_json))
    g.write_text(json.dumps(gpu))
    md = tmp_path / "B.md"
    assert main(["bench", "report", "--quality", str(q), "--speed", str(s), "--gpu", str(g),
                 "--out", str(md), "--plot", str(tmp_path / "p.png")]) == 0
    text = md.read_text()
    assert "## GPU" in text and "| 48² | RL | - |" in text and "18×32×32 (3D)" in text
    assert "| 32² | PKL | fp32 | failed: OutOfMemoryError" in text


def test_gpu_rows_are_compared_with_the_cpu_only_on_the_same_image_and_settings():
    # a GPU run from before the blobs were fixed at σ 8 px (no blob size recorded) restored
    # the same image as today's CPU run at 512² only (σ = n/64 there too)
    from pkl_dg.bench.gpu import gpu_section

    row = {"method": "pkl", "precision": "bf16", "end_to_end_s": 1.0, "first_frame_s": 0.1,
           "cold_s": 1.0, "peak_gpu_mb": 10.0}
    gpu = {"machine": {"torch": "x", "logical_cpus": 1}, "device": "cuda", "created": "t",
           "wall_s": 60.0, "network": {"source": "s"}, "stack": None,
           "rows": [dict(row, size=512), dict(row, size=4096)]}
    cpu = {"machine": {"torch_threads": 2}, "test_image": {"blob_sigma_px": 8.0},
           "sizes": [{"size": n, "restore": {"end_to_end_s": 2.0}} for n in (512, 4096)]}
    old = "\n".join(gpu_section(gpu, cpu))
    assert "2.0 s (2× the GPU)" in old and "another test image: not comparable" in old
    new = "\n".join(gpu_section(dict(gpu, test_image_blob_sigma_px=8.0), cpu))
    assert "not comparable" not in new and new.count("× the GPU") == 2
    # a run without recorded settings used 10 steps × 4 samples; a CPU row at 11 × 4 is
    # another restoration
    cpu11 = dict(cpu, sizes=[{"size": n, "restore": {"end_to_end_s": 2.0, "settings": {
        "steps": 11, "samples": 4, "method": "pkl"}}} for n in (512, 4096)])
    text = "\n".join(gpu_section(dict(gpu, test_image_blob_sigma_px=8.0), cpu11))
    assert text.count("other steps × samples: not comparable") == 2
    assert "(10 steps × 4 samples)" in text
    ran = dict(gpu, test_image_blob_sigma_px=8.0, settings={"steps": 11, "samples": 4})
    text = "\n".join(gpu_section(ran, cpu11))
    assert text.count("× the GPU") == 2 and "(11 steps × 4 samples)" in text


def test_gpu_bench_without_cuda_says_so(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot be shown")
    assert main(["bench", "gpu", "--json", str(tmp_path / "g.json")]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_speed_restores_at_the_requested_thread_count(speed_json):
    """The restore rows run at the benchmark's thread count, not the automatic one (which
    is physical cores − 1 and would time another count than the one reported)."""
    assert speed_json["sizes"][0]["restore"]["threads"] == 1
    assert speed_json["real_images"] == {"skipped": "smoke run"}


def test_speed_test_image_has_the_same_local_statistics_at_every_size():
    # a larger test image is a larger field of view of the same sample: the blobs' spread
    # (10–90 % range over the median) stays the same; with σ = n/64 (before) it fell from
    # 0.05 at 512² to 0.01 at 4096², and the estimated calibration and data work with it
    from pkl_dg.bench.simulate import test_image

    def spread(n):
        p10, p50, p90 = np.percentile(test_image(n)[0], [10, 50, 90])
        return (p90 - p10) / p50

    assert spread(1024) == pytest.approx(spread(256), rel=0.2)
    assert spread(1024) > 0.04


def test_restore_timing_records_the_process_thread_count():
    import torch

    from pkl_dg.bench.common import benchmark_network
    from pkl_dg.bench.simulate import test_image
    from pkl_dg.bench.speed_restore import restore_timing

    net, _ = benchmark_network(True)
    _, y = test_image(32)
    with one_thread():
        torch.set_num_threads(2)
        r = restore_timing(net, y, steps=2, repeats=1)
        assert torch.get_num_threads() == 2  # the restore kept the count it was given
    assert r["threads"] == 2 and r["end_to_end_s"] > r["first_frame_s"] > 0


def test_real_image_rows_render_beside_the_synthetic_row(speed_json):
    from pkl_dg.bench.report_speed import real_lines

    row = {"name": "W2S 012_2", "shape": [512, 512], "threads": 2, "first_frame_s": 0.43,
           "guided_step_ms": 340.0, "guided_step_non_network_share": 0.1,
           "end_to_end_s": 3.8}
    speed = {**speed_json, "real_images": {"rows": [row]}}
    speed["sizes"] = [{**speed_json["sizes"][0], "size": 512}]
    lines = real_lines(speed)
    assert "| W2S 012_2 | 512×512 | 2 | 0.43 | 340 | 10 % | 3.8 |" in lines
    assert any(line.startswith("| synthetic test image (") for line in lines)
    skipped = real_lines({**speed_json, "real_images": {"skipped": "FileNotFoundError: x"}})
    assert "Not measured: FileNotFoundError: x." in skipped


@pytest.mark.skipif(not (REALDATA / "w2s").is_dir(), reason="needs shared/realdata (W2S, BioSR)")
def test_real_image_timing_restores_the_named_dev_images():
    from pkl_dg.bench.common import benchmark_network
    from pkl_dg.bench.speed_restore import REAL_IMAGES, real_restore_timing

    net, _ = benchmark_network(True)  # tiny network: this checks the plumbing, not speed
    with one_thread():
        rows = real_restore_timing(net, REALDATA, repeats=1, log=lambda m: None)
    assert [r["name"] for r in rows] == list(REAL_IMAGES)
    assert rows[0]["shape"] == [502, 502] and rows[1]["shape"] == [512, 512]
    for r in rows:
        assert r["end_to_end_s"] > r["first_frame_s"] > 0 and r["threads"] == 1


def test_bench_restores_keep_the_benchmark_thread_count():
    """A restore inside a benchmark runs at the benchmark's --threads: the automatic count
    would otherwise reset the process's threads for the parts that follow."""
    import torch

    from pkl_dg.bench.common import benchmark_network
    from pkl_dg.bench.speed import precision_quality

    net, _ = benchmark_network(True)
    with one_thread():
        torch.set_num_threads(2)
        precision_quality(net, smoke=True)
        assert torch.get_num_threads() == 2
