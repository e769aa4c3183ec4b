"""Qt-free parts of the napari plugin: persisted state, sample data, bead PSF, worker, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pkl_dg.napari.psf_sources import psf_from_beads
from pkl_dg.napari.sample_data import make_sample, make_sample_data
from pkl_dg.napari.state import SettingsStore, WidgetState
from pkl_dg.napari.worker import (ModelCache, OperatorCache, PsfRequest, RunFailure,
                                  restoration_frames)
from pkl_dg.settings import RestoreSettings


# ---------------------------------------------------------------- persisted settings
def test_state_round_trip(tmp_path):
    store = SettingsStore(tmp_path / "cfg" / "w.json")
    state = WidgetState(settings=RestoreSettings(psf_sigma=1.3, method="rl", steps=7),
                        psf_source="beads", bead_box=31)
    store.save(state)
    loaded, message = store.load()
    assert message is None
    assert loaded == state


def test_state_missing_file_gives_defaults_quietly(tmp_path):
    loaded, message = SettingsStore(tmp_path / "none.json").load()
    assert loaded == WidgetState() and message is None


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 99}),
                                     json.dumps({"version": 1, "settings": {"bogus": 1}}),
                                     json.dumps({"version": 1, "settings": {"steps": -3}})])
def test_state_bad_file_gives_defaults_with_a_message(tmp_path, content):
    path = tmp_path / "w.json"
    path.write_text(content)
    loaded, message = SettingsStore(path).load()
    assert loaded == WidgetState()
    assert message and str(path) in message


def test_state_default_location_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PKL_DG_CONFIG_DIR", str(tmp_path))
    assert SettingsStore().path.parent == tmp_path


# ---------------------------------------------------------------- sample data
def test_sample_data_three_layers_deterministic():
    layers = make_sample_data()
    names = [meta["name"] for _data, meta, _kind in layers]
    assert names == ["cells ground truth", "cells PSF", "cells"]
    assert all(kind == "image" for *_rest, kind in layers)
    measured, truth, psf = make_sample()
    assert measured.shape == truth.shape == (256, 256)
    assert measured.dtype == np.uint16 and truth.dtype == np.float32
    assert abs(psf.sum() - 1) < 1e-5 and psf.shape[0] % 2 == 1
    again = make_sample()[0]
    np.testing.assert_array_equal(measured, again)
    # widefield-like: the measurement matches the blurred truth better than the truth itself
    from pkl_dg.napari.sample_data import _blur_linear

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]
    blurred = _blur_linear(truth.astype(np.float64), psf)
    assert corr(measured, blurred) > corr(measured, truth) + 0.05
    assert measured.min() >= 0 and 50 < measured.max() < 1000


def test_sample_stack_is_a_blurred_zstack():
    from pkl_dg.napari.sample_data import make_sample_3d, make_sample_data_3d

    measured, truth, psf = make_sample_3d((12, 48, 48), sigma_z=1.0)
    assert measured.shape == truth.shape == (12, 48, 48) and measured.dtype == np.uint16
    assert psf.ndim == 3 and all(n % 2 for n in psf.shape) and abs(psf.sum() - 1) < 1e-5
    names = [meta["name"] for _d, meta, _k in make_sample_data_3d()]
    assert names == ["stack ground truth", "stack PSF", "stack"]


# ---------------------------------------------------------------- bead PSF
def _bead_image(sigma=1.5, n=128):
    from pkl_dg.physics import gaussian_psf

    rng = np.random.default_rng(0)
    img = np.zeros((n, n))
    for y, x in ((30, 30), (30, 90), (90, 40), (95, 95)):
        img[y, x] = 2000.0
    k = gaussian_psf(sigma)
    from scipy.signal import fftconvolve
    img = fftconvolve(img, k, mode="same") + 20
    return rng.poisson(img).astype(np.float32)


def test_psf_from_beads_recovers_width():
    from pkl_dg.physics import fwhm_of

    psf, n = psf_from_beads(_bead_image(1.5), box=21)
    assert n == 4
    assert psf.shape == (21, 21) and abs(psf.sum() - 1) < 1e-5
    c = psf.shape[0] // 2
    assert np.unravel_index(np.argmax(psf), psf.shape) == (c, c)
    assert fwhm_of(psf[c]) == pytest.approx(2.355 * 1.5, rel=0.15)


def _subpixel_beads(offsets, sigma=1.5, n=128):
    """Beads of a pixel-integrated Gaussian centred at (pixel + offset)."""
    from scipy.special import erf

    rng = np.random.default_rng(1)
    img = np.full((n, n), 20.0)
    edges = np.arange(n + 1) - 0.5
    for (y, x), (oy, ox) in zip(((30, 30), (30, 90), (90, 40), (95, 95)), offsets):
        cy = np.diff(erf((edges - y - oy) / (np.sqrt(2) * sigma))) / 2
        cx = np.diff(erf((edges - x - ox) / (np.sqrt(2) * sigma))) / 2
        img += 40000.0 * np.outer(cy, cx)
    return rng.poisson(img).astype(np.float32)


def _centroid(psf):
    g = np.arange(psf.shape[0]) - psf.shape[0] // 2
    return float((psf.sum(axis=1) * g).sum()), float((psf.sum(axis=0) * g).sum())


def test_psf_from_beads_aligns_beads_to_subpixel_precision():
    # every bead off-centre the same way: the average must still be centred
    psf, n = psf_from_beads(_subpixel_beads([(0.35, -0.4)] * 4), box=21)
    assert n == 4
    cy, cx = _centroid(psf)
    assert abs(cy) < 0.05 and abs(cx) < 0.05, (cy, cx)
    # beads at opposite sub-pixel positions: averaging does not widen the PSF (integer
    # alignment widened it by 9 %: variance 2.55 against 2.33 px²)
    spread = [(0.45, 0.45), (-0.45, -0.45), (0.45, -0.45), (-0.45, 0.45)]
    psf, _ = psf_from_beads(_subpixel_beads(spread), box=21)
    ref, _ = psf_from_beads(_subpixel_beads([(0.0, 0.0)] * 4), box=21)
    assert _central_variance(psf) == pytest.approx(_central_variance(ref), rel=0.03)


def _central_variance(psf, r=5):
    c = psf.shape[0] // 2
    core = psf[c - r:c + r + 1, c - r:c + r + 1].sum(axis=0)
    g = np.arange(-r, r + 1)
    return float((core * g ** 2).sum() / core.sum())


def test_psf_from_beads_in_a_3d_stack():
    from scipy.special import erf

    rng = np.random.default_rng(2)
    shape, sig = (31, 96, 96), (3.0, 1.5, 1.5)
    img = np.full(shape, 10.0)
    for centre in ((15.3, 30, 30.4), (15, 30, 70), (14.6, 70.2, 50)):
        profiles = []
        for n, c, s_ in zip(shape, centre, sig):
            edges = np.arange(n + 1) - 0.5
            profiles.append(np.diff(erf((edges - c) / (np.sqrt(2) * s_))) / 2)
        img += 2e5 * np.einsum("z,y,x->zyx", *profiles)
    psf, n = psf_from_beads(rng.poisson(img).astype(np.float32), box=21)
    assert n == 3 and psf.shape == (21, 21, 21) and abs(psf.sum() - 1) < 1e-5
    g = np.arange(-10, 11)
    for axis, s_ in enumerate(sig):
        profile = psf.sum(axis=tuple(a for a in range(3) if a != axis))
        assert abs(float((profile * g).sum())) < 0.05  # centred
        r = int(2.5 * s_)  # central variance: the tails are mostly background noise
        core, gc = profile[10 - r:11 + r], g[10 - r:11 + r]
        edges = np.arange(-r, r + 2) - 0.5
        truth = np.diff(erf(edges / (np.sqrt(2) * s_)))
        expected = float((truth * gc ** 2).sum() / truth.sum())
        assert float((core * gc ** 2).sum() / core.sum()) == pytest.approx(expected, rel=0.05)
    # a shallow stack: the Z window shrinks to its depth
    psf, n = psf_from_beads(rng.poisson(img[8:23]).astype(np.float32), box=21)
    assert psf.shape == (15, 21, 21) and n == 3
    with pytest.raises(ValueError, match="2D image or a 3D"):
        psf_from_beads(np.zeros((2, 3, 8, 8)), box=5)


def test_psf_from_beads_none_found():
    with pytest.raises(ValueError, match="No isolated bead"):
        psf_from_beads(np.random.default_rng(0).poisson(20, (64, 64)).astype(float), box=21)


# ---------------------------------------------------------------- worker generator
def _drain(gen):
    frames = []
    while True:
        try:
            frames.append(next(gen))
        except StopIteration as stop:
            return frames, stop.value


def test_worker_streams_frames_and_reuses_operator(constant_denoiser):
    measured, _truth, _psf = make_sample((64, 64))
    ops, models = OperatorCache(), ModelCache()
    models.put("", "auto", constant_denoiser)
    settings = RestoreSettings(steps=3, sub_iterations=2, samples=1)
    frames, result = _drain(restoration_frames(measured, settings, PsfRequest("gaussian"),
                                               ops, models))
    assert [f.index for f in frames] == [1, 2, 3, 4]  # 3 steps and the final pass
    assert result.image.shape == (64, 64) and result.image.dtype == np.float32
    assert result.metadata["napari"]["psf_source"] == "gaussian"
    (op,) = ops.operators()
    misses = op.cache.misses
    _drain(restoration_frames(measured, settings, PsfRequest("gaussian"), ops, models))
    assert len(ops) == 1 and op.cache.misses == misses and op.cache.hits > 0
    _drain(restoration_frames(measured[:48, :56], settings, PsfRequest("gaussian"), ops, models))
    assert len(ops) == 2  # another shape gets its own forward model


def test_worker_psf_from_layer_and_beads(constant_denoiser):
    measured, _truth, psf = make_sample((64, 64))
    ops = OperatorCache()
    settings = RestoreSettings(method="rl", rl_iterations=2)
    _f, result = _drain(restoration_frames(measured, settings,
                                           PsfRequest("layer", psf, layer_name="cells PSF"),
                                           ops, ModelCache()))
    assert result.metadata["napari"]["psf_layer"] == "cells PSF"
    assert result.settings.psf_kind == "array"
    _f, result = _drain(restoration_frames(measured, settings,
                                           PsfRequest("beads", _bead_image()[:64, :64],
                                                      bead_box=15, layer_name="beads"),
                                           ops, ModelCache()))
    assert result.metadata["napari"]["psf_beads_used"] >= 1


@pytest.mark.parametrize("image, request_, match", [
    (np.zeros((32, 32), np.float32), PsfRequest("gaussian"), "all zero"),
    (np.full((32, 32), np.nan, np.float32), PsfRequest("gaussian"), "NaN"),
    (np.ones((12, 12), np.float32), PsfRequest("layer", np.ones((15, 15))), "larger than"),
])
def test_worker_user_errors_become_failures(image, request_, match):
    before = image.copy()
    frames, result = _drain(restoration_frames(image, RestoreSettings(method="rl"), request_,
                                               OperatorCache(), ModelCache()))
    assert frames == [] and isinstance(result, RunFailure)
    assert match in result.message
    np.testing.assert_array_equal(image, before)


def test_worker_bad_model_file_is_a_failure(tmp_path):
    bad = tmp_path / "prior.safetensors"
    bad.write_bytes(b"not a model")
    measured = make_sample((32, 32))[0]
    _f, result = _drain(restoration_frames(measured, RestoreSettings(model=str(bad), steps=2),
                                           PsfRequest("gaussian"), OperatorCache(),
                                           ModelCache()))
    assert isinstance(result, RunFailure) and result.message


def test_model_cache_loads_once_and_reloads_a_changed_file(tmp_path):
    import os

    path = tmp_path / "m.safetensors"
    path.write_bytes(b"x")
    calls = []
    cache = ModelCache(loader=lambda p, d: calls.append((p, d)) or object())
    first = cache.get(str(path), "cpu")
    assert cache.get(str(path), "cpu") is first and cache.loads == 1
    assert cache.get(str(path), "cuda") is not first and cache.loads == 2
    os.utime(path, (1, 1))
    assert cache.get(str(path), "cpu") is not first and cache.loads == 3


# ---------------------------------------------------------------- CLI, import hygiene
def test_import_and_cli_do_not_import_napari_or_qt():
    code = ("import sys, pkl_dg, pkl_dg.cli; pkl_dg.cli.build_parser(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_demo_subcommand_registered():
    from pkl_dg.cli import build_parser

    args = build_parser().parse_args(["demo", "--screenshot", "x.png", "--steps", "3",
                                      "--method", "rl"])
    assert args.screenshot == "x.png" and args.steps == 3 and callable(args.func)


def test_demo_without_display_says_what_to_do(monkeypatch, capsys):
    from pkl_dg.cli import main

    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["demo", "--screenshot", "x.png"]) == 2
    assert "xvfb-run" in capsys.readouterr().err


def test_npe2_validate():
    npe2 = pytest.importorskip("npe2")
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-pkl-dg")
    manifest.validate_imports()
    assert [w.display_name for w in manifest.contributions.widgets] == ["PKL Deconvolution",
                                                                      "Compare methods"]
    assert [s.key for s in manifest.contributions.sample_data] == ["cells", "stack"]
    proc = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-pkl-dg"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "valid" in proc.stdout, proc.stdout + proc.stderr
    assert npe2


def test_wheel_ships_the_manifest(tmp_path):
    """The top-level napari.yaml reaches the wheel through the src/pkl_dg/napari.yaml link."""
    pytest.importorskip("hatchling")
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("napari_pkl_dg-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("pkl_dg/napari.yaml").decode()
        entry_points = next(zf.read(n).decode() for n in zf.namelist()
                            if n.endswith("entry_points.txt"))
        names = zf.namelist()
    assert shipped == (root / "napari.yaml").read_text()
    assert "napari-pkl-dg = pkl_dg:napari.yaml" in entry_points
    assert "pkl_dg/napari/widget.py" in names


def test_sample_psf_matches_default_settings_rl_sharpens():
    """The sample's PSF is the default Gaussian σ: RL with default settings moves toward truth."""
    measured, truth, psf = make_sample((96, 96))
    settings = RestoreSettings(method="rl", rl_iterations=15)
    from pkl_dg.psf_source import psf_from_settings

    np.testing.assert_array_equal(psf_from_settings(settings, measured.shape).kernel, psf)
    _f, result = _drain(restoration_frames(measured, settings, PsfRequest("gaussian"),
                                           OperatorCache(), ModelCache()))

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert corr(result.image, truth) > corr(measured.astype(np.float32), truth) + 0.05


