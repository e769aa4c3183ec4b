import csv
import json
import warnings

import numpy as np
import pytest
import tifffile
import torch

from pkl_dg.cli import main
from pkl_dg.calibration import Calibration
from pkl_dg.compare import (METRIC_COLUMNS, METRIC_HEADERS, compare_iter, metrics_table,
                            parse_methods, pearson_residual, result_residual)
from pkl_dg.guidance.stopping import ModelMismatchWarning
from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
from pkl_dg.restoration import RestoreResult
from pkl_dg.saturation import SaturationWarning
from pkl_dg.settings import RestoreSettings


def test_pearson_residual_of_truth_is_standard_normal():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 50, (128, 128)).astype(np.float32)
    x[40:60, 30:90] += 300  # bright structure
    s = RestoreSettings(psf_sigma=1.5, background=5.0, calibration="manual")
    fm = ForwardModel(PSFConvolution(gaussian_psf(1.5)), 5.0)
    y = rng.poisson(fm.mean(torch.from_numpy(x)).numpy()).astype(np.float32)
    r = pearson_residual(y, x, s)
    assert r.shape == y.shape and r.dtype == np.float32
    assert abs(r.mean()) < 0.03 and abs(r.std() - 1) < 0.03
    # a result that invents a structure shows it in the residual
    wrong = x.copy()
    wrong[90:100, 90:100] += 200
    rw = pearson_residual(y, wrong, s)
    assert rw[90:100, 90:100].mean() < -3 and abs(rw[:60, :60].mean()) < 0.1
    with pytest.raises(ValueError, match="background"):
        pearson_residual(y, x, RestoreSettings(calibration="manual"))
    with pytest.raises(ValueError, match="calibration is 'auto'"):  # no silent gain 1
        pearson_residual(y, x, RestoreSettings(background=5.0))


def _camera_image(rng, gain=0.4, offset=100.0, read_noise=3.0, background=5.0):
    """A known object, its photon image through a σ 1.5 px blur with a background, read
    noise, and the camera's ADU = offset + electrons / gain (gain e⁻/ADU)."""
    x = rng.uniform(0, 30, (96, 96)).astype(np.float32)
    x[30:45, 20:80] += 400
    fm = ForwardModel(PSFConvolution(gaussian_psf(1.5)), background)
    electrons = rng.poisson(fm.mean(torch.from_numpy(x)).numpy()) + \
        rng.normal(0, read_noise, x.shape)
    return x, (offset + electrons / gain).astype(np.float32)


def test_the_residual_uses_the_runs_calibration_background_and_pedestal():
    """With calibration 'auto' (the default) the settings hold gain 1, offset 0: the
    residual compared raw ADU with photon predictions (W2S: mean 223, std 948). It takes
    the calibration, background and read noise the run recorded."""
    rng = np.random.default_rng(3)
    gain, offset, rn = 0.4, 100.0, 3.0
    x, adu = _camera_image(rng, gain, offset, rn)
    s = RestoreSettings(psf_sigma=1.5)  # calibration and background 'auto'
    meta = {"calibration": Calibration(gain, offset, rn, source="estimated").to_dict(),
            "background_photons": 5.0}
    r = result_residual(adu, RestoreResult(x, s, meta))
    assert abs(r.mean()) < 0.05 and abs(r.std() - 1) < 0.05
    # the run's read-noise pedestal (negative data) replaces s² = read noise²
    meta["negative_values"] = {"pedestal_photons": 400.0}
    assert result_residual(adu, RestoreResult(x, s, meta)).std() < 0.8
    with pytest.raises(ValueError, match="background_photons"):
        result_residual(adu, RestoreResult(x, s, {"calibration": meta["calibration"]}))


def test_a_run_with_the_automatic_calibration_explains_its_camera_data():
    """The same through a real run ('auto' calibration and background, estimated from the
    ADU image): Richardson–Lucy's result is ≈ N(0, 1) with what the run estimated (it was
    mean 108, std 42 with the settings' gain 1 and offset 0)."""
    _, adu = _camera_image(np.random.default_rng(4))
    result = compare_iter(adu, ["rl"], psf_sigma=1.5).finish().results["rl"]
    assert result.metadata["calibration"]["source"] == "estimated"
    r = result_residual(adu, result)
    assert abs(r.mean()) < 0.3 and abs(r.std() - 1) < 0.2


