"""Procedural phantoms, user-data patches, the training loop and `pkl-dg train`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pkl_dg import cli
from pkl_dg.diffusion.model_io import load_model
from pkl_dg.diffusion.schedule import cosine_alphas_cumprod
from pkl_dg.diffusion.unet import UNet, UNetConfig
from pkl_dg.training.data import MixedSource, PhantomSource, TiffSource
from pkl_dg.training.phantoms import (TRAINING_MIX, PhantomConfig, normalise_patch, parse_mix, phantom_batch,
                                     render_phantom)
from pkl_dg.training.train import TrainConfig, diffusion_loss, learning_rate

TINY_ARGS = ["--batch", "2", "--patch", "32", "--width", "8", "--channel-mult", "1,2",
             "--log-every", "2", "--no-progress", "--device", "cpu"]


def test_phantoms_deterministic_finite_in_range():
    a = phantom_batch(seed=7, n=3, size=64)
    b = phantom_batch(seed=7, n=3, size=64)
    c = phantom_batch(seed=8, n=3, size=64)
    assert a.shape == (3, 64, 64) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert all(img.std() > 0 for img in a)


@pytest.mark.parametrize("kind", ["microtubules", "actin", "puncta", "cells", "mixed", "blobs"])
def test_each_kind_renders_structure(kind):
    rng = np.random.default_rng(1)
    img = render_phantom(rng, 96, PhantomConfig(kinds=(kind,), kind_weights=(1.0,)))
    assert img.shape == (96, 96) and np.isfinite(img).all() and img.min() >= 0
    assert img.max() > 0 and img.std() > 0


def test_blobs_are_large_and_smooth():
    """The blobs kind (without its optional puncta) fills a large area with a smooth object."""
    from pkl_dg.training.phantoms import _layer_blobs

    img = _layer_blobs(np.random.default_rng(3), (128, 128), 1.0)
    assert (img > 0.5 * img.max()).mean() > 0.03  # a big object, not sparse spots
    # smooth: neighbouring-pixel differences are small compared with the dynamic range
    assert np.abs(np.diff(img, axis=1)).mean() < 0.05 * img.max()


def test_parse_mix():
    cfg = parse_mix(TRAINING_MIX)
    assert "blobs" in cfg.kinds and abs(cfg.kind_p.sum() - 1) < 1e-12
    assert parse_mix("cells:1, blobs:3").kind_p.tolist() == [0.25, 0.75]
    for bad, msg in (("cells", "kind:weight"), ("cells:-1", "kind:weight"), ("cells:x", "kind:weight"),
                     ("cells:0", "no positive weight"), ("stars:1", "unknown phantom kinds")):
        with pytest.raises(ValueError, match=msg):
            parse_mix(bad)


def test_cli_train_init_fine_tunes_from_a_model(tmp_path):
    """--init copies weights and architecture of a saved model; a tiny lr leaves them ≈ unchanged.

    Without --init the run would start from the seed-0 random init, which the 2 Adam steps of
    the base run (lr 2e-4) moved by ~1e-4: far outside the tolerance below.
    """
    base = tmp_path / "base"
    assert cli.main(["train", "--out", str(base), "--steps", "2", *TINY_ARGS]) == 0
    start, _ = load_model(base)
    out = tmp_path / "ft"
    args = [a for a in TINY_ARGS if a not in ("--width", "8")]  # the width must come from --init
    rc = cli.main(["train", "--out", str(out), "--init", str(base), "--steps", "3", "--lr", "1e-12",
                   "--phantom-mix", "blobs:1", *args])
    assert rc == 0
    tuned, meta = load_model(out)
    assert tuned.config.width == 8
    assert meta["training"]["init"] == str(base) and meta["training"]["phantom_mix"] == "blobs:1"
    for (name, a), b in zip(start.state_dict().items(), tuned.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    # resume keeps the mix and init of the checkpoint
    assert cli.main(["train", "--out", str(out), "--resume", str(out), "--steps", "4", *args]) == 0
    assert load_model(out)[1]["training"]["phantom_mix"] == "blobs:1"


def test_unknown_kind_and_tiny_size():
    with pytest.raises(ValueError, match="unknown phantom kinds"):
        PhantomConfig(kinds=("stars",), kind_weights=(1.0,))
    with pytest.raises(ValueError, match="at least 16"):
        render_phantom(np.random.default_rng(0), 8)


def test_normalise_patch_mapping():
    rng = np.random.default_rng(0)
    img = render_phantom(rng, 128)
    for _ in range(5):
        x = normalise_patch(img, rng)
        assert 0 <= x.min() and x.max() <= 1
        assert x.min() <= 0.1 + 1e-6
        assert np.percentile(x, 99.9) <= 0.9 + 1e-6
    flat = normalise_patch(np.zeros((16, 16)), rng)
    assert np.all(flat == flat.flat[0]) and 0 <= flat.flat[0] <= 0.1


def test_phantom_source_patches():
    rng = np.random.default_rng(0)
    src = MixedSource(PhantomSource(rng, 32, pool=3, canvas=64), None, 1.0, rng)
    b = src.batch(4)
    assert b.shape == (4, 1, 32, 32) and b.dtype == np.float32
    assert 0 <= b.min() and b.max() <= 1


def test_tiff_source(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "a.tif", (render_phantom(rng, 64) * 1000).astype(np.uint16))
    tifffile.imwrite(tmp_path / "b.tiff", np.stack([render_phantom(rng, 48) for _ in range(2)]).astype(np.float32))
    src = TiffSource(tmp_path, rng, 32)
    assert len(src.planes) == 3
    p = src.sample()
    assert p.shape == (32, 32) and 0 <= p.min() and p.max() <= 1
    with pytest.raises(ValueError, match="smaller than the training patch"):
        TiffSource(tmp_path, rng, 64)
    with pytest.raises(ValueError, match="no .tif/.tiff files"):
        TiffSource(_empty(tmp_path), rng, 32)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        TiffSource(tmp_path / "missing", rng, 32)


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_tiny_model_loss_falls():
    torch.manual_seed(0)
    model = UNet(UNetConfig(width=16, channel_mult=(1, 2), groups=8)).train()
    alphas = cosine_alphas_cumprod().float()
    x_eval = torch.from_numpy(phantom_batch(seed=123, n=8, size=32))[:, None] * 2 - 1

    def eval_loss() -> float:
        with torch.no_grad():
            return float(diffusion_loss(model, x_eval, alphas, torch.Generator().manual_seed(5), bf16=False))

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for i in range(40):
        x0 = torch.from_numpy(phantom_batch(seed=i, n=8, size=32))[:, None] * 2 - 1
        loss = diffusion_loss(model, x0, alphas, gen, bf16=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)


def test_cli_train_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), "--steps", "4", *TINY_ARGS]) == 0
    assert (out / "model.safetensors").is_file() and (out / "model.json").is_file()
    assert (out / "checkpoint" / "state.json").is_file()
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["steps"] == 4 and meta["training"]["batch"] == 2
    model, _ = load_model(out)
    assert model.config.width == 8
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4
    # resume continues the count (architecture comes from the checkpoint)
    assert cli.main(["train", "--out", str(out), "--resume", str(out), "--steps", "7", *TINY_ARGS]) == 0
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 7
    assert json.loads((out / "model.json").read_text())["training"]["steps"] == 7
    assert "trained 7 steps" in capsys.readouterr().out


def test_cosine_learning_rate_schedule():
    cfg = TrainConfig(out="unused", steps=1000, lr=1e-3, warmup=100)
    assert learning_rate(cfg, 0) == pytest.approx(1e-5)  # warm-up
    assert learning_rate(cfg, 500) == pytest.approx(1e-3)  # constant by default
    cfg = TrainConfig(out="unused", steps=1000, lr=1e-3, warmup=100, lr_schedule="cosine", decay_start=600)
    assert learning_rate(cfg, 600) == pytest.approx(1e-3)
    assert learning_rate(cfg, 800) == pytest.approx(0.5e-3)  # half way down
    assert learning_rate(cfg, 1000) == pytest.approx(0.0, abs=1e-12)
    rates = [learning_rate(cfg, s) for s in range(600, 1001, 10)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    with pytest.raises(ValueError, match="constant or cosine"):
        TrainConfig(out="unused", lr_schedule="step").validate()


def test_cli_train_cosine_resume_keeps_its_decay(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), "--steps", "4", *TINY_ARGS]) == 0
    # decay starts where the cosine run begins (step 4) and is kept across a further resume
    args = ["train", "--out", str(out), "--resume", str(out), "--lr-schedule", "cosine", *TINY_ARGS]
    assert cli.main([*args, "--steps", "6"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["config"]["decay_start"] == 4
    assert cli.main([*args, "--steps", "8"]) == 0
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 8 and state["config"]["decay_start"] == 4
    recipe = json.loads((out / "model.json").read_text())["training"]
    assert recipe["lr_schedule"] == "cosine decay from step 4 to 0 at step 8"


def test_cli_train_with_user_data(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    tifffile.imwrite(data / "img.tif", render_phantom(rng, 64).astype(np.float32))
    out = tmp_path / "run"
    rc = cli.main(["train", "--out", str(out), "--data", str(data), "--steps", "2", *TINY_ARGS])
    assert rc == 0 and (out / "model.safetensors").is_file()
    assert str(data) in json.loads((out / "model.json").read_text())["training"]["data"]


@pytest.mark.parametrize("extra, message", [
    (["--patch", "30"], "multiple of 16"),
    (["--width", "12"], "multiple of 8"),
    (["--data", "/nonexistent/dir"], "not a directory"),
    (["--resume", "/nonexistent/dir"], "no checkpoint found"),
    (["--channel-mult", "1,x"], "comma-separated"),
    (["--phantom-mix", "cells:x"], "kind:weight"),
    (["--init", "/nonexistent/dir", "--resume", "/nonexistent/dir"], "give one"),
])
def test_cli_train_errors(tmp_path, capsys, extra, message):
    args = ["train", "--out", str(tmp_path / "o"), "--steps", "1", *TINY_ARGS, *extra]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "pkl-dg train: error:" in err and message in err


def test_shipped_prior_restores_phantom():
    """The default weights load and PKL-guided sampling beats the raw input at 30 photons."""
    from pkl_dg import restore
    from pkl_dg.diffusion.model_io import default_model_path
    from pkl_dg.metrics import care_scores
    from pkl_dg.physics.psf import gaussian_psf
    from pkl_dg.training.validate import make_case

    if not (default_model_path() / "model.safetensors").is_file():
        pytest.skip("no shipped weights in this checkout")
    psf = gaussian_psf(2.0)
    gt = phantom_batch(seed=4242, n=1, size=96)[0]
    y = make_case(gt, 30.0, 2.0, psf, seed=1)
    x = restore(y, psf=psf, method="pkl", steps=10, seed=0, background=2.0)
    assert np.isfinite(x).all()
    assert care_scores(x, gt)["psnr"] > care_scores(y, gt)["psnr"]
