"""The PSF value object (issue 17 step 2): built once per run from its source, passed down,
its description unchanged; ``physics`` takes arrays and numbers, never the settings."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pkl_dg.physics import gaussian_psf, gaussian_psf_3d
from pkl_dg.psf_source import PSF, psf_from_settings
from pkl_dg.restoration import restore_iter
from pkl_dg.settings import RestoreSettings

HERE = Path(__file__).resolve().parent
PHYSICS = HERE.parents[0] / "src" / "pkl_dg" / "physics"
#: the ``psf`` metadata the settings-reading ``physics.build_psf_info`` wrote for these
#: cases before the PSF object replaced it (``{path}``: the PSF file)
GOLDEN = json.loads((HERE / "psf_info_golden.json").read_text(encoding="utf-8"))


def _cases(psf_file: Path) -> dict[str, tuple[RestoreSettings, tuple[int, ...], object]]:
    raw = gaussian_psf(1.3, 2.1, size=15) * 1000 + 5
    raw3 = gaussian_psf_3d(1.2, 0.8) * 1000 + 3
    np.save(psf_file, raw)
    return {
        "gaussian": (RestoreSettings(psf_sigma=1.7, psf_sigma_y=2.2, psf_pixel_size_nm=40),
                     (64, 64), None),
        "airy": (RestoreSettings(psf_kind="airy", na=1.2, wavelength_nm=600,
                                 pixel_size_nm=80), (64, 64), None),
        "file": (RestoreSettings(psf_kind="file", psf_path=str(psf_file),
                                 psf_pixel_size_nm=50), (64, 64), None),
        "array": (RestoreSettings(psf_kind="array", psf_z_step_nm=100), (64, 64), raw),
        "array_3d_resampled": (RestoreSettings(mode="3d", psf_kind="array", z_step_nm=200,
                                               psf_z_step_nm=150, psf_pixel_size_nm=60),
                               (11, 40, 40), raw3),
        "gaussian_3d": (RestoreSettings(mode="3d", psf_sigma_z=1.1), (11, 40, 40), None),
    }


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_psf_info_is_the_metadata_the_settings_reader_wrote(name, tmp_path):
    """For every source the PSF object's info is the ``psf`` metadata of before, and a
    restore records exactly that info."""
    s, shape, array = _cases(tmp_path / "psf.npy")[name]
    expected = json.loads(json.dumps(GOLDEN[name]).replace("{path}", str(tmp_path / "psf.npy")))
    psf = psf_from_settings(s, shape, array)
    assert psf.info == expected
    assert psf.kernel.dtype == np.float32 and list(psf.kernel.shape) == expected["kernel_shape"]
    assert abs(float(psf.kernel.sum()) - 1) < 1e-5
    image = np.full(shape, 20.0, np.float32)
    result = restore_iter(image, s, psf=array, method="rl", rl_iterations=1,
                          calibration="manual").finish()
    assert result.metadata["psf"] == expected
    assert result.metadata["psf"] is not psf.info  # a copy: results may change theirs


@pytest.fixture
def builds(monkeypatch):
    """How many PSF objects were built (every build ends in ``PSF.__post_init__``)."""
    count = {"n": 0}
    check = PSF.__post_init__

    def counting(self):
        count["n"] += 1
        check(self)
    monkeypatch.setattr(PSF, "__post_init__", counting)
    return count


def test_restore_and_compare_build_the_psf_once(builds):
    from pkl_dg.compare import compare_iter, pearson_residual

    image = np.random.default_rng(0).poisson(20, (48, 48)).astype(np.float32)
    kw = dict(method="rl", rl_iterations=2, calibration="manual")
    restore_iter(image, **kw).finish()
    assert builds["n"] == 1
    restore_iter(image, psf=gaussian_psf(1.4), **kw).finish()
    assert builds["n"] == 2
    psf = psf_from_settings(RestoreSettings(psf_sigma=1.2), image.shape)
    assert builds["n"] == 3
    result = restore_iter(image, psf=psf, psf_sigma=1.2, **kw).finish()  # taken as it is
    assert builds["n"] == 3 and result.metadata["psf"] == psf.info
    s = RestoreSettings(rl_iterations=2, calibration="manual", background=1.0, steps=1,
                        samples=1)
    zero = lambda x, t: 0 * x  # noqa: E731 (an ε-network that predicts no noise)
    comparison = compare_iter(image, ["rl", "none"], s, denoiser=zero).finish()
    assert builds["n"] == 4 and len(comparison.results) == 2  # one PSF for both methods
    compare_iter(image, ["rl", "none"], s, psf=psf, denoiser=zero).finish()
    assert builds["n"] == 4
    pearson_residual(image, comparison.results["rl"].image, s, psf=psf)
    assert builds["n"] == 4


def test_the_napari_runs_build_the_psf_once(builds):
    """A restoration and a comparison in the widgets' worker: one PSF each, from the
    widget's source, shared by the operator cache and every method."""
    from pkl_dg.napari.worker import (ModelCache, OperatorCache, PsfRequest,
                                      comparison_frames, restoration_frames)

    def drain(frames):
        while True:
            try:
                next(frames)
            except StopIteration as stop:
                return stop.value

    image = np.random.default_rng(1).poisson(20, (48, 48)).astype(np.float32)
    s = RestoreSettings(method="rl", rl_iterations=2, calibration="manual")
    layer = PsfRequest("layer", gaussian_psf(1.3, 1.8), layer_name="psf")
    result = drain(restoration_frames(image, s, layer, OperatorCache(), ModelCache()))
    assert builds["n"] == 1 and result.metadata["napari"]["psf"] == result.metadata["psf"]
    run = drain(comparison_frames(image, ["rl", "none"], s.replace(steps=1, samples=1),
                                  PsfRequest("gaussian"), OperatorCache(), ModelCache(),
                                  denoiser=lambda x, t: 0 * x))
    assert builds["n"] == 2 and isinstance(run.psf, PSF) and run.psf.source == "gaussian"
    assert all(r.metadata["psf"] == run.psf.info for r in run.comparison.results.values())