def test_saturated_pixels_are_left_out_of_the_residual_as_in_the_run():
    """An integer image's pixels at its dtype's maximum were left out of the run's fit:
    they are NaN in the residual, not a large negative misfit."""
    rng = np.random.default_rng(5)
    x = np.full((64, 64), 20.0, np.float32)
    x[28:36, 28:36] = 2000
    fm = ForwardModel(PSFConvolution(gaussian_psf(1.5)), 2.0)
    counts = rng.poisson(fm.mean(torch.from_numpy(x)).numpy())
    img = np.clip(counts, 0, 255).astype(np.uint8)
    s = RestoreSettings(psf_sigma=1.5, calibration="manual", background=2.0)
    r = pearson_residual(img, x, s)
    assert np.array_equal(np.isnan(r), img == 255) and (img == 255).sum() > 10
    assert abs(np.nanmean(r)) < 0.1


def test_compare_streams_every_method_with_the_same_seed(scene, constant_denoiser):
    _, y, _, _ = scene
    seen = {}
    gen = compare_iter(y, ["rl", "pkl", "none"], steps=3, rl_iterations=4, psf_sigma=1.5,
                       denoiser=constant_denoiser)
    while True:
        try:
            m, rec = next(gen)
        except StopIteration as stop:
            comp = stop.value
            break
        seen.setdefault(m, []).append(rec.index)
    # PKL: 3 steps and the final denoising pass; the unguided prior has no final pass
    assert seen == {"rl": [1, 2, 3, 4], "pkl": [1, 2, 3, 4], "none": [1, 2, 3]}
    assert set(comp.results) == {"rl", "pkl", "none"}
    assert all(r.settings.seed == 0 for r in comp.results.values())
    assert len(comp.misfit["pkl"]) == 4  # the final pass repeats the last misfit


def test_metrics_table_ranks_sharper_results_higher(scene):
    x, y, _, _ = scene
    from pkl_dg import restore

    rows = metrics_table({"input": y, "rl": restore(y, method="rl", rl_iterations=30,
                                                    psf_sigma=1.5)}, x, pixel_size_nm=65.0)
    by = {r["method"]: r for r in rows}
    assert by["Richardson–Lucy"]["psnr_db"] > by["input"]["psnr_db"]
    assert by["Richardson–Lucy"]["frc_px"] <= by["input"]["frc_px"]
    assert by["input"]["frc_nm"] == pytest.approx(by["input"]["frc_px"] * 65.0)


def test_a_nan_border_is_left_out_of_the_scores_and_the_residual(scene, tmp_path):
    """A registered image's NaN border: restored, scored on the measured rectangle (the
    same scores as the images cropped to it), the residual NaN only where μ needs an
    unmeasured pixel; missing pixels inside the image are refused with a clear message."""
    from pkl_dg import restore_iter
    from pkl_dg.compare import write_csv

    x, y, _, _ = scene
    holed = y.copy()
    holed[:, :6] = np.nan
    holed[-3:, :] = np.nan
    res = restore_iter(holed, method="rl", rl_iterations=10, psf_sigma=1.5).finish()
    assert np.isnan(res.image[:, :6]).all() and np.isfinite(res.image[:-3, 6:]).all()
    rows = metrics_table({"rl": res.image}, x, measurement=holed)
    h, w = y.shape
    assert all(r["scored_region"] == f"rows 0–{h - 4}, columns 6–{w - 1} of {h}×{w} "
               "(the NaN border left out)" for r in rows)
    cropped = metrics_table({"rl": res.image[:-3, 6:]}, x[:-3, 6:],
                            measurement=holed[:-3, 6:])
    for a, b in zip(rows, cropped):
        assert a["psnr_db"] == b["psnr_db"] and a["ssim"] == b["ssim"]
        assert a["frc_px"] == b["frc_px"] and np.isfinite(a["psnr_db"])
    write_csv(rows, tmp_path / "m.csv")
    with open(tmp_path / "m.csv", encoding="utf-8") as fh:
        assert next(csv.DictReader(fh))["scored_region"] == rows[0]["scored_region"]
    r = result_residual(holed, res)
    reach = PSFConvolution(gaussian_psf(1.5)).radius[0]
    assert np.isnan(r[:, :6 + reach]).all() and np.isnan(r[-3 - reach:]).all()
    assert np.isfinite(r[:-3 - reach, 6 + reach:]).all()
    assert abs(float(np.mean(r[:-3 - reach, 6 + reach:]))) < 1.0
    inside = y.copy()
    inside[15:30, 15:30] = np.nan  # a hole, not a border
    with pytest.raises(ValueError, match="inside the image"):
        metrics_table({"rl": inside}, x)