@pytest.mark.parametrize("method", ["pkl", "rl"])
def test_worker_cancel_stops_inside_a_long_step(constant_denoiser, method):
    """The flag is checked before every convolution: a run stops inside its rough RL
    estimate or a step of 200 sub-iterations (over a second at 768² on one thread), not at the
    end of the step."""
    import threading
    import time

    from pkl_dg.napari.worker import CancelFlag, Cancelled

    image = np.random.default_rng(0).poisson(50.0, (768, 768)).astype(np.float32)
    models = ModelCache()
    models.put("", "auto", constant_denoiser)
    settings = RestoreSettings(method=method, steps=3, sub_iterations=200, discrepancy=0.0,
                               samples=1, rl_iterations=5000, threads=1)
    flag = CancelFlag()
    gen = restoration_frames(image, settings, PsfRequest("gaussian"), OperatorCache(),
                             models, cancel=flag)
    first = next(gen)  # one complete step (or RL iteration)
    assert first.index == 1
    timer = threading.Timer(0.3, flag.set)
    timer.start()
    t_set = time.perf_counter() + 0.3
    frames, result = _drain(gen)
    latency = time.perf_counter() - t_set
    timer.join()
    assert isinstance(result, Cancelled) and result.steps_done == 1 + len(frames)
    assert latency < 1.0, latency
    if method == "pkl":  # a step takes seconds here: it was cut, not finished
        assert frames == []


