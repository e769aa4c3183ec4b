"""The widefield PSF from the optics (vectorial model with Gibson–Lanni aberrations, through
psfmodels): known FWHMs, aberration with depth, and its place in schema, CLI and widget."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from pkl_dg import RestoreSettings
from pkl_dg.physics import airy_psf, fwhm_of
from pkl_dg.physics.optics_psf import axial_fwhm_nm, widefield_psf
from pkl_dg.psf_source import psf_from_settings

pytest.importorskip("psfmodels")


def _profiles(p):
    c = [n // 2 for n in p.shape]
    return p[:, c[1], c[2]], p[c[0], c[1], :]


def test_known_fwhm_of_an_air_objective():
    """NA 0.8 dry objective at 520 nm: lateral ≥ the scalar Airy FWHM 0.51λ/NA (332 nm) and
    within 10 % of it (the vectorial model is a little wider); axial 0.88λ/(n − √(n² − NA²))
    = 1144 nm within 5 %."""
    p = widefield_psf(0.8, 520, 40, z_step_nm=100, planes=37, immersion_ri=1.0,
                      sample_ri=1.0)
    axial, lateral = _profiles(p)
    airy = airy_psf(0.8, 520, 40)
    airy_fwhm = fwhm_of(airy[airy.shape[0] // 2]) * 40
    lat = fwhm_of(lateral) * 40
    assert airy_fwhm <= lat <= 1.1 * 0.51 * 520 / 0.8, (lat, airy_fwhm)
    assert abs(fwhm_of(axial) * 100 / axial_fwhm_nm(0.8, 520, 1.0) - 1) < 0.05
    assert abs(p.sum() - 1) < 1e-5 and p.dtype == np.float32


def test_oil_objective_into_water_is_aberrated_with_depth():
    kw = dict(z_step_nm=100, planes=41, immersion_ri=1.515, sample_ri=1.33, max_side=101)
    shallow = widefield_psf(1.2, 520, 65, depth_nm=0, **kw)
    deep = widefield_psf(1.2, 520, 65, depth_nm=10000, **kw)
    a0, a1 = _profiles(shallow)[0], _profiles(deep)[0]
    assert fwhm_of(a1) > 1.5 * fwhm_of(a0)  # spherical aberration lengthens it
    assert np.argmax(a1) != np.argmax(a0)  # and shifts the focus


def test_vectorial_source_in_schema_2d_and_3d():
    s = RestoreSettings(psf_kind="vectorial", na=1.4, pixel_size_nm=65)
    built = psf_from_settings(s, (128, 128))
    psf2, info = built.kernel, built.info
    assert psf2.ndim == 2 and info["source"] == "vectorial"
    assert info["optics"]["immersion_ri"] == 1.515
    s3 = s.replace(mode="3d", z_step_nm=150.0)
    built = psf_from_settings(s3, (21, 128, 128))
    psf3, info3 = built.kernel, built.info
    assert psf3.ndim == 3 and psf3.shape[0] == 21 and info3["spacing_nm"] == [150.0, 65, 65]
    with pytest.raises(ValueError, match="Z step"):
        psf_from_settings(s.replace(mode="3d"), (21, 128, 128))


def test_a_3d_widefield_psf_covers_the_stack_so_the_haze_is_deconvolved(monkeypatch):
    """A widefield PSF spreads about the same light into every plane: the 3D kernel spans
    the stack's depth with that light kept, and a bead's out-of-focus haze (half of its
    light, in planes 4 or more from focus) goes back into the bead. A kernel cut to the
    5 planes around focus (the old extent) explains the haze as in-focus light: it stays."""
    import torch

    import pkl_dg.physics.optics_psf as optics
    from pkl_dg.physics import PSFConvolution
    from pkl_dg.restoration import restore

    s = RestoreSettings(psf_kind="vectorial", na=1.4, pixel_size_nm=100, mode="3d",
                        z_step_nm=300.0)
    shape = (15, 48, 48)
    kernel = psf_from_settings(s, shape).kernel
    light = kernel.sum(axis=(1, 2))
    assert kernel.shape[0] == 15 and light.min() > 0.5 * light.max()
    bead = np.zeros(shape)
    bead[7, 24, 24] = 2e5
    blurred = PSFConvolution(kernel).A(torch.from_numpy(bead)).numpy() + 0.5
    y = np.random.default_rng(0).poisson(blurred).astype(np.float32)

    def far(v):  # share of the light 4 or more planes from the bead's
        return float(v[np.r_[0:4, 11:15]].sum() / v.sum())

    run = dict(settings=s, method="rl", rl_iterations=50, calibration="manual", gain=1.0,
               offset=0.0, background=0.5)
    assert far(y - 0.5) > 0.4
    assert far(restore(y, **run)) < 0.02
    monkeypatch.setattr(optics, "auto_planes", lambda *args: 5)
    assert far(restore(y, **run)) > 0.4


def test_vectorial_from_the_cli(tmp_path):
    from pkl_dg.cli import main
    from pkl_dg.imageio import read_metadata

    rng = np.random.default_rng(0)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, rng.poisson(5, (64, 64)).astype(np.uint16))
    out = tmp_path / "out.tif"
    assert main(["restore", str(src), "-o", str(out), "--psf-kind", "vectorial", "--na",
                 "0.9", "--immersion-ri", "1.0", "--sample-ri", "1.0", "--pixel-size", "100",
                 "--method", "rl", "--rl-iterations", "2", "--quiet", "--threads", "1"]) == 0
    meta = read_metadata(out)
    assert meta["psf"]["source"] == "vectorial" and meta["settings"]["psf_kind"] == "vectorial"


def test_vectorial_source_in_the_widget_core():
    from pkl_dg.napari.state import PSF_SOURCES
    from pkl_dg.napari.worker import PsfRequest, resolve_psf

    assert "vectorial" in PSF_SOURCES
    _raw, psf, settings, _notes = resolve_psf(RestoreSettings(na=1.2), PsfRequest("vectorial"),
                                              (96, 96))
    assert settings.psf_kind == "vectorial" and psf.ndim == 2