def test_a_comparison_says_each_shared_warning_once():
    """Every method saw the same data: the model-mismatch warning of RL's automatic stop
    came once per method that runs it (twice on BioSR), the saturation warning once per
    method. Each is said once per comparison."""
    rng = np.random.default_rng(0)
    x = np.zeros((48, 48), np.float32)
    x[rng.integers(4, 44, 30), rng.integers(4, 44, 30)] = 3000
    fm = ForwardModel(PSFConvolution(gaussian_psf(0.7)), 2.0)
    y = rng.poisson(fm.mean(torch.from_numpy(x)).numpy()).astype(np.uint16)
    y[2, 2] = y[2, 45] = np.iinfo(np.uint16).max  # two saturated pixels
    zero = lambda a, t: 0 * a  # noqa: E731 (an ε-network that predicts no noise)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare_iter(y, ["rl", "pkl"], psf_sigma=2.5, steps=2, samples=1,
                     calibration="manual", denoiser=zero).finish()
    kinds = [w.category for w in caught]
    assert kinds.count(ModelMismatchWarning) == 1 and kinds.count(SaturationWarning) == 1


def test_metric_headers_are_readable_with_units():
    assert [METRIC_HEADERS[k] for k in METRIC_COLUMNS] == [
        "method", "PSNR (dB)", "SSIM", "NRMSE", "FRC (px)", "FRC (nm)", "time (s)"]


def test_parse_methods():
    assert parse_methods("RL, pkl,rl") == ["rl", "pkl"]
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("rl,magic")