def test_worker_cancel_stops_inside_the_final_denoising_pass():
    """The pass runs the network on 5 images and no convolution, so Cancel (checked before
    each convolution) waited for all of it: about 30 s at 2048² on a CPU, where its images
    go through the network one call each. The network now checks the flag before each
    forward too."""
    from conftest import ConstantDenoiser
    from pkl_dg.diffusion.grid_phase import PHASES
    from pkl_dg.napari.worker import CancelFlag, Cancelled

    class CancellingInThePass(ConstantDenoiser):
        flag, after = None, 0

        def forward(self, x, t):
            if self.flag is not None and self.flag.is_set():
                self.after += 1  # a network image computed after the cancel
            out = super().forward(x, t)
            if self.flag is not None and len(x) == PHASES:  # the pass's grid phases
                self.flag.set()
            return out

    image = np.random.default_rng(1).poisson(30.0, (64, 64)).astype(np.float32)
    settings = RestoreSettings(steps=2, samples=1, psf_sigma=1.5, threads=1)
    net = CancellingInThePass()
    models = ModelCache()
    models.put("", "auto", net)
    net.flag = CancelFlag()
    frames, result = _drain(restoration_frames(image, settings, PsfRequest("gaussian"),
                                               OperatorCache(), models, cancel=net.flag))
    assert net.flag.is_set()  # the flag was set inside the pass
    assert isinstance(result, Cancelled) and len(frames) == 2  # both steps, not the pass
    assert net.after == 0
    # the metadata still names the network, not the wrapper that checks the flag
    net.flag = None
    _f, done = _drain(restoration_frames(image, settings, PsfRequest("gaussian"),
                                         OperatorCache(), models))
    assert done.metadata["model"]["class"] == "CancellingInThePass"


