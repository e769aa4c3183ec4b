"""Training loop of the diffusion prior (ε-prediction, cosine schedule, T = 1000).

Adam, gradient clipping, an EMA copy of the weights, bf16 autocast on CPUs that support it,
periodic checkpoints in ``OUT/checkpoint`` (safetensors + JSON, :mod:`pkl_dg.training.checkpoint`)
and resume. With ``--data`` the real-image files are split by file and ``OUT/split.json`` lists
both parts.

``OUT/model.safetensors`` + ``OUT/model.json`` always hold the latest EMA weights in the
loadable format of :mod:`pkl_dg.diffusion.model_io`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pkl_dg.diffusion.model_io import save_model
from pkl_dg.diffusion.schedule import NUM_TRAIN_TIMESTEPS, cosine_alphas_cumprod, q_sample
from pkl_dg.diffusion.unet import UNet, UNetConfig
from pkl_dg.training.checkpoint import find_checkpoint, load_checkpoint, load_optimizer, save_checkpoint
from pkl_dg.training.config import DATA_PROCEDURAL_FRACTION, TrainConfig
from pkl_dg.training.data import MixedSource, PhantomSource
from pkl_dg.training.images import RealImageSource, list_image_files, load_images, split_by_file
from pkl_dg.training.phantoms import parse_mix


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda, then mps, then cpu; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available to torch: use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps requested but MPS is not available: use --device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    return torch.device(name)


def resolve_bf16(precision: str, device: torch.device) -> bool:
    if precision == "fp32":
        return False
    if device.type == "cpu":
        ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    elif device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = False
    if precision == "bf16" and not ok:
        raise ValueError(f"bf16 training requested but {device} does not support it: use fp32")
    return ok


# ---------------------------------------------------------------- training

def _install_sigterm():
    """Turn SIGTERM into KeyboardInterrupt so a killed run still writes its checkpoint.

    Returns the previous handler (restore it with ``signal.signal``), or None off the main thread.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = list(ema.parameters())
    mod_p = list(model.parameters())
    torch._foreach_lerp_(ema_p, mod_p, 1.0 - decay)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to a GPU through pinned memory without waiting for it (a plain
    copy from pageable memory would make the host wait until the queued steps are done)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def diffusion_loss(model, x0: torch.Tensor, alphas_cumprod: torch.Tensor, gen: torch.Generator,
                   bf16: bool, teacher: torch.nn.Module | None = None) -> torch.Tensor:
    """ε-prediction MSE at uniformly drawn timesteps t ~ U{0..T−1} (Ho et al. 2020, eq. 14).

    ``x0`` (N, 1, H, W) in the model domain [−1, 1]. With a ``teacher`` (a trained
    ``model(x_t, t) -> ε``), the target is the teacher's ε for the same x_t and t instead of
    the drawn noise: knowledge distillation (Hinton et al. 2015) of the denoiser, whose
    target has no sampling noise, so a smaller student converges in fewer steps.
    """
    n = x0.shape[0]
    t = to_device(torch.randint(0, NUM_TRAIN_TIMESTEPS, (n,), generator=gen), x0.device)
    noise = to_device(torch.randn(x0.shape, generator=gen), x0.device)
    xt = q_sample(x0, t, noise, alphas_cumprod)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        eps = model(xt, t)
        if teacher is not None:
            with torch.no_grad():
                noise = teacher(xt, t).float()
    return F.mse_loss(eps.float(), noise)


_DEFAULT_MIX = "microtubules:0.25,actin:0.25,puncta:0.1,cells:0.15,mixed:0.25"


