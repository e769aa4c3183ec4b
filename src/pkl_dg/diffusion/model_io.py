"""Save and load diffusion priors: ``model.safetensors`` (weights) + ``model.json`` (metadata).

No pickle anywhere: loading a model file never executes code. ``model.json`` records

* ``architecture``: the :class:`~pkl_dg.diffusion.unet.UNetConfig` (name ``"UNet"``);
* ``noise_schedule``: ``{"name": "cosine", "num_timesteps": 1000, "s": 0.008}``;
* ``prediction``: ``"epsilon"``;
* ``intensity_mapping``: a clean image ``x ≥ 0`` maps to ``z = 2·x/s − 1`` with a per-image
  scale ``s`` (training used patches normalised to ``[0, 1]``, 99.9th percentile at 0.7–0.9);
* ``training``: the recipe (command, steps, batch, patch, learning rate, loss, wall time...).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from pkl_dg.diffusion.schedule import NUM_TRAIN_TIMESTEPS
from pkl_dg.diffusion.unet import UNet, UNetConfig

FORMAT_NAME = "pkl-dg-diffusion-prior"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"

INTENSITY_MAPPING = {
    "formula": "z = 2*x/s - 1",
    "description": (
        "A clean image x >= 0 in intensity units maps to the model domain by z = 2*x/s - 1 "
        "with a per-image scale s. Training patches were normalised to [0, 1] with their "
        "99.9th percentile at 0.7-0.9 and a background of 0-0.1, so s of about 1.2 x the "
        "99.9th percentile of a rough deconvolution matches the training distribution."),
    "train_p999_range": [0.7, 0.9],
    "train_background_range": [0.0, 0.1],
    "recommended_scale": "1.2 * percentile(rough_deconvolution, 99.9)",
}

NOISE_SCHEDULE = {"name": "cosine", "num_timesteps": NUM_TRAIN_TIMESTEPS, "s": 0.008}


def default_model_path() -> Path:
    """Directory of the shipped default prior (``pkl_dg/weights``)."""
    return Path(__file__).resolve().parent.parent / "weights"


def build_metadata(model: UNet, config: dict | None = None) -> dict:
    """The ``model.json`` content for ``model``; keys in ``config`` are added/override."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": f"pkl-dg UNet w{model.config.width}",
        "architecture": {"name": "UNet", "config": model.config.to_dict()},
        "noise_schedule": dict(NOISE_SCHEDULE),
        "prediction": "epsilon",
        "intensity_mapping": dict(INTENSITY_MAPPING),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    for k, v in (config or {}).items():
        if k in ("format", "format_version", "architecture", "parameters"):
            raise ValueError(f"model metadata key {k!r} is set from the model itself; do not pass it")
        meta[k] = v
    return meta


