"""The Python API as a user calls it (faults from a user trial, /work/exp11/trial/api).

Settings are checked and normalised when built, so a wrong type fails at once with a
one-line message naming the setting (it failed deep in the run: "an integer is required",
a torch linspace error) and numpy numbers do not end up in the result's metadata (which
then was not JSON-serialisable). ``restore(image, settings)`` (settings where the PSF goes)
says how to call it; a torch tensor is taken as an image like numpy, dask and xarray arrays.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import pkl_dg
from pkl_dg import RestoreSettings
from pkl_dg.settings import field_specs

ROOT = Path(__file__).resolve().parents[1]
#: a few cheap Richardson–Lucy iterations, calibrated by hand: no estimate, no network
RL = dict(method="rl", rl_iterations=3, threads=1, calibration="manual")


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(40.0, (32, 32)).astype(np.float32)


# ---------------------------------------------------------------------- settings types
@pytest.mark.parametrize("name, value, expected", [
    ("psf_sigma", np.float32(2.5), 2.5),
    ("pixel_size_nm", np.float64(42.5), 42.5),
    ("psf_sigma", 2, 2.0),                    # an int for a float setting
    ("steps", np.int64(5), 5),
    ("seed", np.int32(3), 3),
    ("steps", 5.0, 5),                        # an integral float for an int setting
    ("rl_iterations", np.float64(7.0), 7),
    ("method", np.str_("rl"), "rl"),
    ("psf_path", Path("/data/psf.tif"), "/data/psf.tif"),
])
def test_settings_normalise_numbers_to_python_types(name, value, expected):
    s = RestoreSettings(**{name: value})
    got = getattr(s, name)
    assert got == expected and type(got) is type(expected)
    json.dumps(s.to_dict())  # numpy scalars would not serialise
    again = RestoreSettings().replace(**{name: value})
    assert type(getattr(again, name)) is type(expected)


@pytest.mark.parametrize("name, value, error", [
    ("steps", 2.7, ValueError),
    ("threads", 1.5, ValueError),
    ("steps", "2", TypeError),
    ("psf_sigma", "2", TypeError),
    ("seed", None, TypeError),
    ("background", None, TypeError),
    ("seed", True, TypeError),
    ("samples", np.bool_(True), TypeError),
    ("steps", float("nan"), ValueError),
    ("model", 3, TypeError),
    ("psf_path", None, TypeError),
])
def test_settings_refuse_wrong_types_when_built(name, value, error):
    with pytest.raises(error) as exc:
        RestoreSettings(**{name: value})
    msg = str(exc.value)
    assert "\n" not in msg and f"({name})" in msg
    assert repr(value) in msg or str(value) in msg
    assert re.search(r"must be|is NaN", msg)


def test_settings_from_dict_still_reads_numbers_given_as_text():
    s = RestoreSettings.from_dict({"steps": "12", "psf_sigma": "1.5"})
    assert (s.steps, s.psf_sigma) == (12, 1.5)
    with pytest.raises(ValueError, match=r"\(steps\).*'2.5'"):
        RestoreSettings.from_dict({"steps": "2.5"})
    with pytest.raises(TypeError, match=r"\(seed\)"):
        RestoreSettings.from_dict({"seed": None})  # a JSON null in a saved file


@pytest.mark.parametrize("over", [dict(steps=2.7), dict(seed=None), dict(steps="2")])
def test_restore_refuses_bad_override_types_naming_the_setting(over):
    name = next(iter(over))
    with pytest.raises((TypeError, ValueError), match=rf"\({name}\)"):
        pkl_dg.restore(_image(), **{**RL, "method": "pkl", "samples": 1}, **over)


def test_result_metadata_with_numpy_settings_is_json():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pkl_dg.restore_iter(
            _image(), **{**RL, "rl_iterations": np.int32(3)}, psf_sigma=np.float32(2.0),
            pixel_size_nm=np.float64(42.6), offset=np.int16(1)).finish()
    text = json.dumps(result.metadata)
    assert json.loads(text)["settings"]["rl_iterations"] == 3
    assert type(result.settings.psf_sigma) is float and type(result.settings.offset) is float


def test_help_of_restore_settings_lists_every_field_with_its_unit():
    doc = inspect.getdoc(RestoreSettings)
    for spec in field_specs():
        entry = re.search(rf"^{spec.name} : {spec.type}, default .*\n((?:    .*\n?)+)", doc,
                          re.M)
        assert entry, spec.name
        assert spec.label in entry.group(1)
        if spec.unit:
            assert f"unit {spec.unit}" in entry.group(1)


# ---------------------------------------------------------------------- call mistakes
def test_settings_passed_where_restore_takes_the_psf_say_how_to_call_it():
    s = RestoreSettings(**RL)
    with pytest.raises(TypeError, match=r"settings=") as exc:
        pkl_dg.restore(_image(), s)
    assert "\n" not in str(exc.value)
    assert np.asarray(pkl_dg.restore(_image(), settings=s)).shape == (32, 32)


def test_restore_iter_refuses_a_psf_passed_as_settings_at_the_call():
    with pytest.raises(TypeError, match=r"psf=") as exc:
        pkl_dg.restore_iter(_image(), np.ones((5, 5)))  # nothing iterated yet
    assert "ndarray" in str(exc.value)


def test_a_torch_tensor_is_restored_like_the_numpy_array():
    torch = pytest.importorskip("torch")
    image = _image()
    want = pkl_dg.restore(image, **RL)
    tensor = torch.from_numpy(image.copy()).requires_grad_(True)
    np.testing.assert_array_equal(pkl_dg.restore(tensor, **RL), want)
    result = pkl_dg.restore_iter(tensor.detach().to(torch.bfloat16), **RL).finish()
    assert result.image.dtype == np.float32 and result.metadata["input_dtype"] == "float32"


def test_a_torch_tensor_of_booleans_is_refused_like_numpy_booleans():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="dtype bool"):
        pkl_dg.restore(torch.ones(32, 32, dtype=torch.bool), **RL)


# ---------------------------------------------------------------------- documentation
def test_help_of_restore_lists_axes():
    assert "axes" in inspect.signature(pkl_dg.restore).parameters
    assert "axes" in pkl_dg.restore.__doc__
    assert pkl_dg.restore(np.stack([_image()] * 2), axes="CYX", **RL).shape == (2, 32, 32)


def test_restore_result_has_a_numpy_style_docstring():
    doc = inspect.getdoc(pkl_dg.RestoreResult)
    assert "Attributes\n----------" in doc
    for field in dataclasses.fields(pkl_dg.RestoreResult):
        assert re.search(rf"^{field.name} : ", doc, re.M), field.name
    assert "photon" in doc and "JSON" in doc


def test_restore_iter_doc_says_how_the_image_becomes_photons_by_default():
    doc = inspect.getdoc(pkl_dg.restore_iter)
    image = re.search(r"^image\b.*\n((?:    .*\n)+)", doc, re.M).group(1)
    assert "estimated" in image and "'auto'" in image  # not "the settings' offset and gain"


def test_readme_names_the_sample_menu_as_napari_shows_it():
    manifest = (ROOT / "src" / "pkl_dg" / "napari.yaml").read_text(encoding="utf-8")
    display = re.search(r"^display_name: (.+)$", manifest, re.M).group(1).strip()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"*File → Open Sample → {display}*" in readme
