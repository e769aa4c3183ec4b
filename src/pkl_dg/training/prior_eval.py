"""Validate a prior itself: denoising loss per noise level on held-out real patches, and samples.

Restoration scores mix the prior with the data-consistency step; this measures the prior
alone, on images it never saw:

- **Denoising loss per noise level.** Patches of the *validation* files of a data folder (the
  split of :func:`pkl_dg.training.images.split_by_file`, the same one ``pkl-dg train --data``
  uses), at native pixel size, no gamma; and procedural phantoms from the validation seed
  (987654). For each timestep t every patch is noised with a fixed noise draw (the same for
  every model) and the ε-prediction MSE is averaged. Lower is better; t = 10 is almost clean,
  t = 900 almost pure noise.
- **Unguided samples.** DDIM (η = 0) from the same initial noise for every model, saved as
  a PNG grid (z ∈ [−1, 1] shown as 0–255).

Run (1 thread, about a minute per model)::

    python -m pkl_dg.training.prior_eval --data ../shared/traindata \\
        --models src/pkl_dg/weights,RUN_DIR --labels old,new --out prior_eval.json \\
        --gallery docs/prior_samples_{label}.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

T_VALUES = (10, 50, 100, 200, 300, 500, 700, 900)
PHANTOM_SEED = 987654


def validation_patches(data: str | Path, n: int, patch: int = 128, val_fraction: float = 0.2,
                       seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``n`` patches (n, patch, patch) in [0, 1] of the held-out files, and each one's file."""
    from pkl_dg.training.images import (RealImageSource, RealPatchDataset, list_image_files, load_images,
                                        split_by_file)

    d = Path(data).expanduser()
    _, val = split_by_file([f.relative_to(d).as_posix() for f in list_image_files(d)], val_fraction)
    if not val:
        raise ValueError(f"{d}: no validation files (a source folder needs ≥ 3 files to give one)")
    src = RealImageSource(load_images(d, patch // 2, val), np.random.default_rng(seed), patch,
                          zoom_range=(1.0, 1.0))
    items = [RealPatchDataset(src, n, seed=seed).item(i) for i in range(n)]
    return np.stack([x for x, _ in items]), [p for _, p in items]


@torch.no_grad()
def denoising_loss(model: torch.nn.Module, x01: np.ndarray, t_values=T_VALUES, seed: int = 0,
                   batch: int = 16) -> np.ndarray:
    """ε-MSE per patch and timestep, shape (len(t_values), n); fixed noise per (seed, t)."""
    from pkl_dg.diffusion.schedule import cosine_alphas_cumprod, q_sample

    alphas = cosine_alphas_cumprod().float()
    x0 = torch.from_numpy(np.ascontiguousarray(x01, dtype=np.float32))[:, None] * 2.0 - 1.0
    out = np.zeros((len(t_values), len(x0)))
    model.eval()
    for k, t in enumerate(t_values):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed * 100003 + int(t)))
        for s in range(0, len(x0), batch):
            xb, nb = x0[s:s + batch], noise[s:s + batch]
            tt = torch.full((len(xb),), int(t), dtype=torch.long)
            eps = model(q_sample(xb, tt, nb, alphas), tt).float()
            out[k, s:s + batch] = ((eps - nb) ** 2).mean(dim=(1, 2, 3)).numpy()
    return out


@torch.no_grad()
def unguided_samples(model: torch.nn.Module, n: int, size: int, steps: int = 50, seed: int = 0) -> np.ndarray:
    """Unguided DDIM (η = 0) samples of the prior, x̂0 clipped to [−1, 1] at every step.

    Parameters
    ----------
    model : torch.nn.Module
        The ε-predicting network.
    n, size : int
        Number of samples and their height and width.
    steps : int
        DDIM steps (:class:`pkl_dg.diffusion.schedule.DDIMScheduler`).
    seed : int
        Seed of the initial noise x_T, the same for every model.

    Returns
    -------
    np.ndarray
        (n, size, size) float32 in the model domain z ∈ [−1, 1].
    """
    from pkl_dg.diffusion.schedule import DDIMScheduler

    scheduler = DDIMScheduler(steps, eta=0.0)
    x = torch.randn((n, 1, size, size), generator=torch.Generator().manual_seed(seed))
    model.eval()
    for t in scheduler.timesteps:
        eps = model(x, torch.full((n,), t, dtype=torch.long)).float()
        x = scheduler.step(x, scheduler.predict_x0(x, eps, t).clamp(-1, 1), t)
    return x[:, 0].clamp(-1, 1).numpy()


