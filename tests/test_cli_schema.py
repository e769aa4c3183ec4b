"""The settings schema says when a field applies, and the CLI reads it: the PSF model
follows from the PSF flags, and a restore flag that does not apply to the chosen method /
PSF model / calibration is reported (never silently ignored)."""

from __future__ import annotations

import json

import pytest

from pkl_dg.cli import build_parser
from pkl_dg.settings import METHODS, STEP_RULES, RestoreSettings, field_specs
from pkl_dg.settings_rules import (applies, effective, is_guided, uses_prior,
                                   uses_proximal_step)


def test_applies_when_names_settings_and_their_choices():
    specs = {s.name: s for s in field_specs()}
    for spec in specs.values():
        json.dumps(spec.applies_when)  # describable as JSON
        for alt in spec.applies_when:
            for key, allowed in alt.items():
                assert set(allowed) <= set(specs[key].choices), (spec.name, key)


def test_prior_and_guidance_helpers():
    for method in METHODS:
        s = RestoreSettings(method=method)
        assert uses_prior(s) == (method != "rl") == applies("steps", s)
        assert is_guided(s) == (method in ("pkl", "anscombe", "l2")) == applies("ramp", s)
        assert applies("rl_iterations", {"method": method}) == (method == "rl")
        for rule in STEP_RULES:  # PKL's proximal step: guided, without the noise-level stop
            r = s.replace(step_rule=rule)
            assert uses_proximal_step(r) == (method == "pkl" and rule == "proximal") \
                == (is_guided(r) and not applies("discrepancy", r))


def _restore_args(*flags):
    return build_parser().parse_args(["restore", "x.tif", "-o", "y.tif", *flags])


def test_psf_model_follows_from_the_psf_flags():
    from pkl_dg.cli.restore import settings_from_args

    kinds = {("--na", "1.2"): "airy", ("--sample-ri", "1.33"): "vectorial",
             ("--psf", "p.npy"): "file", ("--psf-sigma", "1.5"): "gaussian",
             ("--pixel-size", "80"): "gaussian", ("--na", "1.2", "--sample-ri", "1.33"):
             "vectorial", ("--psf-kind", "airy", "--psf-sigma", "2"): "airy"}
    for flags, kind in kinds.items():
        assert settings_from_args(_restore_args(*flags)).psf_kind == kind, flags


def test_restore_flag_that_does_not_apply_is_reported(capsys):
    from pkl_dg.cli.restore import report_not_applied, settings_from_args

    cases = {("--method", "rl", "--samples", "4"): ["samples"],
             ("--method", "pkl", "--rl-iterations", "9", "--tv-weight", "0.01"):
                 ["rl_iterations", "tv_weight"],
             ("--method", "l2", "--lam", "0.3"): ["lam"],  # proximal rule: L2 takes λ = 1
             ("--method", "l2", "--step-rule", "poisson", "--lam", "0.3"): [],
             ("--calibration", "auto", "--gain", "3"): ["gain"],
             ("--gain", "3",): [],  # a gain given means calibrating by hand
             ("--psf-sigma", "2", "--na", "1.2", "--psf-kind", "gaussian"): ["na"],
             ("--psf-sigma-z", "2",): ["psf_sigma_z"],  # 2D mode
             # the image's sampling is recorded and written as physical size: never ignored
             ("--psf-sigma", "2", "--pixel-size", "100", "--z-step", "300"): []}
    for flags, expected in cases.items():
        args = _restore_args(*flags)
        capsys.readouterr()
        assert report_not_applied(args, settings_from_args(args)) == expected, flags
        err = capsys.readouterr().err
        for name in expected:
            assert f"pkl-dg restore: warning: --{name.replace('_', '-')} is ignored" in err
        assert bool(err) == bool(expected)
    with pytest.raises(ValueError, match=r"different PSF models \(--psf-sigma: gaussian, "
                                         r"--na: airy/vectorial\)"):  # which one is meant?
        settings_from_args(_restore_args("--psf-sigma", "2", "--na", "1.2"))
    args = _restore_args("--method", "rl", "--samples", "4")
    report_not_applied(args, settings_from_args(args))
    assert "it applies with method pkl/anscombe/l2/none (here method rl)" in \
        capsys.readouterr().err