def _init_from_model(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Read the starting weights for ``--init`` and copy their architecture into ``cfg``."""
    from pkl_dg.diffusion.model_io import load_model

    net, meta = load_model(cfg.init)
    arch = meta["architecture"]["config"]
    cfg.width = int(arch["width"])
    cfg.channel_mult = tuple(int(m) for m in arch["channel_mult"])
    cfg.num_res_blocks = int(arch["num_res_blocks"])
    cfg.attention = bool(arch["attention"])
    cfg.output = arch.get("output", "eps")
    cfg.validate()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def data_split(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """The (train, validation) file lists of ``cfg.data`` (relative paths), by file."""
    data = Path(cfg.data).expanduser()
    rel = [f.relative_to(data).as_posix() for f in list_image_files(data)]
    return split_by_file(rel, cfg.val_fraction)


def build_source(cfg: TrainConfig, rng: np.random.Generator) -> MixedSource:
    user = None
    if cfg.data:
        train_files, _ = data_split(cfg)
        if not train_files:
            raise ValueError(f"--data {cfg.data}: every file went to validation; lower --val-fraction")
        min_size = int(math.ceil(cfg.patch / cfg.zoom_max))
        user = RealImageSource(load_images(cfg.data, min_size, train_files), rng, cfg.patch,
                               zoom_range=(cfg.zoom_min, cfg.zoom_max), max_saturated=cfg.max_saturated,
                               blur=cfg.real_blur)
    p = cfg.procedural_fraction
    if p is None:
        p = DATA_PROCEDURAL_FRACTION if user is not None else 1.0
    if user is None and p < 1.0:
        raise ValueError("a procedural fraction below 1 needs --data DIR with your own images")
    proc = PhantomSource(rng, cfg.patch, pool=cfg.pool, config=parse_mix(cfg.phantom_mix)) if p > 0 else None
    return MixedSource(proc, user, p, rng)


def learning_rate(cfg: TrainConfig, step: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then constant or cosine decay to 0.

    The cosine's progress is the larger of the steps' (from ``cfg.decay_start`` to
    ``cfg.steps``) and ``time_fraction`` (the share of ``cfg.minutes`` spent), so that a
    run with a time budget still ends its decay at 0.
    """
    lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
    if cfg.lr_schedule == "cosine":
        start = cfg.decay_start or 0
        frac = min(max((step - start) / max(cfg.steps - start, 1), time_fraction, 0.0), 1.0)
        lr *= 0.5 * (1.0 + math.cos(math.pi * frac))
    return lr


def _data_text(cfg: TrainConfig) -> str:
    if not cfg.data:
        return "procedural phantoms"
    p = DATA_PROCEDURAL_FRACTION if cfg.procedural_fraction is None else cfg.procedural_fraction
    return (f"procedural phantoms ({p:.0%}) + real images from {cfg.data} ({1 - p:.0%}; training files "
            f"only, see split.json), zoom {cfg.zoom_min}-{cfg.zoom_max}, "
            f"{cfg.real_blur:.0%} of them blurred (Gaussian σ 0.5-2.5 px), patches with > "
            f"{cfg.max_saturated:.0%} saturated pixels skipped")


def _schedule_text(cfg: TrainConfig) -> str:
    if cfg.lr_schedule == "cosine":
        return f"cosine decay from step {cfg.decay_start} to 0 at step {cfg.steps}"
    return "constant after warm-up"


def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> dict:
    """Train (or continue training) a prior; return a summary dict.

    With ``resume``, architecture, optimiser, EMA, step and RNG state come from the checkpoint;
    ``cfg.steps`` is the total number of steps to reach. With ``cfg.init`` (a model directory
    as written by :func:`save_model`, e.g. the shipped prior), a new run starts from those
    weights (architecture included) with a fresh optimiser: fine-tuning.
    """
    from tqdm import tqdm

    out = Path(cfg.out).expanduser()
    state = None
    if resume:
        ckpt = find_checkpoint(resume)
        state, tensors = load_checkpoint(ckpt)
        old = state["config"]
        # the architecture and data recipe of the checkpoint win; steps/out/device/lr may change
        for key in ("width", "channel_mult", "num_res_blocks", "attention", "patch", "seed", "data",
                    "procedural_fraction", "pool", "ema_decay"):
            setattr(cfg, key, old[key] if key != "channel_mult" else tuple(old[key]))
        cfg.output = old.get("output", "eps")
        # checkpoints from before these options existed used the default mix and no init
        cfg.phantom_mix = old.get("phantom_mix", _DEFAULT_MIX)
        cfg.init = old.get("init")
        cfg.teacher = old.get("teacher")
        for key, default in (("zoom_min", 1.0), ("zoom_max", 1.0), ("max_saturated", 1.0), ("val_fraction", 0.0),
                             ("real_blur", 0.0)):
            setattr(cfg, key, old.get(key, default))  # checkpoints from before: native pixels, no split
        if cfg.lr_schedule == old.get("lr_schedule") == "cosine":  # keep decaying along the same curve
            cfg.decay_start = old.get("decay_start")
    init_tensors = None
    if cfg.init and state is None:
        init_tensors = _init_from_model(cfg)
    cfg.validate()
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    teacher = None
    if cfg.teacher:
        from pkl_dg.diffusion.model_io import load_model

        teacher = load_model(cfg.teacher, device=device)[0]
    bf16 = resolve_bf16(cfg.precision, device)

    ucfg = UNetConfig(width=cfg.width, channel_mult=cfg.channel_mult, num_res_blocks=cfg.num_res_blocks,
                      attention=cfg.attention, output=cfg.output)
    torch.manual_seed(cfg.seed)
    model = UNet(ucfg).to(device)
    ema = UNet(ucfg).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed, history = 0, 0.0, []
    if state is not None:
        try:
            model.load_state_dict(tensors["model"])
            ema.load_state_dict(tensors["ema"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint in {resume} does not match its own config: {exc}") from exc
        load_optimizer(opt, tensors["optimizer"], state["optimizer"])
        for g in opt.param_groups:
            g["lr"] = cfg.lr
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(tensors["optimizer"]["torch_rng_state"])
        step, elapsed, history = int(state["step"]), float(state["elapsed_s"]), list(state["history"])
    if init_tensors is not None:
        model.load_state_dict(init_tensors)
        ema.load_state_dict(init_tensors)
    if cfg.lr_schedule == "cosine" and cfg.decay_start is None:
        cfg.decay_start = step
    source = build_source(cfg, rng)
    if cfg.data:
        train_files, val_files = data_split(cfg)
        (out / "split.json").write_text(json.dumps({"data": str(cfg.data), "val_fraction": cfg.val_fraction,
                                                    "train": train_files, "validation": val_files}, indent=1)
                                        + "\n", encoding="utf-8")
    alphas = cosine_alphas_cumprod().float().to(device)

    def snapshot(final: bool) -> None:
        loss_recent = float(running) if running is not None else float("nan")  # EMA (0.98) of the loss
        st = {"step": step, "elapsed_s": elapsed, "config": asdict(cfg), "history": history,
              "numpy_rng": rng.bit_generator.state, "bf16": bf16, "device": str(device)}
        save_checkpoint(out, model, ema, opt, st)
        recipe = {"command": cfg.command, "steps": step, "batch": cfg.batch, "patch": cfg.patch,
                  "lr": cfg.lr, "lr_schedule": _schedule_text(cfg),
                  "ema_decay": cfg.ema_decay, "warmup": cfg.warmup, "seed": cfg.seed,
                  "precision": "bf16 autocast" if bf16 else "fp32", "device": str(device),
                  "data": _data_text(cfg),
                  "phantom_mix": cfg.phantom_mix, "init": cfg.init, "teacher": cfg.teacher,
                  "loss": ("MSE(eps_pred, eps_teacher(x_t, t))" if teacher is not None
                           else "MSE(eps_pred, eps)") + ", t ~ U{0..999}", "final_loss": loss_recent,
                  "wall_time_s": round(elapsed, 1), "weights": "EMA", "finished": final}
        save_model(ema, {"training": recipe}, out)

    model.train()
    previous_sigterm = _install_sigterm()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, mininterval=1.0 if sys.stderr.isatty() else 30.0,
               dynamic_ncols=True, desc="train")
    last_ckpt = time.monotonic()
    t_prev = time.monotonic()
    running = history[-1][1] if history else None
    # the running loss stays on the device between log lines: reading it every step would
    # make the host wait for the GPU, which then idles while the next batch is drawn
    run_start, pending = elapsed, []
    budget_s = cfg.minutes * 60 if cfg.minutes else math.inf
    try:
        while step < cfg.steps and elapsed - run_start < budget_s:
            x0 = to_device(torch.from_numpy(source.batch(cfg.batch)), device) * 2.0 - 1.0
            lr = learning_rate(cfg, step, (elapsed - run_start) / budget_s)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = diffusion_loss(model, x0, alphas, gen, bf16, teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
            step += 1
            pending.append(loss.detach())
            now = time.monotonic()
            elapsed += now - t_prev
            t_prev = now
            bar.update(1)
            log_now = step % cfg.log_every == 0 or step == cfg.steps
            if log_now or device.type == "cpu":  # on a CPU reading the loss costs nothing
                for lv in torch.stack(pending).float().cpu().tolist():
                    if not math.isfinite(lv):
                        raise ValueError(f"training diverged at step {step} (loss {lv}); "
                                         "lower --lr")
                    running = lv if running is None else 0.98 * running + 0.02 * lv
                pending = []
                bar.set_postfix(loss=f"{running:.4f}", refresh=False)
            if log_now:
                history.append([step, running, round(elapsed, 1)])
                line = json.dumps({"step": step, "loss": round(running, 5), "elapsed_s": round(elapsed, 1),
                                   "s_per_step": round(elapsed / max(step, 1), 3)})
                tqdm.write(line, file=sys.stdout)
                sys.stdout.flush()
            if now - last_ckpt >= cfg.checkpoint_minutes * 60:
                snapshot(final=False)
                last_ckpt = time.monotonic()
                t_prev = last_ckpt
    except KeyboardInterrupt:
        bar.close()
        snapshot(final=False)
        raise
    finally:
        if previous_sigterm is not None:
            import signal

            signal.signal(signal.SIGTERM, previous_sigterm)
    bar.close()
    for lv in (torch.stack(pending).float().cpu().tolist() if pending else []):
        running = lv if running is None else 0.98 * running + 0.02 * lv
    if not history or history[-1][0] != step:
        history.append([step, running if running is not None else float("nan"), round(elapsed, 1)])
    snapshot(final=True)
    return {"step": step, "loss": running, "elapsed_s": elapsed, "out": str(out)}
