"""The one settings schema of a restoration.

:class:`RestoreSettings` feeds the CLI flags (``pkl_dg.cli``), the napari dock widget and
the metadata written with every result, so the three never drift apart. Every field
carries its label, tooltip (in a microscopist's words), group, bounds and choices in the
dataclass field metadata; consumers read them through :func:`field_specs`.

A field's ``applies_when`` says when it has an effect: a tuple of alternatives, each a
mapping of setting → the values it must take (JSON-describable, e.g.
``({"method": ("rl",)},)``); the field applies when one alternative holds in full, and
always when there is none. :mod:`pkl_dg.settings_rules` evaluates it.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import textwrap
from dataclasses import dataclass, field
from typing import Any

METHODS = ("pkl", "anscombe", "l2", "none", "rl")
METHOD_LABELS = {
    "pkl": "PKL (Poisson KL)",
    "anscombe": "Anscombe + L2",
    "l2": "L2",
    "none": "Unguided prior",
    "rl": "Richardson–Lucy",
}
PSF_KINDS = ("gaussian", "airy", "vectorial", "none", "file", "array")
MODES = ("2d", "3d")
STEP_RULES = ("proximal", "poisson", "adaptive")
RAMPS = ("linear", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
CALIBRATIONS = ("auto", "manual")
#: the settings that describe the camera; giving any of them means calibrating by hand
CAMERA_FIELDS = ("offset", "gain", "read_noise")
#: settings that describe the image itself (its sampling), recorded with a result even when
#: the run's PSF did not need them
IMAGE_FIELDS = ("pixel_size_nm", "z_step_nm")
RL_ACCELERATIONS = ("none", "biggs-andrews")
#: methods that pull a diffusion prior's samples toward the data
GUIDED_METHODS = ("pkl", "anscombe", "l2")
#: methods that run the diffusion prior (guided, or unguided with 'none')
PRIOR_METHODS = GUIDED_METHODS + ("none",)

_PRIOR = ({"method": PRIOR_METHODS},)
_GUIDED = ({"method": GUIDED_METHODS},)
_RL = ({"method": ("rl",)},)
_MANUAL = ({"calibration": ("manual",)},)
_POISSON_STEPS = ("poisson", "adaptive")
#: λ: PKL's with every step rule; L2 and Anscombe take λ = 1 with the proximal rule
_LAM = ({"method": ("pkl",)}, {"method": ("anscombe", "l2"), "step_rule": _POISSON_STEPS})
#: the noise-level stop belongs to Poisson steps (PKL's proximal step weighs the prior)
_STOP = ({"method": ("anscombe", "l2")}, {"method": ("pkl",), "step_rule": _POISSON_STEPS})


def _kinds(*kinds: str, mode: str | None = None) -> tuple[dict[str, tuple], ...]:
    """``applies_when`` of a PSF setting: the PSF models (and mode) it applies to."""
    return ({"psf_kind": kinds, **({"mode": (mode,)} if mode else {})},)


def _f(default: Any, label: str, help: str, group: str, *, min: float | None = None,
       max: float | None = None, choices: tuple | None = None, unit: str = "",
       applies_when: tuple[dict[str, tuple], ...] = ()) -> Any:
    meta = {"label": label, "help": help, "group": group, "min": min, "max": max,
            "choices": choices, "unit": unit, "applies_when": applies_when}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RestoreSettings:
    """All parameters of one restoration; frozen (a changed copy: :meth:`replace`).

    Each field's meaning, unit, range and choices are under Parameters (generated from the
    schema; :func:`pkl_dg.settings.field_specs` returns them). Values are normalised when
    built: numpy scalars become Python ``int``/``float``/``str``; an integer setting takes
    integral numbers only (``3``, ``3.0``, ``np.int64(3)``); a text one a str or path.

    Raises
    ------
    TypeError
        Text, None or a bool for a number; a number for a text setting.
    ValueError
        A non-integral number for an integer setting; NaN; out of range; not a choice.
    """

    # --- Data ----------------------------------------------------------------------
    mode: str = _f("2d", "Deconvolution", "'2d': every YX plane of a stack is restored on "
                   "its own with a 2D PSF. '3d': a Z-stack (last three axes ZYX) is "
                   "restored as a volume with a 3D PSF; the 2D prior denoises every plane.",
                   "Data", choices=MODES)

    # --- PSF -----------------------------------------------------------------------
    psf_kind: str = _f("gaussian", "PSF model", "Where the point-spread function comes from: a "
                       "Gaussian of given width, an Airy (Born–Wolf) or widefield 3D vectorial "
                       "PSF from the optics (Gibson–Lanni aberrations when the sample's index "
                       "differs from the immersion's), none (no blur: denoising only, a one-pixel "
                       "PSF), a PSF file, or an array/layer you supply.", "PSF", choices=PSF_KINDS)
    psf_sigma: float = _f(2.0, "Gaussian σ", "Standard deviation of the Gaussian PSF along X "
                          "(and Y unless σ Y is set). FWHM = 2.355·σ.", "PSF",
                          min=0.3, max=50.0, unit="px", applies_when=_kinds("gaussian"))
    psf_sigma_y: float = _f(0.0, "Gaussian σ Y", "Standard deviation along Y for an "
                            "anisotropic Gaussian PSF; 0 means the same as σ.", "PSF",
                            min=0.0, max=50.0, unit="px", applies_when=_kinds("gaussian"))
    psf_sigma_z: float = _f(0.0, "Gaussian σ Z", "Standard deviation of a 3D Gaussian PSF "
                            "along Z, in planes (3D mode only).", "PSF", min=0.0, max=50.0,
                            unit="planes", applies_when=_kinds("gaussian", mode="3d"))
    na: float = _f(1.4, "Numerical aperture", "Numerical aperture of the objective (Airy and "
                   "vectorial PSF).",
                   "PSF", min=0.05, max=1.7, applies_when=_kinds("airy", "vectorial"))
    wavelength_nm: float = _f(520.0, "Emission wavelength", "Peak emission wavelength of the "
                              "fluorophore (Airy and vectorial PSF).", "PSF", min=200.0,
                              max=1500.0, unit="nm", applies_when=_kinds("airy", "vectorial"))
    immersion_ri: float = _f(1.515, "Immersion index", "Refractive index of the objective's "
                             "immersion medium (vectorial PSF): 1.515 oil, 1.33 water, 1.0 "
                             "air, 1.405 silicone.", "PSF", min=1.0, max=2.0,
                             applies_when=_kinds("vectorial"))
    sample_ri: float = _f(1.515, "Sample index", "Refractive index of the sample (vectorial "
                          "PSF): 1.33 live cells in medium, ~1.46 glycerol mountants, 1.515 "
                          "matched to oil. A mismatch with the immersion index blurs and "
                          "lengthens the PSF with depth.", "PSF", min=1.0, max=2.0,
                          applies_when=_kinds("vectorial"))
    psf_depth_nm: float = _f(0.0, "Depth below coverslip", "Depth of the imaged plane below "
                             "the coverslip (vectorial PSF); matters when the sample and "
                             "immersion indices differ.", "PSF", min=0.0, max=500000.0,
                             unit="nm", applies_when=_kinds("vectorial"))
    pixel_size_nm: float = _f(65.0, "Pixel size", "Size of one image pixel in the sample plane "
                              "(camera pixel / magnification).", "PSF", min=1.0, max=10000.0,
                              unit="nm",
                              applies_when=_kinds("airy", "vectorial", "file", "array"))
    z_step_nm: float = _f(0.0, "Z step", "Distance between the planes of the image stack "
                          "(3D mode); needed when a measured PSF's Z step differs from it. "
                          "0 = not given.", "PSF", min=0.0, max=100000.0, unit="nm",
                          applies_when=({"mode": ("3d",)},))
    psf_path: str = _f("", "PSF file", "TIFF or .npy PSF image (a 3D PSF gives its in-focus "
                       "plane in 2D mode). Used when PSF model is 'file'. Cleaned like every "
                       "measured PSF: baseline and noise removed, centred, normalised.", "PSF",
                       applies_when=_kinds("file"))
    psf_pixel_size_nm: float = _f(0.0, "PSF pixel size", "Pixel size of a measured PSF (file, "
                                  "layer or array) when it differs from the image's (it is "
                                  "then resampled, in 2D and 3D mode); 0 means the same as "
                                  "the image.", "PSF", min=0.0, max=10000.0, unit="nm",
                                  applies_when=_kinds("file", "array"))
    psf_z_step_nm: float = _f(0.0, "PSF Z step", "Plane spacing of a measured 3D PSF when it "
                              "differs from the image's Z step (it is then resampled along "
                              "Z; 3D mode); 0 means the same as the image.", "PSF", min=0.0,
                              max=100000.0, unit="nm",
                              applies_when=_kinds("file", "array", mode="3d"))

    # --- Photon calibration ---------------------------------------------------------
    calibration: str = _f("auto", "Calibration", "'auto': estimate the camera gain, offset "
                          "and read noise from the image itself (Poisson–Gaussian noise fit: "
                          "the noise variance grows linearly with the signal), so ADU, 8-bit "
                          "and normalised files restore as photon counts; the estimate is "
                          "shown and saved with the result. 'manual': use the offset, gain "
                          "and read noise below.", "Calibration", choices=CALIBRATIONS)
    offset: float = _f(0.0, "Camera offset", "Camera baseline in ADU, subtracted first (calibration 'manual'). "
                       "May be negative (data exported with the baseline already removed "
                       "and shifted below zero).", "Calibration", min=-1e6, max=1e6,
                       unit="ADU", applies_when=_MANUAL)
    gain: float = _f(1.0, "Gain", "Camera conversion gain in photo-electrons per ADU; the "
                     "image is converted to photon counts as (ADU − offset)·gain. Data "
                     "scaled to 0–1 need gains of thousands (a 16-bit image ÷ 65535: "
                     "65535 × the camera's gain).", "Calibration", min=1e-4, max=1e6,
                     unit="e⁻/ADU", applies_when=_MANUAL)
    background: float = _f(-1.0, "Background", "Constant background in photons per pixel "
                           "(out-of-focus haze, dark signal). −1 estimates it from the image "
                           "(its 1st percentile). With calibration 'auto' the estimated offset "
                           "is the image's dark level, background included: keep −1 there (a "
                           "value given here is added on top).", "Calibration",
                           min=-1.0, max=1e7,
                           unit="photons")
    read_noise: float = _f(0.0, "Read noise", "Camera read noise (rms) in electrons; enters "
                           "the PKL likelihood as a variance shift.", "Calibration",
                           min=0.0, max=1000.0, unit="e⁻", applies_when=_MANUAL)

    # --- Guidance -----------------------------------------------------------------
    method: str = _f("pkl", "Method", "How the restoration agrees with the measurement: PKL "
                     "(Poisson likelihood, best for photon-limited data), Anscombe + L2, "
                     "plain L2, the unguided prior (ignores the data; shows what the model "
                     "invents), or classical Richardson–Lucy.", "Guidance", choices=METHODS)
    step_rule: str = _f("proximal", "Step rule", "'proximal' (PKL; L2 and Anscombe guidance then take Poisson steps with λ = 1): each step finds "
                        "the image that best balances the Poisson likelihood of the data "
                        "against the prior's estimate, weighted by the prior's uncertainty at "
                        "that step (λ·its noise level), so the prior denoises and the data "
                        "sharpen. 'poisson': Poisson-preconditioned steps x ← x − λ·x/Aᵀ1·∇f "
                        "(λ = 1 is one Richardson–Lucy iteration). 'adaptive': the paper's "
                        "normalised step, moving x by λ·‖x‖ along −∇f/‖∇f‖.", "Guidance",
                        choices=STEP_RULES, applies_when=_GUIDED)
    lam: float = _f(0.5, "Step size λ", "Guidance strength (see step rule). Proximal: the "
                    "data's weight against the prior (0.5: measured best for denoising real "
                    "widefield frames; larger trusts the data more). Poisson/adaptive: "
                    "the step per sub-iteration (1 = one Richardson–Lucy iteration).",
                    "Guidance", min=0.0, max=10.0, applies_when=_LAM)
    sub_iterations: int = _f(0, "Sub-iterations", "Data-consistency iterations per "
                             "diffusion step. More follow the data more closely (like more "
                             "RL iterations). 0 = automatic: proximal rule, the automatic RL "
                             "count shared out over the steps (from 4 a step, half as many, "
                             "accelerated); Poisson rule, from the brightness (5 at ~10 "
                             "photons peak, ~22 at 100, ~100 at 1000).", "Guidance", min=0,
                             max=200, applies_when=_GUIDED)
    discrepancy: float = _f(-1.0, "Stop at noise level", "Each diffusion step stops its "
                            "sub-iterations once the result fits the data down to the "
                            "expected Poisson noise (deviance ≤ this × its expected value), "
                            "so a smooth object is not over-fitted. −1 = automatic (1.0 at "
                            "≤ 30 photons peak, 0.95 from 100); 0 = always run all "
                            "sub-iterations.", "Guidance", min=-1.0, max=10.0,
                            applies_when=_STOP)
    t_threshold: int = _f(800, "Full data pull from t", "The diffusion time (of T = 1000: "
                          "pure noise) from which the data pull acts at full strength; "
                          "before it, it ramps up from 0, so the prior alone shapes the "
                          "first, noisiest steps. 800: full from the first fifth of the "
                          "noise schedule on (T_thr in the PKL-DG paper).", "Guidance",
                          min=0, max=999, applies_when=_GUIDED)
    ramp: str = _f("linear", "Ramp", "Shape of the data pull's ramp from 0 (t = T) to full "
                   "strength ('Full data pull from t').", "Guidance",
                   choices=RAMPS, applies_when=_GUIDED)
    final_noise: float = _f(0.3, "Final denoising", "A last network pass over the result "
                            "removes the measurement noise the data steps left in it, taken "
                            "as this fraction of the noise std at the mean level, together "
                            "with what the posterior samples did not average out (0 = off; "
                            "0.25–0.35 scored best on the real-data dev set).", "Guidance",
                            min=0.0, max=2.0, applies_when=_GUIDED)

    # --- Sampler / iterations -------------------------------------------------------
    steps: int = _f(11, "Diffusion steps", "DDIM steps (each shows one frame); 11 scored "
                    "within 0.03 dB of 13 and 15 and above 25 on the dev set, fewer lose "
                    "quality fast (10: −0.1 dB, 8: −0.4 dB, 6: −1.5 dB; below that the "
                    "result turns blotchy).", "Sampler", min=1, max=1000, applies_when=_PRIOR)
    eta: float = _f(1.0, "η (stochasticity)", "DDIM η: how much fresh noise each step "
                    "draws. 1 (ancestral sampling) scored 0.4–0.6 dB above 0 (each sample "
                    "a fixed function of its starting noise) on test phantoms. Either way "
                    "the same seed gives the same result.", "Sampler", min=0.0, max=1.0,
                    applies_when=_PRIOR)
    seed: int = _f(0, "Seed", "Random seed: the same seed and thread count give the same result.", "Sampler",
                   min=0, max=2**31 - 1, applies_when=_PRIOR)
    rl_iterations: int = _f(0, "RL iterations", "Iterations of Richardson–Lucy (method "
                            "'rl'). 0 = automatic: stop when the fit reaches the noise level, "
                            "or when it stops improving against the remaining misfit (an "
                            "inexact PSF).", "Sampler", min=0, max=10000, applies_when=_RL)
    rl_acceleration: str = _f("none", "RL acceleration", "Richardson–Lucy with Biggs–Andrews "
                              "vector extrapolation (as MATLAB's deconvlucy): each iteration "
                              "extrapolates along the last changes, so bright, smooth data "
                              "reach their best in about a third of the iterations; on sharp, "
                              "noisy objects the best can be a little (≤ 0.4 dB) below plain "
                              "RL's. The misfit is read out on the last iteration only.",
                              "Sampler",
                              choices=RL_ACCELERATIONS, applies_when=_RL)
    tv_weight: float = _f(0.0, "RL TV weight", "Total-variation regularisation of "
                          "Richardson–Lucy (0 = off; 0.002 is mild).", "Sampler",
                          min=0.0, max=0.1, applies_when=_RL)

    samples: int = _f(4, "Posterior samples", "Number of restorations drawn at once with "
                      "different noise. The result is their mean (sharper and more faithful "
                      "than one sample: +0.5–0.9 dB measured) and their per-pixel standard "
                      "deviation shows where the model is unsure. Cost grows with the number.",
                      "Sampler", min=1, max=64, applies_when=_PRIOR)

    # --- Model / device ---------------------------------------------------------------
    model: str = _f("", "Model file", "A .safetensors prior (with its .json config beside "
                    "it); empty uses the prior shipped with the plugin.", "Model",
                    applies_when=_PRIOR)
    device: str = _f("auto", "Device", "Where to compute: auto picks CUDA, then Apple MPS, "
                     "then CPU.", "Model", choices=DEVICES)
    precision: str = _f("auto", "Precision", "Network precision: auto uses bf16 where the "
                        "hardware supports it (physics always runs in float32).", "Model",
                        choices=PRECISIONS, applies_when=_PRIOR)
    threads: int = _f(0, "CPU threads", "Threads torch computes with on the CPU; 0 = "
                      "automatic: one per physical core but one, so a busy machine (another "
                      "program, a second run) stays usable. Threads competing for busy cores "
                      "can make a run many times slower.", "Model", min=0, max=256)
    tile_size: int = _f(1024, "Network tile", "Images wider or taller than this run the "
                        "network on overlapping tiles (bounded memory); 0 never tiles. The "
                        "physics always acts on the whole image.", "Model", min=0,
                        max=16384, unit="px", applies_when=_PRIOR)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # frozen: normalised in place
            object.__setattr__(self, f.name, _coerce(f, getattr(self, f.name)))
        self.validate()

    # ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range or unknown value."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            label = meta["label"]
            if meta["choices"] is not None and value not in meta["choices"]:
                raise ValueError(f"{label} ({f.name}) must be one of "
                                 f"{', '.join(meta['choices'])}; got {value!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if value != value:  # NaN
                    raise ValueError(f"{label} ({f.name}) is NaN")
                lo, hi = meta["min"], meta["max"]
                if lo is not None and value < lo or hi is not None and value > hi:
                    raise ValueError(f"{label} ({f.name}) = {value} is outside "
                                     f"[{lo}, {hi}] {meta['unit']}".rstrip())

    def replace(self, **changes: Any) -> "RestoreSettings":
        """Return a copy with ``changes`` applied (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RestoreSettings":
        """Build from a dict, e.g. saved metadata; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        typed = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                typed[f.name] = _coerce(f, data[f.name], text=True)
        return cls(**typed)


def _coerce(f: dataclasses.Field, value: Any, *, text: bool = False) -> Any:
    """``value`` as setting ``f``'s Python type (``int``, ``float`` or ``str``), else a
    one-line TypeError (wrong kind) or ValueError naming it (see the class docstring).
    ``text``: numbers may be given as text too ("2", "0.5": a saved file, a CLI flag)."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    who = f"{f.metadata['label']} ({f.name})"
    if kind not in ("int", "float"):
        if isinstance(value, (str, os.PathLike)):
            return str(os.fspath(value))
        raise TypeError(f"{who} must be text (a str), got {value!r} ({type(value).__name__})")
    what = "a whole number (int)" if kind == "int" else "a number"
    if text and isinstance(value, str):
        try:
            return int(value) if kind == "int" else float(value)
        except ValueError:
            raise ValueError(f"{who} must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{who} must be {what}, got {value!r} ({type(value).__name__})")
    if kind == "float":
        return float(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if not float(value).is_integer():
        raise ValueError(f"{who} must be {what}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class FieldSpec:
    """What a consumer (CLI, widget) needs to present one setting."""

    name: str
    type: str
    default: Any
    label: str
    help: str
    group: str
    min: float | None
    max: float | None
    choices: tuple | None
    unit: str
    #: when the field has an effect (see the module docstring); empty: always
    applies_when: tuple[dict[str, tuple], ...]


def field_specs() -> list[FieldSpec]:
    """All settings in declaration order, with their presentation metadata."""
    out = []
    for f in dataclasses.fields(RestoreSettings):
        type_name = f.type if isinstance(f.type, str) else f.type.__name__
        out.append(FieldSpec(f.name, type_name, f.default, **f.metadata))
    return out


def _parameters_doc() -> str:
    """RestoreSettings' Parameters section, from the field metadata (so it never drifts)."""
    lines = ["    Parameters", "    ----------"]
    for f in field_specs():
        facts = [f.label, f"unit {f.unit}" if f.unit else "",
                 f"range {f.min:g} to {f.max:g}" if f.max is not None else "",
                 "one of " + ", ".join(map(repr, f.choices)) if f.choices else ""]
        lines.append(f"    {f.name} : {f.type}, default {f.default!r}")
        lines += textwrap.wrap(f"{'; '.join(filter(None, facts))}. {f.help}", 92,
                               initial_indent=" " * 8, subsequent_indent=" " * 8)
    return "\n".join(lines) + "\n\n"


if RestoreSettings.__doc__:  # None under python -OO
    RestoreSettings.__doc__ = RestoreSettings.__doc__.replace(
        "    Raises\n", _parameters_doc() + "    Raises\n", 1)
