"""PSF model "none": no blur, a one-pixel PSF, so a run only denoises.

It is the same kernel a supplied ``np.ones((1, 1))`` array (or a 1×1 ``--psf`` file) is
cleaned into, so every method gives the same numbers with either.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest
import torch

from pkl_dg.cli import main
from pkl_dg.imageio import read_metadata
from pkl_dg.psf_source import NO_BLUR, psf_from_settings
from pkl_dg.restoration import restore, restore_iter
from pkl_dg.settings import PSF_KINDS, RestoreSettings, field_specs
from pkl_dg.settings_rules import applies

torch.set_num_threads(1)


def _noisy(shape=(32, 32), seed=0) -> np.ndarray:
    """Poisson counts (mean 5–45 photons) of a smooth synthetic object, float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[-2], :shape[-1]]
    obj = 25 + 20 * np.sin(xx / 4.0) * np.cos(yy / 5.0)
    return rng.poisson(np.broadcast_to(obj, shape)).astype(np.float32)


@pytest.mark.parametrize("mode, shape", [("2d", (1, 1)), ("3d", (1, 1, 1))])
def test_the_kernel_is_one_pixel(mode, shape):
    psf = psf_from_settings(RestoreSettings(psf_kind="none", mode=mode), (4, 16, 16))
    assert psf.kernel.shape == shape and psf.kernel.dtype == np.float32
    assert psf.kernel.ravel().tolist() == [1.0]
    assert psf.source == NO_BLUR and psf.info["kernel_shape"] == list(shape)
    ones = psf_from_settings(RestoreSettings(psf_kind="array", mode=mode), (4, 16, 16),
                             np.ones(shape))
    assert np.array_equal(psf.kernel, ones.kernel)


def test_no_optics_setting_applies():
    s = RestoreSettings(psf_kind="none")
    assert "none" in PSF_KINDS and RestoreSettings.from_dict({"psf_kind": "none"}) == s
    psf_fields = [f.name for f in field_specs() if f.group == "PSF" and f.name != "psf_kind"]
    assert [n for n in psf_fields if applies(n, s)] == []
    assert [n for n in psf_fields if applies(n, s.replace(mode="3d"))] == ["z_step_nm"]


def test_same_numbers_as_a_one_pixel_array(constant_denoiser):
    y = _noisy()
    kw = dict(method="pkl", steps=2, samples=1, seed=3, denoiser=constant_denoiser)
    a = restore(y, psf_kind="none", **kw)
    b = restore(y, psf=np.ones((1, 1)), psf_kind="array", **kw)
    assert np.array_equal(a, b) and not np.array_equal(a, y)
    rl = dict(method="rl", rl_iterations=5)
    assert np.array_equal(restore(y, psf_kind="none", **rl),
                          restore(y, psf=np.ones((1, 1)), psf_kind="array", **rl))


def test_richardson_lucy_returns_the_data():
    """With no blur RL's update is x·y/(x + b): with no background b it returns the data
    (x·y/x = y); with the estimated background it converges to the data less it."""
    from pkl_dg.physics.psf_cleaning import PSFWarning

    y = _noisy(seed=1)
    assert y.min() > 0
    # and says so: "done in 0.0 s" with the input back, without a word, puzzled a user
    with pytest.warns(PSFWarning, match="nothing to deconvolve"):
        result = restore_iter(y, psf_kind="none", method="rl", rl_iterations=3,
                              background=0, calibration="manual").finish()
    np.testing.assert_allclose(result.image, y, rtol=1e-5)
    assert result.metadata["psf"]["source"] == NO_BLUR
    result = restore_iter(y, psf_kind="none", method="rl", rl_iterations=40,
                          calibration="manual").finish()
    b = result.metadata["background_photons"]
    assert b > 0
    well_above = y > 3 * b  # converges as (b / y) per iteration
    np.testing.assert_allclose(result.image[well_above], (y - b)[well_above], rtol=1e-3)


def test_3d_run(constant_denoiser):
    y = _noisy((3, 16, 16), seed=2)
    kw = dict(mode="3d", method="pkl", steps=2, samples=1, seed=0, calibration="manual",
              denoiser=constant_denoiser)
    a = restore(y, psf_kind="none", **kw)
    b = restore(y, psf=np.ones((1, 1, 1)), psf_kind="array", **kw)
    assert a.shape == y.shape and np.array_equal(a, b)


def test_cli_psf_kind_none(tmp_path, capsys):
    import tifffile

    src, out = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, _noisy().astype(np.uint16))
    assert main(["restore", str(src), "-o", str(out), "--psf-kind", "none", "--method", "rl",
                 "--rl-iterations", "2", "--psf-sigma", "2", "--quiet", "--threads", "1"]) == 0
    meta = read_metadata(out)
    assert meta["settings"]["psf_kind"] == "none" and meta["psf"]["source"] == NO_BLUR
    assert meta["psf"]["kernel_shape"] == [1, 1]
    assert "--psf-sigma is ignored" in capsys.readouterr().err
    np.save(tmp_path / "delta.npy", np.ones((1, 1)))
    assert main(["restore", str(src), "-o", str(tmp_path / "delta.tif"), "--psf",
                 str(tmp_path / "delta.npy"), "--method", "rl", "--rl-iterations", "2",
                 "--quiet", "--threads", "1"]) == 0
    assert np.array_equal(tifffile.imread(out), tifffile.imread(tmp_path / "delta.tif"))


@pytest.mark.gui
@pytest.mark.skipif(not (find_spec("napari") and find_spec("pytestqt")),
                    reason="needs napari and pytest-qt")
def test_widget_offers_it(make_napari_viewer, napari_config_dir):
    """The "PSF from" combo offers it (needs a display: run under xvfb-run)."""
    from pkl_dg.napari.state import PSF_SOURCES, WidgetState
    from pkl_dg.napari.worker import PsfRequest, resolve_psf

    _dock, widget = make_napari_viewer().window.add_plugin_dock_widget(
        "napari-pkl-dg", "PKL Deconvolution")
    combo = widget.psf_source
    assert "none" in combo.choices
    assert "None (denoise only)" in [combo.native.itemText(i) for i in range(combo.native.count())]
    widget.psf_source.value = "none"
    state = widget.current_state()
    assert state.settings.psf_kind == "none" and PSF_SOURCES["none"]
    assert WidgetState.from_dict(state.to_dict()).psf_source == "none"
    assert all(widget.controls[n].native.isHidden() for n in ("psf_sigma", "na", "psf_path"))
    psf, kernel, settings, _notes = resolve_psf(state.settings, PsfRequest("none"), (32, 32))
    assert kernel.shape == (1, 1) and settings.psf_kind == "none" and psf.source == NO_BLUR


def test_every_psf_source_has_its_own_description_and_the_cli_offers_no_array(capsys):
    from pkl_dg.napari.psf_sources import describe_psf
    from pkl_dg.napari.state import PSF_SOURCES

    descs = {k: describe_psf(RestoreSettings(), k) for k in PSF_SOURCES}
    assert descs["none"].startswith("none") and descs["beads"] == "beads"
    assert len(set(descs.values())) == len(descs)
    with pytest.raises(ValueError, match="unknown PSF source"):
        describe_psf(RestoreSettings(), "nonsense")
    with pytest.raises(SystemExit):
        main(["restore", "in.tif", "-o", "o.tif", "--psf-kind", "array"])
    assert "invalid choice: 'array'" in capsys.readouterr().err
