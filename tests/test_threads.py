"""The CPU thread policy: one schema field for CLI, widget and metadata; passive OpenMP."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pkl_dg.restoration import restore_iter, run_to_end
from pkl_dg.settings import RestoreSettings
from pkl_dg.threads import default_threads, physical_cores, resolve_threads


def test_automatic_count_leaves_a_core_free():
    assert RestoreSettings().threads == 0
    assert default_threads() == max(1, physical_cores() - 1)
    assert resolve_threads(0) == default_threads() and resolve_threads(3) == 3
    with pytest.raises(ValueError, match="≥ 0"):
        resolve_threads(-1)
    with pytest.raises(ValueError, match="CPU threads"):
        RestoreSettings(threads=-1)


def test_restore_applies_and_records_threads():
    before = torch.get_num_threads()
    y = np.random.default_rng(0).poisson(20.0, (32, 32)).astype(np.float32)
    try:
        result = run_to_end(restore_iter(y, method="rl", rl_iterations=2, threads=1))
        assert torch.get_num_threads() == 1
        assert result.metadata["threads"] == 1 and result.metadata["settings"]["threads"] == 1
        assert result.metadata["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY",
                                                                     "runtime default")
    finally:
        torch.set_num_threads(before)


def _wait_policy(env: dict) -> str:
    code = "import pkl_dg, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_importing_pkl_dg_sets_passive_wait_policy_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _wait_policy(env) == "PASSIVE"
    assert _wait_policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    # too late once torch is loaded: then it is left alone (and not claimed)
    code = ("import torch, pkl_dg.threads as t, os; "
            "print(t.set_passive_wait_policy(), os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False None"
