"""Access to the field-report cases in ``../shared/cases`` (issue 13).

Each case folder holds a small synthetic input that showed a fault users report; tests that
read one skip, saying so, when the folder is absent (CI runs without it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CASES = Path(__file__).resolve().parents[1].parent / "shared" / "cases"


def case_dir(name: str) -> Path:
    """The folder of case ``name``; skips the test when it is not present."""
    folder = CASES / name
    if not folder.is_dir():
        pytest.skip(f"field-report case {name} not present at {folder} (the shared/cases "
                    "folder beside the checkout); the self-contained tests cover its kind")
    return folder


def read(name: str, file: str) -> np.ndarray:
    """One file of case ``name`` (TIFF or .npy)."""
    path = case_dir(name) / file
    if path.suffix == ".npy":
        return np.load(path)
    import tifffile

    return tifffile.imread(path)
