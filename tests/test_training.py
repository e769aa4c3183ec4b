"""Procedural phantoms, user-data patches, the training loop and `pkl-dg train`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pkl_dg import cli
from pkl_dg.diffusion.model_io import load_model
from pkl_dg.diffusion.schedule import cosine_alphas_cumprod
from pkl_dg.diffusion.unet import UNet, UNetConfig
from pkl_dg.training.data import MixedSource, PhantomSource
from pkl_dg.training.phantoms import (TRAINING_MIX, PhantomConfig, normalise_patch, parse_mix, phantom_batch,
                                     render_phantom)
from pkl_dg.cli.train import config_from_args
from pkl_dg.training.config import cli_fields, flag_of
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


def test_distillation_targets_the_teachers_noise():
    """With a teacher the loss is the distance to the teacher's ε: zero for a copy of it,
    and not the distance to the drawn noise (which a copy of the teacher does not reach)."""
    torch.manual_seed(0)
    teacher = UNet(UNetConfig(width=8, channel_mult=(1, 2))).eval()
    student = UNet(UNetConfig(width=8, channel_mult=(1, 2)))
    student.load_state_dict(teacher.state_dict())
    alphas = cosine_alphas_cumprod().float()
    x0 = torch.from_numpy(phantom_batch(seed=3, n=4, size=32))[:, None] * 2 - 1
    with torch.no_grad():
        distilled = diffusion_loss(student, x0, alphas, torch.Generator().manual_seed(1), False,
                                   teacher)
        plain = diffusion_loss(student, x0, alphas, torch.Generator().manual_seed(1), False)
    assert float(distilled) < 1e-10 and float(plain) > 0.05


def test_cli_train_distils_a_saved_model(tmp_path):
    teacher = tmp_path / "teacher"
    assert cli.main(["train", "--out", str(teacher), "--steps", "1", *TINY_ARGS]) == 0
    out = tmp_path / "student"
    assert cli.main(["train", "--out", str(out), "--teacher", str(teacher), "--steps", "2",
                     *TINY_ARGS]) == 0
    recipe = json.loads((out / "model.json").read_text())["training"]
    assert recipe["teacher"] == str(teacher) and "eps_teacher" in recipe["loss"]
    # resume keeps the teacher of the checkpoint
    assert cli.main(["train", "--out", str(out), "--resume", str(out), "--steps", "3",
                     *TINY_ARGS]) == 0
    assert json.loads((out / "model.json").read_text())["training"]["teacher"] == str(teacher)


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


def test_time_budget_drives_the_cosine_decay():
    cfg = TrainConfig(out="unused", steps=100000, lr=1e-3, warmup=10, lr_schedule="cosine",
                      decay_start=0, minutes=5)
    # few steps done, but half the time spent: half way down the cosine
    assert learning_rate(cfg, 100, time_fraction=0.5) == pytest.approx(0.5e-3)
    assert learning_rate(cfg, 100, time_fraction=1.0) == pytest.approx(0.0, abs=1e-12)
    # steps further along than time: the steps decide
    assert learning_rate(cfg, 50000, time_fraction=0.1) == pytest.approx(0.5e-3)
    with pytest.raises(ValueError, match="--minutes"):
        TrainConfig(out="unused", minutes=0).validate()


def test_cli_train_stops_at_its_time_budget(tmp_path, capsys):
    out = tmp_path / "run"
    # 0.5 s of training cannot reach 100000 steps; the run still ends and writes its model
    assert cli.main(["train", "--out", str(out), "--steps", "100000", "--minutes", "0.008",
                     "--lr-schedule", "cosine", *TINY_ARGS]) == 0
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert 1 <= state["step"] < 100000 and state["elapsed_s"] >= 0.48
    assert json.loads((out / "model.json").read_text())["training"]["finished"] is True
    assert np.isfinite(state["history"][-1][1])


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
    from pkl_dg.bench.simulate import simulate_measurement

    if not (default_model_path() / "model.safetensors").is_file():
        pytest.skip("no shipped weights in this checkout")
    psf = gaussian_psf(2.0)
    gt = phantom_batch(seed=4242, n=1, size=96)[0]
    y = simulate_measurement(gt, psf, background=2.0, peak=30.0, seed=1)
    x = restore(y, psf=psf, method="pkl", steps=10, seed=0, background=2.0)
    assert np.isfinite(x).all()
    assert care_scores(x, gt)["psnr"] > care_scores(y, gt)["psnr"]


# ---------------------------------------------------------------- real images (issue 14)

def _structure(size: int = 96, seed: int = 0) -> np.ndarray:
    """A phantom in [0, 1] (max 1)."""
    g = render_phantom(np.random.default_rng(seed), size)
    return g / g.max()


def test_read_8bit_rgb_lut_png(tmp_path):
    """Colour-LUT display PNGs become one channel proportional to the intensity; the top of the
    LUT is flagged as saturated, whatever its colour."""
    from PIL import Image

    from pkl_dg.training.images import read_planes

    g = np.round(_structure() * 200).astype(np.uint8)
    g[:10, :10] = 255  # a saturated corner
    magenta = np.stack([g, np.zeros_like(g), g], -1)
    Image.fromarray(magenta, "RGB").save(tmp_path / "magenta.png")
    (plane, sat, note), = read_planes(tmp_path / "magenta.png")
    assert note == "RGB → luminance" and plane.shape == g.shape
    assert np.allclose(plane, (0.299 + 0.114) * g)
    assert sat is not None and sat[:10, :10].all() and sat.sum() == 100

    green = np.stack([np.zeros_like(g), g, np.zeros_like(g)], -1)
    Image.fromarray(green, "RGB").save(tmp_path / "green.png")
    (plane, _, note), = read_planes(tmp_path / "green.png")
    assert note == "RGB → single channel G" and np.array_equal(plane, g)

    # a palette image whose palette is a colour ramp (the way ImageJ saves LUT images)
    pal = Image.fromarray(g, "L").convert("P")
    pal.putpalette([c for i in range(256) for c in (0, i, i)])  # cyan LUT
    pal.save(tmp_path / "cyan_palette.png")
    (plane, _, note), = read_planes(tmp_path / "cyan_palette.png")
    assert note == "RGB → luminance" and np.allclose(plane, (0.587 + 0.114) * g)


def test_read_16bit_tiff_and_float_npy(tmp_path):
    import tifffile

    from pkl_dg.training.images import load_images, normalise_image, read_planes

    g = _structure()
    tifffile.imwrite(tmp_path / "offset16.tif", (32768 + np.round(g * 150)).astype(np.uint16))
    np.save(tmp_path / "datamap.npy", g.astype(np.float32))
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([g, 2 * g]).astype(np.float32))
    (plane, sat, note), = read_planes(tmp_path / "offset16.tif")
    assert note == "uint16" and plane.min() >= 32768 and sat is not None and sat.sum() < 10
    (plane, sat, note), = read_planes(tmp_path / "datamap.npy")
    assert note == "float32" and sat is None and np.allclose(plane, g)
    assert [n for _, _, n in read_planes(tmp_path / "stack.tif")] == ["float32, plane 0 of 2", "float32, plane 1 of 2"]
    # robust per-image normalisation: p0.1 → 0, p99.9 → 1, independent of offset and scale
    u = normalise_image(plane * 1000 + 5)
    assert u.min() == 0 and abs(np.percentile(u, 99.9) - 1) < 1e-4
    ims = load_images(tmp_path, 32)
    assert [im.path for im in ims] == ["datamap.npy", "offset16.tif", "stack.tif", "stack.tif"]
    assert all(im.group == "." for im in ims)
    with pytest.raises(ValueError, match="smaller than 128 px"):
        load_images(tmp_path, 128)
    np.save(tmp_path / "bad.npy", np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="need 2-D"):
        load_images(tmp_path, 32, files=["bad.npy"])


def test_split_by_file_is_deterministic_and_by_source():
    from pkl_dg.training.images import split_by_file

    files = [f"sted/{i}.npy" for i in range(10)] + [f"gigadb/{i}.png" for i in range(3)] + \
        ["single/only.tif", "pair/a.tif", "pair/b.tif", "top.tif"]
    train, val = split_by_file(files, 0.2)
    assert sorted(train + val) == sorted(files) and not set(train) & set(val)
    assert sum(v.startswith("sted/") for v in val) == 2 and sum(v.startswith("gigadb/") for v in val) == 1
    assert not any(v.startswith(("single/", "pair/")) or v == "top.tif" for v in val)
    assert split_by_file(list(reversed(files)), 0.2) == (train, val)
    # adding files to another source does not move this one's files
    _, val2 = split_by_file(files + [f"new/{i}.tif" for i in range(5)], 0.2)
    assert [v for v in val2 if not v.startswith("new/")] == val
    assert split_by_file(files, 0.0)[1] == []
    with pytest.raises(ValueError, match="validation fraction"):
        split_by_file(files, 1.0)


def test_real_image_source_skips_saturated_and_zooms(tmp_path):
    from PIL import Image

    from pkl_dg.training.images import RealImageSource, RealPatchDataset, load_images

    g = np.round(_structure(128) * 200).astype(np.uint8)
    g[:, 64:] = 255  # right half saturated
    Image.fromarray(g, "L").save(tmp_path / "half_saturated.png")
    ims = load_images(tmp_path, 16)
    rng = np.random.default_rng(0)
    src = RealImageSource(ims, rng, 32, zoom_range=(1.0, 1.0))
    for _ in range(20):
        p = src.sample()
        assert p.shape == (32, 32) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    assert src.skipped["saturated"] > 0
    # a zoom of 2 takes 16-px regions of white noise and upsamples them: smoother patches
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    np.save(noise_dir / "noise.npy", np.random.default_rng(1).random((64, 64)).astype(np.float32))
    noise = load_images(noise_dir, 16)
    smooth = RealImageSource(noise, np.random.default_rng(0), 32, zoom_range=(2.0, 2.0), patch_norm=1.0)
    native = RealImageSource(noise, np.random.default_rng(0), 32, zoom_range=(1.0, 1.0), patch_norm=1.0)

    def roughness(s):
        return np.mean([np.abs(np.diff(s.sample_with(np.random.default_rng(i), gamma=False), axis=0)).mean()
                        for i in range(20)])

    assert roughness(smooth) < 0.6 * roughness(native)
    # --real-blur: blurred patches are smoother; without it the draws are those of before
    blurred = RealImageSource(noise, np.random.default_rng(0), 32, zoom_range=(1.0, 1.0),
                              patch_norm=1.0, blur=1.0)
    assert roughness(blurred) < 0.6 * roughness(native)
    unblurred = RealImageSource(noise, np.random.default_rng(0), 32, zoom_range=(1.0, 1.0),
                                patch_norm=1.0, blur=0.0)
    np.testing.assert_array_equal(unblurred.sample_with(np.random.default_rng(7)),
                                  native.sample_with(np.random.default_rng(7)))
    with pytest.raises(ValueError, match="blur"):
        RealImageSource(noise, np.random.default_rng(0), 32, blur=1.5)
    ds = RealPatchDataset(src, 5, seed=3)
    assert len(ds) == 5 and torch.equal(ds[2], ds[2]) and ds[2].shape == (1, 32, 32)
    assert ds.item(2)[1] == "half_saturated.png"
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch.shape == (5, 1, 32, 32)
    with pytest.raises(IndexError):
        ds[5]


def test_cli_train_on_mixed_image_folder(tmp_path):
    """PNG, TIFF and npy sources; the validation files are held out and listed in split.json."""
    import tifffile
    from PIL import Image

    data = tmp_path / "data"
    for sub in ("a", "b"):
        (data / sub).mkdir(parents=True)
    for i in range(3):
        np.save(data / "a" / f"{i}.npy", _structure(64, i).astype(np.float32))
        Image.fromarray(np.round(_structure(64, 10 + i) * 255).astype(np.uint8), "L").save(data / "b" / f"{i}.png")
    tifffile.imwrite(data / "top.tif", (_structure(64, 20) * 4000).astype(np.uint16))
    out = tmp_path / "run"
    rc = cli.main(["train", "--out", str(out), "--data", str(data), "--real-fraction", "0.9", "--steps", "2",
                   "--zoom", "0.75,1.5", *TINY_ARGS])
    assert rc == 0
    split = json.loads((out / "split.json").read_text())
    assert len(split["validation"]) == 2 and len(split["train"]) == 5
    assert {v.split("/")[0] for v in split["validation"]} == {"a", "b"}
    recipe = json.loads((out / "model.json").read_text())["training"]
    assert "real images" in recipe["data"] and "(90%" in recipe["data"] and "zoom 0.75-1.5" in recipe["data"]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["config"]["procedural_fraction"] == pytest.approx(0.1) and state["config"]["zoom_min"] == 0.75
    assert cli.main(["train", "--out", str(out), "--data", str(data), "--zoom", "2,1", "--steps", "1",
                     *TINY_ARGS]) == 2


def test_prior_eval_tables_and_gallery(tmp_path):
    from PIL import Image

    from pkl_dg.diffusion.model_io import save_model
    from pkl_dg.training.prior_eval import T_VALUES, evaluate, markdown_table

    data = tmp_path / "data" / "src"
    data.mkdir(parents=True)
    for i in range(3):
        np.save(data / f"{i}.npy", _structure(64, i).astype(np.float32))
    torch.manual_seed(0)
    save_model(UNet(UNetConfig(width=8, channel_mult=(1, 2))), {}, tmp_path / "m")
    res = evaluate([str(tmp_path / "m")], ["tiny"], str(tmp_path / "data"), n=4, n_phantoms=2, patch=32,
                   gallery=str(tmp_path / "g_{label}.png"), gallery_n=2, gallery_size=32)
    assert len(res["validation_files"]) == 1 and res["validation_files"][0].startswith("src/")
    e = res["models"]["tiny"]
    assert len(e["real"]) == len(T_VALUES) and all(v > 0 for v in e["real"] + e["phantoms"])
    assert Image.open(e["gallery"]).size == (66, 32)
    assert Image.open(res["gallery_reference"]).size == (66, 32)
    assert "| tiny | held-out real |" in markdown_table(res)


def test_blend_interpolates_weights(tmp_path):
    from pkl_dg.diffusion.model_io import save_model
    from pkl_dg.training.blend import blend_models, main

    torch.manual_seed(0)
    a = UNet(UNetConfig(width=8, channel_mult=(1, 2)))
    b = UNet(UNetConfig(width=8, channel_mult=(1, 2)))
    save_model(a, {}, tmp_path / "a")
    save_model(b, {"training": {"steps": 5}}, tmp_path / "b")
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--alpha", "0.25", "--out", str(tmp_path / "m")]) == 0
    m, meta = load_model(tmp_path / "m")
    for k, v in m.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.25 * a.state_dict()[k] + 0.75 * b.state_dict()[k], atol=1e-6), k
    assert meta["training"]["steps"] == 5 and meta["training"]["weight_interpolation"]["alpha_base"] == 0.25
    save_model(UNet(UNetConfig(width=16, channel_mult=(1, 2))), {}, tmp_path / "c")
    with pytest.raises(ValueError, match="different architectures"):
        blend_models(str(tmp_path / "a"), str(tmp_path / "c"), 0.5, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="alpha"):
        blend_models(str(tmp_path / "a"), str(tmp_path / "b"), 1.5, str(tmp_path / "x"))


def test_train_cli_defaults_are_train_config():
    args = cli.build_parser().parse_args(["train", "--out", "o"])
    assert config_from_args(args) == TrainConfig(out="o")
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in cli_fields():
        assert flag_of(f) in help_text


def test_train_cli_flags_set_their_fields():
    args = cli.build_parser().parse_args(["train", "--out", "o", "--blocks", "2", "--zoom", "1,3",
                                      "--real-fraction", "0.9", "--channel-mult", "1,2",
                                      "--attention", "--lr-schedule", "cosine"])
    cfg = config_from_args(args)
    assert (cfg.num_res_blocks, cfg.zoom_min, cfg.zoom_max, cfg.channel_mult, cfg.attention,
            cfg.lr_schedule) == (2, 1.0, 3.0, (1, 2), True, "cosine")
    assert cfg.procedural_fraction == 1.0 - 0.9
    untouched = {"num_res_blocks", "zoom_min", "zoom_max", "channel_mult", "attention",
                 "lr_schedule", "procedural_fraction", "out"}
    default = TrainConfig(out="o")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in untouched:
            assert getattr(cfg, f.name) == getattr(default, f.name), f.name
