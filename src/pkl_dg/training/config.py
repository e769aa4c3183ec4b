"""The settings of a training run, :class:`TrainConfig`, with what the CLI shows of them.

Like :class:`pkl_dg.settings.RestoreSettings` for restorations, the dataclass is the one
place a training setting's default, help and choices are written: ``pkl-dg train``
(:mod:`pkl_dg.cli.train`) builds its flags from the field metadata (:func:`cli_fields`).
A field without ``help`` is not a flag (set from Python or by a resumed checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from pkl_dg.training.phantoms import TRAINING_MIX, parse_mix

#: share of phantom patches when ``--data`` is given and no fraction is (without it: all)
DATA_PROCEDURAL_FRACTION = 0.25
_WARMUP = 200


def _opt(default: Any, help: str = "", *, flag: str | None = None, metavar: str | None = None,
         choices: tuple[str, ...] | None = None) -> Any:
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices} if help else {}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """All parameters of one training run (see the field metadata for the flags' help)."""

    out: str = field(metadata={"help": "output directory (created)", "flag": None,
                               "metavar": None, "choices": None})
    data: str | None = _opt(None, "folder of sharp images to train on (searched recursively: "
                            "TIFF, PNG, npy; 8/16-bit, float; RGB/colour-LUT images reduced "
                            "to one channel). Whole files are held out for validation "
                            "(--val-fraction); the split is written to OUT/split.json")
    steps: int = _opt(10000, "total optimisation steps")
    #: wall-time budget of this run (None: none); the run ends at --steps or this, first
    minutes: float | None = _opt(None, "stop after this many minutes of training (this run's "
                                 "time, not counting a resumed run's) even if --steps is not "
                                 "reached; with cosine, the decay follows whichever of steps "
                                 "and time is further along", metavar="MIN")
    batch: int = _opt(16, "patches per step")
    patch: int = _opt(128, "patch size in px, multiple of 16")
    lr: float = _opt(2e-4, "Adam learning rate")
    width: int = _opt(32, "UNet base channels, multiple of 8")
    channel_mult: tuple[int, ...] = _opt((1, 2, 2, 4), "channel multipliers per level, comma "
                                         "separated")
    num_res_blocks: int = _opt(1, "residual blocks per level", flag="--blocks")
    attention: bool = _opt(False, "self-attention at the coarsest level")
    output: str = "v"
    device: str = _opt("auto", "where to train: auto picks CUDA, then Apple MPS, then CPU",
                       choices=("auto", "cpu", "cuda", "mps"))
    precision: str = _opt("auto", "auto: bf16 autocast where the device supports it",
                          choices=("auto", "fp32", "bf16"))
    seed: int = _opt(0, "random seed of the weights and the patches")
    ema_decay: float = _opt(0.999, "decay of the exponential moving average of the weights "
                            "(the EMA weights are the model written)")
    warmup: int = _WARMUP
    #: "constant", or "cosine": from ``lr`` at step ``decay_start`` down to 0 at ``steps``
    lr_schedule: str = _opt("constant", f"constant (after a {_WARMUP}-step warm-up), or "
                            "cosine: decay to 0 at --steps, starting where this run (or the "
                            "resumed run's decay) starts", choices=("constant", "cosine"))
    #: step where the cosine decay begins; None: the step this run (or resume) starts at
    decay_start: int | None = None
    grad_clip: float = 1.0
    checkpoint_minutes: float = _opt(10.0, "minutes between resumable checkpoints in "
                                     "OUT/checkpoint")
    log_every: int = _opt(50, "steps between log lines")
    #: share of phantom patches; None: :data:`DATA_PROCEDURAL_FRACTION` with data, else 1
    procedural_fraction: float | None = _opt(
        None, "fraction of patches drawn from phantoms when --data is given (default "
        f"{DATA_PROCEDURAL_FRACTION:g}; without --data every patch is a phantom)")
    #: real-image patches are resampled by a log-uniform factor in [zoom_min, zoom_max]
    zoom_min: float = 0.5
    zoom_max: float = 2.0
    #: probability that a real patch is blurred (Gaussian σ 0.5–2.5 px after resampling)
    real_blur: float = _opt(0.0, "probability that a real patch is blurred with a Gaussian of "
                            "σ 0.5–2.5 px after resampling, so that the prior also knows "
                            "these structures at widefield resolution", metavar="P")
    #: real patches with more than this fraction of saturated pixels are skipped
    max_saturated: float = _opt(0.01, "skip real patches with more than this fraction of "
                                "saturated pixels")
    #: fraction of the files of each source folder (≥ 3 files) held out for validation
    val_fraction: float = _opt(0.2, "fraction of the files of each source folder (with ≥ 3 "
                               "files) held out")
    pool: int = 64
    phantom_mix: str = _opt(TRAINING_MIX, "procedural structure kinds and their weights",
                            metavar="KIND:W,...")
    init: str | None = _opt(None, "start from the weights (and architecture) of a saved "
                            "model, e.g. src/pkl_dg/weights, with a fresh optimiser: "
                            "fine-tuning", metavar="MODEL_DIR")
    teacher: str | None = _opt(None, "distil a saved model: learn the noise it predicts for "
                               "each noisy patch (same patches and timesteps) instead of the "
                               "drawn noise, e.g. a narrower --width from src/pkl_dg/weights",
                               metavar="MODEL_DIR")
    command: str = ""
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting (by its flag)."""
        for f in cli_fields():
            value, choices = getattr(self, f.name), f.metadata["choices"]
            if choices is not None and value not in choices:
                raise ValueError(f"{flag_of(f)} must be {', '.join(choices[:-1])} or "
                                 f"{choices[-1]}, got {value!r}")
        if self.minutes is not None and not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise ValueError(f"--minutes must be a positive number, got {self.minutes}")
        if self.steps < 1:
            raise ValueError(f"--steps must be ≥ 1, got {self.steps}")
        if self.batch < 1:
            raise ValueError(f"--batch must be ≥ 1, got {self.batch}")
        if self.patch < 16 or self.patch % 16:
            raise ValueError(f"--patch must be a multiple of 16 and ≥ 16, got {self.patch}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.width < 8 or self.width % 8:
            raise ValueError(f"--width must be a multiple of 8 (GroupNorm groups), got {self.width}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        parse_mix(self.phantom_mix)
        if not 0 < self.zoom_min <= self.zoom_max:
            raise ValueError(f"--zoom must be 0 < min ≤ max, got {self.zoom_min},{self.zoom_max}")
        if not 0.0 <= self.real_blur <= 1.0:
            raise ValueError(f"--real-blur must be a probability in [0, 1], got {self.real_blur}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.procedural_fraction is not None and not 0.0 <= self.procedural_fraction <= 1.0:
            raise ValueError(f"the procedural fraction must be in [0, 1], got {self.procedural_fraction}")


def cli_fields() -> list[dataclasses.Field]:
    """The fields of :class:`TrainConfig` that are ``pkl-dg train`` flags, in order."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("help")]


def flag_of(f: dataclasses.Field) -> str:
    """The flag of a :func:`cli_fields` field: its ``flag``, else ``--`` + the name with
    '-' for '_'."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")