def save_grid(images: np.ndarray, path: str | Path, cols: int = 4, lo: float = 0.0, hi: float = 1.0) -> Path:
    """Tile (n, h, w) images into an 8-bit PNG, mapping [lo, hi] to 0–255, 2 px gaps."""
    from PIL import Image

    n, h, w = images.shape
    cols = min(cols, n)
    rows = -(-n // cols)
    grid = np.zeros((rows * (h + 2) - 2, cols * (w + 2) - 2), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        v = np.clip((im - lo) / (hi - lo), 0, 1)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = np.round(v * 255).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path, optimize=True)
    return path


def evaluate(models: list[str], labels: list[str], data: str, n: int = 96, n_phantoms: int = 48,
             patch: int = 128, val_fraction: float = 0.2, gallery: str = "", gallery_n: int = 8,
             gallery_size: int = 128, seed: int = 0) -> dict:
    """The loss tables (real held-out and phantoms) for every model, and optional galleries."""
    from pkl_dg.diffusion.model_io import load_model
    from pkl_dg.training.phantoms import phantom_batch

    t0 = time.perf_counter()
    real, paths = validation_patches(data, n, patch, val_fraction, seed)
    phantoms = phantom_batch(PHANTOM_SEED, n_phantoms, patch)
    groups = sorted({p.split("/")[0] for p in paths})
    res: dict = {"t": list(T_VALUES), "n_real": n, "n_phantoms": n_phantoms, "patch": patch,
                 "validation_files": sorted(set(paths)), "models": {}}
    if gallery:
        ref = save_grid(real[:gallery_n], gallery.format(label="heldout_real"))
        res["gallery_reference"] = str(ref)
    for model_path, label in zip(models, labels):
        net, meta = load_model(model_path or None)
        lr = denoising_loss(net, real, seed=seed)
        lp = denoising_loss(net, phantoms, seed=seed + 1)
        entry = {"path": model_path, "name": meta.get("name", ""),
                 "real": [round(float(v), 5) for v in lr.mean(1)],
                 "real_mean": round(float(lr.mean()), 5),
                 "phantoms": [round(float(v), 5) for v in lp.mean(1)],
                 "phantoms_mean": round(float(lp.mean()), 5),
                 "real_by_source": {g: round(float(lr[:, [p.split("/")[0] == g for p in paths]].mean()), 5)
                                    for g in groups}}
        if gallery:
            z = unguided_samples(net, gallery_n, gallery_size, seed=seed)
            entry["gallery"] = str(save_grid(z, gallery.format(label=label), lo=-1.0, hi=1.0))
        res["models"][label] = entry
        print(json.dumps({label: {k: v for k, v in entry.items() if k != "name"}}), flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def markdown_table(res: dict) -> str:
    """Loss per noise level, one row per model and data set."""
    head = "| model | data | " + " | ".join(f"t={t}" for t in res["t"]) + " | mean |"
    lines = [head, "|" + "---|" * (len(res["t"]) + 3)]
    for label, e in res["models"].items():
        for key in ("real", "phantoms"):
            lines.append(f"| {label} | {'held-out real' if key == 'real' else 'phantoms'} | "
                         + " | ".join(f"{v:.4f}" for v in e[key]) + f" | {e[key + '_mean']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="data folder (its validation files are used)")
    p.add_argument("--models", default="", help="comma-separated model directories ('' = shipped prior)")
    p.add_argument("--labels", default="", help="comma-separated labels (default: model0, model1, ...)")
    p.add_argument("--n", type=int, default=96, help="held-out real patches")
    p.add_argument("--n-phantoms", type=int, default=48)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--gallery", default="", help="PNG path pattern with {label}, e.g. docs/prior_{label}.png")
    p.add_argument("--gallery-n", type=int, default=8)
    p.add_argument("--gallery-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="write the results as JSON")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    models = a.models.split(",")
    labels = a.labels.split(",") if a.labels else [f"model{i}" for i in range(len(models))]
    if len(labels) != len(models):
        raise SystemExit("--labels needs one label per model")
    res = evaluate(models, labels, a.data, a.n, a.n_phantoms, a.patch, a.val_fraction, a.gallery, a.gallery_n,
                   a.gallery_size, a.seed)
    print(markdown_table(res))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
