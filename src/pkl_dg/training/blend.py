"""Weight-space interpolation of a prior and its fine-tuned version (WiSE-FT).

``w = α · w_base + (1 − α) · w_tuned`` for two models of the same architecture, the second
fine-tuned from the first (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"):
a fine-tuned network and its starting point lie in one basin, so the interpolation keeps most
of what the fine-tuning gained while losing less of what the base model did well.

Run::

    python -m pkl_dg.training.blend BASE_DIR TUNED_DIR --alpha 0.5 --out OUT_DIR

The metadata (``model.json``) are the tuned model's, with the blend recorded in
``training.weight_interpolation``.
"""

from __future__ import annotations

import argparse

import torch


def blend_models(base: str, tuned: str, alpha: float, out: str) -> str:
    """Write ``alpha · base + (1 − alpha) · tuned`` to ``out``; return the weights' path."""
    from pkl_dg.diffusion.model_io import load_model, save_model

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {alpha}")
    net_b, _ = load_model(base)
    net_t, meta = load_model(tuned)
    if net_b.config != net_t.config:
        raise ValueError(f"{base} and {tuned} have different architectures: they cannot be interpolated")
    sd_b = net_b.state_dict()
    mixed = {k: (alpha * sd_b[k].double() + (1 - alpha) * v.double()).to(v.dtype) if v.is_floating_point() else v
             for k, v in net_t.state_dict().items()}
    net_t.load_state_dict(mixed)
    extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "architecture", "parameters")}
    extra["name"] = f"{alpha:g} x ({base}) + {1 - alpha:g} x ({tuned})"
    extra.setdefault("training", {})["weight_interpolation"] = {"base": str(base), "tuned": str(tuned),
                                                                "alpha_base": alpha}
    return str(save_model(net_t, extra, out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="model directory of the starting prior (e.g. src/pkl_dg/weights)")
    p.add_argument("tuned", help="model directory of the fine-tuned prior")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the base model (default 0.5)")
    p.add_argument("--out", required=True, help="output model directory")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    print(blend_models(a.base, a.tuned, a.alpha, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