def test_cancellable_operator_checks_every_convolution_path():
    import torch

    from pkl_dg.napari.worker import CancelFlag, CancellableOperator, RunCancelled
    from pkl_dg.physics import PSFConvolution, gaussian_psf

    inner = PSFConvolution(gaussian_psf(1.5))
    flag = CancelFlag()
    op = CancellableOperator(inner, flag)
    x = torch.rand(32, 32)
    ws = op.workspace((32, 32))  # Richardson–Lucy's preallocated path
    torch.testing.assert_close(op.A(x), inner.A(x))
    torch.testing.assert_close(ws.A(x), inner.A(x))
    assert op.psf is inner.psf  # everything else is the wrapped operator's
    flag.set()
    for call in (lambda: op.A(x), lambda: op.A_adjoint(x), lambda: ws.A(x),
                 lambda: ws.adjoint(x)):
        with pytest.raises(RunCancelled):
            call()


def test_a_psf_layers_own_sampling_is_resampled_to_the_images_when_that_is_known():
    """A PSF (or bead) layer that states its pixel size (100 nm) is resampled to the
    image's (65 nm) when the image's is its own; when the image's is assumed the PSF stays
    on the image's grid and a warning says so (before, the stated size was never read)."""
    import warnings

    from pkl_dg.napari.worker import resolve_psf
    from pkl_dg.physics import fwhm_of, gaussian_psf
    from pkl_dg.physics.psf_cleaning import PSFWarning

    raw = gaussian_psf(2.0, size=31)
    settings = RestoreSettings(pixel_size_nm=65.0)
    known = PsfRequest("layer", data=raw, layer_name="psf", stated_nm=(None, 100.0),
                       image_known=frozenset({"pixel_size_nm"}))
    psf, kernel, used, notes = resolve_psf(settings, known, (128, 128))
    assert notes["psf_sampling_from_source"] == {"psf_pixel_size_nm": 100.0}
    assert used.psf_pixel_size_nm == 100.0
    assert psf.info["resampled"]["from_spacing_nm"] == [100.0, 100.0]
    c = kernel.shape[0] // 2
    assert fwhm_of(kernel[c]) == pytest.approx(2.355 * 2.0 * 100 / 65, rel=0.05)
    assumed = PsfRequest("layer", data=raw, layer_name="psf", stated_nm=(None, 100.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        psf, kernel, used, notes = resolve_psf(settings, assumed, (128, 128))
    assert any(issubclass(w.category, PSFWarning) and "100 nm pixels" in str(w.message)
               and "assumed" in str(w.message) for w in caught)
    assert notes["psf_sampling_not_applied"] == {"psf_pixel_size_nm": 100.0}
    assert used.psf_pixel_size_nm == 0.0 and "resampled" not in psf.info
    given = PsfRequest("layer", data=raw, layer_name="psf", stated_nm=(None, 100.0),
                       image_known=frozenset({"pixel_size_nm"}))  # the user's own wins
    _psf, _k, used, notes = resolve_psf(settings.replace(psf_pixel_size_nm=80.0), given,
                                        (128, 128))
    assert used.psf_pixel_size_nm == 80.0 and "psf_sampling_from_source" not in notes


def test_a_stack_cancelled_while_a_plane_prepares_does_not_list_that_plane():
    """Cancel clicked while plane 1 of a whole stack was still preparing (background,
    calibration, its first iteration): the layer marks plane 1 as not started (NaN; it got
    no frame), but the metadata's ``blocks`` listed it beside the restored plane 0. The
    blocks listed are now those that yielded a frame."""
    from pkl_dg.napari.worker import CancelFlag, Cancelled
    from pkl_dg.physics import PSFConvolution

    flag, seen = CancelFlag(), []
    per_plane = 3

    class CancelOnceAPlaneIsDone:  # Cancel clicked during the next plane's preparation
        def __init__(self, psf):
            self._inner = PSFConvolution(psf)

        def A(self, x):  # noqa: N802
            if len(seen) == per_plane:
                flag.set()
            return self._inner.A(x)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    rng = np.random.default_rng(0)
    stack = rng.poisson(40.0, (3, 32, 32)).astype(np.float32) + 100
    settings = RestoreSettings(method="rl", rl_iterations=per_plane, psf_sigma=1.5, threads=1)
    gen = restoration_frames(stack, settings, PsfRequest("gaussian"),
                             OperatorCache(factory=CancelOnceAPlaneIsDone), ModelCache(),
                             axes="ZYX", cancel=flag)
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert isinstance(result, Cancelled) and result.steps_done == per_plane
    assert {f.block for f in seen} == {(0,)}  # plane 1 got no frame: the layer's NaN
    assert [b["index"] for b in result.metadata["blocks"]] == [[0]]
    assert result.metadata["blocks"][0]["background_photons"] >= 0
