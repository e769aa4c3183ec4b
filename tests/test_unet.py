"""UNet denoiser and model file I/O (safetensors + JSON)."""

from __future__ import annotations

import json

import pytest
import torch

from pkl_dg.diffusion.model_io import default_model_path, describe, load_model, save_model
from pkl_dg.diffusion.schedule import cosine_alphas_cumprod
from pkl_dg.diffusion.unet import UNet, UNetConfig
from pkl_dg.training.train import diffusion_loss

TINY = UNetConfig(width=8, channel_mult=(1, 2), num_res_blocks=1, groups=4)


def tiny(seed: int = 0, **kw) -> UNet:
    torch.manual_seed(seed)
    cfg = UNetConfig(**{**TINY.to_dict(), **kw})
    return UNet(cfg).eval()


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (2, 1, 17, 23), (1, 1, 5, 9)])
def test_forward_any_size(shape):
    m = tiny()
    x = torch.randn(shape)
    t = torch.full((shape[0],), 500, dtype=torch.long)
    with torch.inference_mode():
        y = m(x, t)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_attention_variant_and_bad_input():
    m = tiny(attention=True, attention_heads=2)
    x = torch.randn(1, 1, 24, 40)
    with torch.inference_mode():
        assert m(x, torch.tensor([3])).shape == x.shape
    with pytest.raises(ValueError, match="expects"):
        m(torch.randn(1, 2, 16, 16), torch.tensor([3]))
    with pytest.raises(ValueError, match="timesteps"):
        m(torch.randn(2, 1, 16, 16), torch.tensor([3, 4, 5]))


def test_config_json_roundtrip_and_validation():
    cfg = UNetConfig(width=16, channel_mult=(1, 2, 4), attention=True)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert UNetConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown UNet config keys"):
        UNetConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(width=12)


def test_no_lazy_layers():
    m = tiny()
    keys = set(m.state_dict())
    n = sum(p.numel() for p in m.parameters())
    with torch.inference_mode():
        m(torch.randn(1, 1, 20, 20), torch.tensor([10]))
    assert set(m.state_dict()) == keys
    assert sum(p.numel() for p in m.parameters()) == n


def test_every_parameter_gets_gradient():
    m = tiny(attention=True, attention_heads=2).train()
    x0 = torch.rand(4, 1, 32, 32) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    loss = diffusion_loss(m, x0, cosine_alphas_cumprod().float(), gen, bf16=False)
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not bool((p.grad != 0).any())]
    assert not missing, f"parameters without gradient: {missing}"


def test_bf16_autocast_close_to_fp32():
    m = tiny()
    x = torch.randn(1, 1, 32, 32)
    t = torch.tensor([200])
    with torch.inference_mode():
        ref = m(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x, t).float()
    assert torch.allclose(ref, low, atol=0.1 * ref.abs().max().item())


def test_save_load_bit_identical(tmp_path):
    m = tiny(seed=3)
    path = save_model(m, {"training": {"steps": 0}}, tmp_path / "prior")
    assert path.name == "model.safetensors" and (tmp_path / "prior" / "model.json").is_file()
    meta = json.loads((tmp_path / "prior" / "model.json").read_text())
    assert meta["noise_schedule"] == {"name": "cosine", "num_timesteps": 1000, "s": 0.008}
    assert meta["prediction"] == "epsilon"
    assert meta["intensity_mapping"]["formula"] == "z = 2*x/s - 1"
    x = torch.randn(2, 1, 24, 24)
    t = torch.tensor([0, 999])
    sd = m.state_dict()
    m_cl = tiny(seed=3).to(memory_format=torch.channels_last)  # on a CPU load_model uses it
    for where in (tmp_path / "prior", path, str(path)):
        loaded, meta2 = load_model(where)
        assert not loaded.training
        assert all(torch.equal(v, sd[k]) for k, v in loaded.state_dict().items())
        assert loaded.stem.weight.is_contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            assert torch.equal(m_cl(x, t), loaded(x, t))
        assert meta2["training"] == {"steps": 0}
    # no pickle: the weights file is a safetensors header + raw data
    assert path.read_bytes()[8:9] == b"{"


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_model(tmp_path)
    save_model(tiny(), None, tmp_path / "m")
    (tmp_path / "m" / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path / "m")
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04junk")
    with pytest.raises(ValueError, match="not a .safetensors file"):
        load_model(pt)