def save_model(model: nn.Module, config: dict | None, directory: str | Path) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``directory`` (created if needed).

    ``config`` holds extra metadata (e.g. ``{"training": {...}}``). Files are written to a
    temporary name first and renamed, so a reader never sees a half-written model.
    Returns the path of the weights file.
    """
    from safetensors.torch import save_file

    if not isinstance(model, UNet):
        raise ValueError(f"save_model expects a pkl_dg UNet, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = build_metadata(model, config)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    wpath, mpath = directory / WEIGHTS_NAME, directory / META_NAME
    tmp_w, tmp_m = wpath.with_suffix(".safetensors.tmp"), mpath.with_suffix(".json.tmp")
    save_file(tensors, str(tmp_w), metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)})
    tmp_m.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp_w.replace(wpath)
    tmp_m.replace(mpath)
    return wpath


def _resolve(path: str | Path | None) -> tuple[Path, Path]:
    if path is None or str(path) == "":
        d = default_model_path()
        w, m = d / WEIGHTS_NAME, d / META_NAME
        if not w.is_file():
            raise FileNotFoundError(
                f"no shipped default prior found ({w} is missing): this installation has no "
                "default weights yet; pass a model trained with `pkl-dg train --out DIR` instead")
        return w, m
    p = Path(path).expanduser()
    if p.is_dir():
        w, m = p / WEIGHTS_NAME, p / META_NAME
        if not w.is_file():
            raise FileNotFoundError(
                f"model directory {p} has no {WEIGHTS_NAME}: point to a directory written by "
                "`pkl-dg train --out DIR` (it holds model.safetensors and model.json)")
    else:
        if not p.exists():
            raise FileNotFoundError(
                f"model file {p} does not exist: give the path of a model.safetensors file or of "
                "the directory holding it")
        if p.suffix != ".safetensors":
            raise ValueError(
                f"model file {p} is not a .safetensors file: give model.safetensors (with model.json "
                "beside it) or its directory; pickled checkpoints (.pt, .ckpt, .pth) are not loaded")
        w = p
        m = p.with_suffix(".json")
        if not m.is_file():
            m = p.parent / META_NAME
    if not m.is_file():
        raise FileNotFoundError(
            f"model metadata {m} is missing next to {w}: copy model.json from the training "
            "output directory beside the weights")
    return w, m


def read_metadata(meta_path: Path) -> dict:
    """Parse and check ``model.json``; raise ValueError naming the file on any problem."""
    try:
        meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"model metadata {meta_path} is not valid JSON ({exc}); the file is corrupt or "
                         "truncated: re-export the model or reinstall the package") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"model metadata {meta_path} is not a pkl-dg prior (missing \"format\": "
                         f"\"{FORMAT_NAME}\"): use a model written by `pkl-dg train`")
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(f"model metadata {meta_path} has format_version {meta.get('format_version')}, newer "
                         f"than this pkl-dg understands ({FORMAT_VERSION}): upgrade napari-pkl-dg")
    arch = meta.get("architecture") or {}
    if arch.get("name") != "UNet" or not isinstance(arch.get("config"), dict):
        raise ValueError(f"model metadata {meta_path}: unsupported architecture {arch.get('name')!r} "
                         "(expected \"UNet\" with a config)")
    sched = meta.get("noise_schedule") or {}
    if sched.get("name") != "cosine" or int(sched.get("num_timesteps", 0)) != NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"model metadata {meta_path}: noise schedule {sched} is not supported "
                         f"(expected cosine with num_timesteps={NUM_TRAIN_TIMESTEPS})")
    if meta.get("prediction") != "epsilon":
        raise ValueError(f"model metadata {meta_path}: prediction {meta.get('prediction')!r} is not "
                         "supported (expected \"epsilon\")")
    return meta


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Load a prior; return ``(model in eval mode on device, metadata dict)``.

    ``path`` is a ``model.safetensors`` file, its directory, or ``None`` for the shipped
    default prior; the model's ``source`` attribute records which (``path``, ``name``). On a CPU the weights are put in channels-last memory format (faster).
    Missing files raise FileNotFoundError; corrupt, truncated or mismatched files raise
    ValueError naming the file and what to do.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wpath, mpath = _resolve(path)
    meta = read_metadata(mpath)
    try:
        arch_cfg = dict(meta["architecture"]["config"])
        arch_cfg.setdefault("output", "eps")  # files written before the v-output existed
        cfg = UNetConfig.from_dict(arch_cfg)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model metadata {mpath}: invalid architecture config ({exc})") from exc
    model = UNet(cfg)
    try:
        tensors = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"model weights {wpath} cannot be read ({exc}); the file is corrupt or "
                         "truncated: re-export the model or reinstall the package") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"model weights {wpath} do not match the architecture in {mpath}: "
            f"{len(missing)} missing tensors {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}; "
            "the weights and model.json must come from the same training run")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ValueError(f"model weights {wpath}: tensor {k!r} has shape {tuple(tensors[k].shape)}, "
                             f"the architecture in {mpath} expects {tuple(v.shape)}; the weights and "
                             "model.json must come from the same training run")
        if not torch.is_floating_point(tensors[k]) or not bool(torch.isfinite(tensors[k]).all()):
            raise ValueError(f"model weights {wpath}: tensor {k!r} is not finite floating point; the "
                             "file is corrupt: re-export the model")
    model.load_state_dict({k: t.to(v.dtype) for k, t, v in ((k, tensors[k], expected[k]) for k in expected)})
    model.to(device).eval()
    if torch.device(device).type == "cpu":
        # oneDNN's convolutions run faster on channels-last weights: one 512² bf16 forward
        # 189 → 138 ms (1 thread, idle 2-core machine), outputs equal to bf16 rounding
        # (0.3 % RMS); in fp32 294 → 257 ms, equal to 3e-6. Saving copies to contiguous.
        model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    # where it came from, for the metadata of results restored with it (a run given the
    # network, as the napari widget's model cache does, names it from this)
    model.source = {"path": str(path) if path else "shipped default",
                    "name": meta.get("name", "")}
    return model, meta


def describe(meta: dict) -> str:
    """One-line summary of a model's metadata, for logs and the GUI."""
    arch = meta["architecture"]["config"]
    tr = meta.get("training", {})
    n = meta.get("parameters")
    size = f"{n / 1e6:.2f} M params" if isinstance(n, int) else "?"
    steps = tr.get("steps_total", tr.get("steps", "?"))  # a fine-tuned model counts all steps
    loss = tr.get("final_loss")
    loss_s = f", loss {loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else ""
    return f"UNet width {arch.get('width')} × {arch.get('channel_mult')}, {size}, {steps} steps{loss_s}"