def test_compare_cli_writes_csv_and_png(tmp_path, scene, monkeypatch):
    import pkl_dg.compare

    titles = []
    render = pkl_dg.compare.render_panel
    monkeypatch.setattr(pkl_dg.compare, "render_panel",
                        lambda *a, **kw: (titles.append(kw.get("title")), render(*a, **kw)))
    x, y, _, _ = scene
    inp, gt = tmp_path / "in.tif", tmp_path / "gt.tif"
    tifffile.imwrite(inp, y)
    tifffile.imwrite(gt, x)
    out_csv, out_png = tmp_path / "m.csv", tmp_path / "p.png"
    rc = main(["compare", str(inp), "--gt", str(gt), "--methods", "rl", "--rl-iterations",
               "5", "--psf-sigma", "1.5", "--csv", str(out_csv), "--png", str(out_png)])
    assert rc == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["method"] for r in rows] == ["input", "Richardson–Lucy"]  # with its baseline
    assert rows[0]["seconds"] == "" and float(rows[1]["psnr_db"]) > float(rows[0]["psnr_db"])
    assert float(rows[1]["psnr_db"]) > 10 and 0 < float(rows[1]["ssim"]) <= 1
    # every row says what it was measured on (two exports could not be told apart)
    assert rows[1]["input"] == "in.tif" and rows[1]["ground_truth"] == "gt.tif"
    assert rows[1]["psf"].startswith("gaussian PSF, FWHM 3.61")
    shared = json.loads(rows[1]["settings"])
    assert shared["rl_iterations"] == 5 and "method" not in shared
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the figure names the PSF the methods ran with (it gave the file's name only)
    assert titles == ["in.tif · gaussian PSF, FWHM 3.61 × 3.61 px"]
    assert main(["compare", str(inp), "--methods", "rl", "--csv", str(out_csv)]) == 2


def test_compare_cli_takes_the_pixel_size_the_file_states(tmp_path, scene):
    """An Airy PSF and the FRC in nm use the pixel size of the input file (42.6137 nm), not
    the default 65 nm, when --pixel-size is not given."""
    x, y, _, _ = scene
    inp, gt = tmp_path / "in.tif", tmp_path / "gt.tif"
    tifffile.imwrite(inp, y.astype(np.float32), imagej=True,
                     resolution=(1 / 0.0426137, 1 / 0.0426137), metadata={"unit": "um"})
    tifffile.imwrite(gt, x)
    out_csv = tmp_path / "m.csv"
    assert main(["compare", str(inp), "--gt", str(gt), "--methods", "rl", "--rl-iterations",
                 "3", "--na", "1.4", "--wavelength", "520", "--csv", str(out_csv)]) == 0
    row = next(csv.DictReader(out_csv.open()))
    assert float(row["frc_nm"]) == pytest.approx(float(row["frc_px"]) * 42.6137, rel=1e-4)


def test_compare_cli_refuses_a_stack_up_front_and_times_every_method(tmp_path, scene, capsys):
    """A stack used to run every method and then fail in the scoring; an automatic RL count
    (it ends before its announced total) left RL's time blank."""
    x, y, _, _ = scene
    stack, gt = tmp_path / "stack.tif", tmp_path / "gt.tif"
    tifffile.imwrite(stack, np.stack([y, y]))
    tifffile.imwrite(gt, x)
    out_csv = tmp_path / "m.csv"
    assert main(["compare", str(stack), "--methods", "rl", "--png", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "compare takes one 2D image" in err and "done in" not in err
    plane = tmp_path / "plane.tif"
    tifffile.imwrite(plane, y)
    assert main(["compare", str(plane), "--gt", str(tmp_path / "none.tif"), "--methods", "rl",
                 "--csv", str(out_csv)]) == 2
    assert "ground truth not found" in capsys.readouterr().err
    assert main(["compare", str(plane), "--gt", str(gt), "--methods", "rl,l2", "--steps", "2",
                 "--samples", "1", "--csv", str(out_csv)]) == 0
    rows = {r["method"]: r for r in csv.DictReader(out_csv.open())}
    assert float(rows["Richardson–Lucy"]["seconds"]) > 0 and float(rows["L2"]["seconds"]) > 0
    err = capsys.readouterr().err
    assert "rl: done in" in err and "l2: done in" in err


def test_compare_cli_gives_the_frc_in_nm_whenever_the_pixel_size_is_known(tmp_path, scene,
                                                                          capsys):
    """Not only with an Airy PSF: a file that states its pixel size, or --pixel-size, gives
    the FRC in nm with a Gaussian PSF too; a file that states none gives none. --quiet
    leaves out the per-method lines."""
    x, y, _, _ = scene
    stated, bare, gt = tmp_path / "stated.tif", tmp_path / "bare.tif", tmp_path / "gt.tif"
    tifffile.imwrite(stated, y.astype(np.float32), imagej=True,
                     resolution=(1 / 0.0426137, 1 / 0.0426137), metadata={"unit": "um"})
    tifffile.imwrite(bare, y.astype(np.float32))
    tifffile.imwrite(gt, x)
    out_csv = tmp_path / "m.csv"
    flags = ["--gt", str(gt), "--methods", "rl", "--rl-iterations", "3", "--psf-sigma", "1.5",
             "--csv", str(out_csv), "--overwrite", "--quiet"]
    capsys.readouterr()
    assert main(["compare", str(stated), *flags]) == 0
    row = next(csv.DictReader(out_csv.open()))
    assert float(row["frc_nm"]) == pytest.approx(float(row["frc_px"]) * 42.6137, rel=1e-4)
    assert "done in" not in capsys.readouterr().err
    assert main(["compare", str(bare), *flags]) == 0
    assert next(csv.DictReader(out_csv.open()))["frc_nm"] == ""
    assert main(["compare", str(bare), *flags, "--pixel-size", "80"]) == 0
    row = next(csv.DictReader(out_csv.open()))
    assert float(row["frc_nm"]) == pytest.approx(float(row["frc_px"]) * 80.0, rel=1e-4)
