"""Training checkpoints in safetensors + JSON (no pickle), written atomically.

``OUT/checkpoint/`` holds ``model.safetensors`` (raw weights), ``ema.safetensors`` (EMA
weights), ``optimizer.safetensors`` (Adam moments and the torch RNG state) and ``state.json``
(step, config, numpy RNG state, loss history, elapsed wall time).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

CHECKPOINT_DIR = "checkpoint"


def _state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"state.{idx}.{key}"] = t.detach().to("cpu", copy=True).contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if not name.startswith("state."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    opt.load_state_dict({"state": state, "param_groups": groups["param_groups"]})


def save_checkpoint(out: Path, model, ema, opt, state: dict) -> Path:
    """Write ``out/checkpoint`` atomically (temporary directory, then rename)."""
    from safetensors.torch import save_file

    final = out / CHECKPOINT_DIR
    tmp = out / (CHECKPOINT_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_state_tensors(model), str(tmp / "model.safetensors"))
    save_file(_state_tensors(ema), str(tmp / "ema.safetensors"))
    opt_tensors, groups = _optimizer_tensors(opt)
    opt_tensors["torch_rng_state"] = torch.get_rng_state()
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    state = dict(state, optimizer=groups)
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    old = out / (CHECKPOINT_DIR + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def find_checkpoint(path: str | Path) -> Path:
    p = Path(path).expanduser()
    for cand in (p, p / CHECKPOINT_DIR):
        if (cand / "state.json").is_file():
            return cand
    raise FileNotFoundError(f"--resume {p}: no checkpoint found (expected {p / CHECKPOINT_DIR / 'state.json'}); "
                            "give the --out directory of an earlier `pkl-dg train` run")


def load_checkpoint(ckpt: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint {ckpt / 'state.json'} is corrupt ({exc})") from exc
    tensors = {}
    for name in ("model", "ema", "optimizer"):
        f = ckpt / f"{name}.safetensors"
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint file {f} is missing: the checkpoint is incomplete")
        try:
            tensors[name] = load_file(str(f))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"checkpoint file {f} is corrupt or truncated ({exc})") from exc
    return state, tensors