def test_a_batch_task_builds_the_psf_once(builds, tmp_path):
    from pkl_dg.batch.worker import plane_statistics, restore_task

    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.random.default_rng(2).poisson(20, (64, 64)).astype(np.uint16))
    s = RestoreSettings(method="rl", calibration="manual", threads=1).to_dict()
    stats = plane_statistics(str(path), (), s, threads=1)  # background and automatic RL count
    assert builds["n"] == 1
    restore_task(str(path), (), s, (0, 40, 0, 40), stats, threads=1)
    assert builds["n"] == 2


def test_a_psf_object_is_checked_against_the_run():
    image2, image3 = np.full((32, 32), 10.0, np.float32), np.full((9, 32, 32), 10.0, np.float32)
    flat = psf_from_settings(RestoreSettings(psf_sigma=1.0))
    with pytest.raises(ValueError, match="2D PSF cannot restore in 3d mode"):
        restore_iter(image3, psf=flat, mode="3d", method="rl", rl_iterations=1).finish()
    wide = psf_from_settings(RestoreSettings(psf_sigma=5.0))
    with pytest.raises(ValueError, match="larger than the image"):
        restore_iter(image2[:20, :20], psf=wide, method="rl", rl_iterations=1).finish()
    with pytest.raises(TypeError, match="float32"):
        PSF(flat.kernel.astype(np.float64), flat.info)
    with pytest.raises(ValueError, match="odd sides"):
        PSF(np.ones((4, 4), np.float32) / 16, {"kernel_shape": [4, 4]})