def test_restore_records_flags_without_effect(tmp_path, capsys):
    import numpy as np
    import tifffile

    from pkl_dg.cli import main
    from pkl_dg.imageio import read_metadata

    src, out = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, np.random.default_rng(0).poisson(20, (48, 48)).astype(np.uint16))
    assert main(["restore", str(src), "-o", str(out), "--method", "rl", "--rl-iterations",
                 "2", "--steps", "5", "--calibration", "manual", "--quiet", "--threads",
                 "1"]) == 0
    assert "--steps is ignored" in capsys.readouterr().err
    assert read_metadata(out)["settings_not_applied"] == ["steps"]


def _compare_args(*flags):
    return build_parser().parse_args(["compare", "x.tif", "--png", "p.png", *flags])


def test_compare_flag_that_applies_to_no_compared_method_is_reported(capsys):
    from pkl_dg.cli.compare import report_not_applied
    from pkl_dg.cli.restore import settings_from_args
    from pkl_dg.compare import parse_methods

    cases = {("--methods", "rl,l2", "--samples", "4", "--rl-iterations", "9"): [],
             ("--methods", "rl", "--samples", "4"): ["samples"],
             ("--methods", "pkl,none", "--rl-iterations", "9", "--tv-weight", "0.01"):
                 ["rl_iterations", "tv_weight"],
             ("--methods", "l2,anscombe", "--lam", "0.3"): ["lam"],  # proximal: λ = 1
             ("--methods", "l2,pkl", "--lam", "0.3"): [],
             ("--methods", "rl,none", "--ramp", "cosine"): ["ramp"],
             ("--calibration", "auto", "--gain", "3"): ["gain"],
             ("--psf-sigma-z", "2",): ["psf_sigma_z"],  # 2D mode
             ("--method", "rl", "--methods", "pkl"): ["method"]}  # --methods chooses
    for flags, expected in cases.items():
        args = _compare_args(*flags)
        capsys.readouterr()
        ignored = report_not_applied(args, settings_from_args(args), parse_methods(args.methods))
        assert ignored == expected, flags
        err = capsys.readouterr().err
        for name in expected:
            assert f"pkl-dg compare: warning: --{name.replace('_', '-')} is ignored" in err
        assert bool(err) == bool(expected)
    args = _compare_args("--methods", "rl,none", "--ramp", "cosine")
    report_not_applied(args, settings_from_args(args), ["rl", "none"])
    assert "it applies with method pkl/anscombe/l2 (here method rl/none)" in \
        capsys.readouterr().err


def test_compare_warns_before_it_runs(tmp_path, capsys):
    import numpy as np
    import tifffile

    from pkl_dg.cli import main

    src, png = tmp_path / "in.tif", tmp_path / "panel.png"
    tifffile.imwrite(src, np.random.default_rng(0).poisson(20, (48, 48)).astype(np.uint16))
    assert main(["compare", str(src), "--png", str(png), "--methods", "rl", "--rl-iterations",
                 "2", "--samples", "3", "--calibration", "manual", "--threads", "1"]) == 0
    assert "pkl-dg compare: warning: --samples is ignored" in capsys.readouterr().err
    assert png.exists()


def test_a_result_records_only_the_settings_that_had_an_effect(tmp_path):
    """A PSF file chosen, then the Gaussian model: the file is not what the run used, so the
    result's metadata does not name it (the widget keeps it for when 'file' comes back)."""
    import numpy as np

    from pkl_dg import restore_iter

    left_over = RestoreSettings(psf_kind="file", psf_path="beads.tif", na=1.2).replace(
        psf_kind="gaussian", method="rl", rl_iterations=3, steps=25)
    used = effective(left_over)
    default = RestoreSettings()
    assert (used.psf_path, used.na, used.steps) == (default.psf_path, default.na, default.steps)
    assert (used.psf_kind, used.method, used.rl_iterations) == ("gaussian", "rl", 3)
    assert all(applies(f.name, left_over) == (getattr(used, f.name) == getattr(left_over, f.name))
               for f in field_specs() if getattr(left_over, f.name) != f.default)
    sampled = effective(left_over.replace(pixel_size_nm=80.0, z_step_nm=200.0))
    assert (sampled.pixel_size_nm, sampled.z_step_nm) == (80.0, 200.0)  # the image's own
    assert effective(used) == used and effective(default) == default

    y = np.random.default_rng(0).poisson(20, (32, 32)).astype(np.float32)
    meta = restore_iter(y, left_over, calibration="manual").finish().metadata
    assert meta["settings"]["psf_path"] == "" and meta["settings"]["rl_iterations"] == 3
    assert RestoreSettings.from_dict(meta["settings"]) == used.replace(calibration="manual")
