"""Settings of the dock widget persisted between sessions (JSON, no Qt).

The file holds the :class:`~pkl_dg.settings.RestoreSettings` of the last session plus the few
choices that exist only in the widget (e.g. "PSF from a bead layer"). Its location is
``$PKL_DG_CONFIG_DIR/napari-widget.json`` when that variable is set (tests use it), otherwise
the platform's user config directory (``platformdirs.user_config_dir("napari-pkl-dg")``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pkl_dg.settings import RestoreSettings

CONFIG_ENV = "PKL_DG_CONFIG_DIR"
FILE_NAME = "napari-widget.json"
FORMAT_VERSION = 1

#: Where the PSF comes from, as offered by the widget. "layer" and "beads" are passed to the
#: core as an array (``psf_kind="array"``); the others are the core's own PSF kinds.
PSF_SOURCES = {
    "gaussian": "Gaussian (σ)",
    "airy": "Airy (NA, wavelength)",
    "vectorial": "Widefield 3D from optics (vectorial)",
    "none": "None (denoise only)",
    "file": "PSF file",
    "layer": "PSF image layer",
    "beads": "Extract from bead image",
}


#: How much of a stack one run restores (the core's "mode" says whether a block is a YX plane
#: or a ZYX volume).
STACK_EXTENTS = {
    "displayed": "Displayed plane / volume",
    "all": "Whole stack",
}


@dataclass
class WidgetState:
    """Everything the widget persists."""

    settings: RestoreSettings = field(default_factory=RestoreSettings)
    psf_source: str = "gaussian"
    bead_box: int = 25
    stack: str = "displayed"

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "settings": self.settings.to_dict(),
                "widget": {"psf_source": self.psf_source, "bead_box": self.bead_box,
                           "stack": self.stack}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WidgetState":
        """Validate and build; raises ``ValueError`` with a readable message."""
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported format (expected version {FORMAT_VERSION})")
        settings = RestoreSettings.from_dict(data.get("settings", {}))
        extra = data.get("widget", {})
        psf_source = str(extra.get("psf_source", "gaussian"))
        if psf_source not in PSF_SOURCES:
            raise ValueError(f"unknown PSF source {psf_source!r}")
        bead_box = int(extra.get("bead_box", 25))
        if not 5 <= bead_box <= 255:
            raise ValueError(f"bead box {bead_box} outside [5, 255]")
        stack = str(extra.get("stack", "displayed"))
        if stack not in STACK_EXTENTS:
            raise ValueError(f"unknown stack extent {stack!r}")
        return cls(settings=settings, psf_source=psf_source, bead_box=bead_box, stack=stack)


def default_config_dir() -> Path:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-pkl-dg", appauthor=False))


class SettingsStore:
    """Load/save :class:`WidgetState` as JSON at ``path``."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_config_dir() / FILE_NAME

    def load(self) -> tuple[WidgetState, str | None]:
        """Return the saved state, or defaults plus a message saying why they were used.

        The message is ``None`` when there was simply nothing saved yet; otherwise the caller
        shows it to the user (a corrupt or outdated file is never ignored silently).
        """
        if not self.path.exists():
            return WidgetState(), None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return WidgetState.from_dict(data), None
        except (OSError, ValueError, TypeError) as exc:
            return WidgetState(), (f"Saved PKL settings in {self.path} could not be used "
                                   f"({exc}); starting from the defaults.")

    def save(self, state: WidgetState) -> None:
        """Write atomically (a crash never leaves half a file). Raises ``OSError``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)