def test_truncated_weights(tmp_path):
    path = save_model(tiny(), None, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors.*corrupt or truncated"):
        load_model(tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(tmp_path)


def test_corrupt_metadata(tmp_path):
    save_model(tiny(), None, tmp_path)
    meta_path = tmp_path / "model.json"
    good = meta_path.read_text()
    meta_path.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"model\.json is not valid JSON"):
        load_model(tmp_path)
    meta = json.loads(good)
    meta_path.write_text(json.dumps({**meta, "prediction": "v"}))
    with pytest.raises(ValueError, match="prediction"):
        load_model(tmp_path)
    meta_path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a pkl-dg prior"):
        load_model(tmp_path)


def test_mismatched_architecture(tmp_path):
    save_model(tiny(), None, tmp_path)
    meta_path = tmp_path / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["architecture"]["config"]["width"] = 16
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape .* same training run"):
        load_model(tmp_path)
    meta["architecture"]["config"]["width"] = 8
    meta["architecture"]["config"]["channel_mult"] = [1, 2, 2]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing tensors"):
        load_model(tmp_path)


def test_default_model():
    w = default_model_path() / "model.safetensors"
    if not w.is_file():
        with pytest.raises(FileNotFoundError, match="no shipped default prior"):
            load_model(None)
        pytest.skip("no shipped weights in this checkout")
    m, meta = load_model(None)
    assert sum(p.numel() for p in m.parameters()) == meta["parameters"]
    assert w.stat().st_size <= 25 * 2**20
    with torch.inference_mode():
        y = m(torch.randn(1, 1, 40, 40), torch.tensor([100]))
    assert y.shape == (1, 1, 40, 40) and torch.isfinite(y).all()
    # a fine-tuned prior is described by all its training steps, not its last run's
    total = meta["training"]["steps_total"]
    assert total > meta["training"]["steps"] and f"{total} steps" in describe(meta)


def test_v_output_is_identity_like_at_large_t():
    """With the v head, ε ≈ x_t at t = T−1 already at initialisation."""
    m = tiny()
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        eps = m(x, torch.tensor([999, 999]))
    assert float(((eps - x) ** 2).mean()) < 0.05 * float((x ** 2).mean())


def test_old_metadata_without_output_loads_as_eps(tmp_path):
    m = tiny(output="eps")
    save_model(m, None, tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    del meta["architecture"]["config"]["output"]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    loaded, _ = load_model(tmp_path)
    assert loaded.config.output == "eps"
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([500])
    with torch.inference_mode():  # load_model puts CPU weights in channels-last format
        assert torch.equal(m.to(memory_format=torch.channels_last)(x, t), loaded(x, t))


def test_in_place_inference_equals_the_autograd_forward():
    """Without autograd the residual blocks work in place; the result must not change, and
    the input must stay as it was."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(width=16, channel_mult=(1, 2), num_res_blocks=1, groups=4)).eval()
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 700])
    x0 = x.clone()
    ref = net(x, t)  # grad enabled: out of place
    with torch.inference_mode():
        fast = net(x, t)
    assert ref.requires_grad and torch.equal(fast, ref.detach())
    assert torch.equal(x, x0)


def test_a_run_given_the_loaded_prior_names_it_in_its_metadata():
    """The napari widget hands restore the network from its model cache: the result's
    metadata said "network supplied by the caller" instead of the shipped prior."""
    import numpy as np

    from pkl_dg.napari.caches import ModelCache
    from pkl_dg.restoration import restore_iter

    net = ModelCache().get("", "cpu")
    assert net.source == {"path": "shipped default", "name": load_model()[1].get("name", "")}
    img = np.random.default_rng(0).poisson(20, (32, 32)).astype(np.float32)
    res = restore_iter(img, denoiser=net, steps=1, samples=1, threads=1).finish()
    assert res.metadata["model"]["path"] == "shipped default"
    assert res.metadata["model"]["class"] == "UNet"