def test_physics_takes_arrays_and_numbers_not_the_settings():
    """No physics function has a settings parameter or reads a setting by name (a
    ``.device`` of a tensor and the forward model's own ``.background`` are not settings)."""
    fields = {f.name for f in dataclasses.fields(RestoreSettings)} - {"device", "background"}
    found = []
    for path in sorted(PHYSICS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                found += [f"{path.name}:{node.name}({a.arg})" for a in args
                          if a.arg == "settings"
                          or "RestoreSettings" in ast.unparse(a.annotation or ast.Constant(""))]
            elif isinstance(node, ast.Attribute) and node.attr in fields:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not found, found


def test_a_computed_psf_deeper_than_a_short_stack_is_cropped_like_a_measured_one():
    """A 6-plane stack in 3D mode with a Gaussian of σ Z 1 plane (9 planes) was refused
    with 'crop the PSF', which a user cannot do to a computed PSF; it is now cropped to the
    stack (1.2 % of its light here), said and recorded, as a measured PSF is."""
    import warnings as w

    from pkl_dg.physics.psf_cleaning import PSFWarning

    stack = np.random.default_rng(0).poisson(30, (6, 40, 40)).astype(np.float32)
    with pytest.warns(PSFWarning, match=r"cropped around its centre to 5×17×17"):
        res = restore_iter(stack, mode="3d", psf_sigma=2.0, psf_sigma_z=1.0, method="rl",
                           rl_iterations=2).finish()
    cropped = res.metadata["psf"]["cropped_to_image"]
    assert cropped["from"][0] == 9 and cropped["to"][0] == 5
    assert 0.005 < cropped["light_removed"] < 0.02 and res.image.shape == stack.shape
    with w.catch_warnings():
        w.simplefilter("error", PSFWarning)  # a PSF that fits is not touched
        restore_iter(stack[:, :, :], mode="3d", psf_sigma=2.0, psf_sigma_z=0.5,
                     method="rl", rl_iterations=1).finish()
        # one that loses under 1 % (here 0.3 %, 9 planes to 7) is recorded, not said: the
        # user can do nothing about the model's own tails (a trial saw "removed 0.0 %")
        deeper = np.concatenate([stack, stack[:2]])
        res = restore_iter(deeper, mode="3d", psf_sigma=2.0, psf_sigma_z=1.0, method="rl",
                           rl_iterations=1).finish()
    assert 0 < res.metadata["psf"]["cropped_to_image"]["light_removed"] < 0.01


@pytest.mark.parametrize("settings,words", [
    (RestoreSettings(psf_kind="airy", pixel_size_nm=6.5), "µm typed as nm"),  # 6.5 µm camera
    (RestoreSettings(psf_kind="airy", pixel_size_nm=300.0), "undersampled"),
    (RestoreSettings(psf_sigma=0.3), "undersampled"),
])
def test_an_implausible_psf_width_is_warned_of_and_recorded(settings, words):
    """Any PSF width was taken without a word: an Airy PSF for 6.5 nm pixels (a camera's
    6.5 µm typed as nm) is 29 px wide, one for 300 nm pixels a single pixel, and the run
    went ahead as if either were the microscope's."""
    from pkl_dg.physics.psf_cleaning import PSFWarning

    with pytest.warns(PSFWarning, match=words):
        psf = psf_from_settings(settings, (512, 512))
    assert "width_check" in psf.info
    for fine in (RestoreSettings(psf_sigma=2.0), RestoreSettings(psf_kind="airy"),
                 RestoreSettings(psf_kind="none")):
        assert "width_check" not in psf_from_settings(fine, (128, 128)).info


def test_a_cropped_psf_is_named_by_the_shape_it_was_given_too():
    """A 64×64 PSF is centred on its peak as 65×65; the crop warning spoke of a 65×65 PSF,
    a shape the user never had."""
    from pkl_dg.physics.psf_cleaning import PSFWarning

    yy, xx = np.mgrid[:64, :64]
    arr = np.exp(-((yy - 32.0) ** 2 + (xx - 32.0) ** 2) / (2 * 3.0 ** 2)).astype(np.float32)
    with pytest.warns(PSFWarning, match=r"PSF \(65×65; 64×64 as given, centred on its peak\)"):
        psf_from_settings(RestoreSettings(), (40, 40), arr)
