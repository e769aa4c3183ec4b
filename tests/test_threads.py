"""The CPU thread policy: one schema field for CLI, widget and metadata; passive OpenMP."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pkl_dg.restoration import restore_iter
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
        result = restore_iter(y, method="rl", rl_iterations=2, threads=1).finish()
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


def test_bench_load_times_a_restore_and_renders_its_row():
    from pkl_dg.bench.load import _restore_seconds, load_section
    from pkl_dg.cli import build_parser

    before = torch.get_num_threads()
    try:
        info = _restore_seconds("rl", 48, 1, smoke=True)
    finally:
        torch.set_num_threads(before)
    assert info["seconds"] > 0 and info["threads"] == 1 and info["steps"] == 2
    row = {"case": "rl", "size": 2048, "threads": 1, "steps": 30, "samples": None,
           "idle": {"seconds": 40.0, "load_average_1min": [0.5]},
           "loaded": {"seconds": 48.0, "load_average_1min": [1.5]}, "ratio": 1.2}
    text = "\n".join(load_section({"created": "now", "rows": [row]}))
    assert "| Richardson–Lucy (default settings), 30 iterations | 2048² | 1 (automatic) | " \
           "40.0 | 48.0 | **1.20×** | 0.5 / 1.5 | 1 |" in text
    two = {**row, "threads": 2, "threads_requested": 2, "note": "idle box", "repeats": 3}
    text = "\n".join(load_section({"created": "now", "rows": [row, two]}))
    assert "| Richardson–Lucy (default settings), 30 iterations [1] | 2048² | 2 | 40.0" in text
    assert "[1] idle box." in text
    args = build_parser().parse_args(["bench", "load", "--json", "x.json"])
    assert args.func.__name__ == "_load" and args.threads is None


def test_bench_load_cases_replaces_only_their_rows(tmp_path, monkeypatch):
    import json

    import pkl_dg.bench.load as load_mod
    from pkl_dg.cli import main

    path = tmp_path / "load.json"
    path.write_text(json.dumps({"kind": "load", "created": "t0", "repeats": 3, "note": "n",
                                "rows": [{"case": "pkl", "ratio": 1.9, "threads": 1},
                                         {"case": "rl", "ratio": 3.0, "threads": 1}]}))
    monkeypatch.setattr(load_mod, "run_load", lambda **kw: {
        "kind": "load", "created": "t1", "repeats": kw["repeats"],
        "rows": [{"case": c, "ratio": 2.0, "repeats": kw["repeats"],
                  "threads": kw["threads"] or 1} for c in kw["only"]]})
    before = torch.get_num_threads()
    try:
        assert main(["bench", "load", "--cases", "rl", "--repeats", "7", "--threads", "1",
                     "--json", str(path), "--note", "again"]) == 0
        # another thread count adds its rows beside those of the first
        assert main(["bench", "load", "--cases", "pkl", "--repeats", "3", "--threads", "2",
                     "--json", str(path)]) == 0
    finally:
        torch.set_num_threads(before)
    data = json.loads(path.read_text())
    assert [(r["case"], r["threads"], r["ratio"], r["repeats"]) for r in data["rows"]] == \
        [("pkl", 1, 1.9, 3), ("rl", 1, 2.0, 7), ("pkl", 2, 2.0, 3)]
    assert [r["note"] for r in data["rows"]] == ["n", "again", None]


def test_small_richardson_lucy_iterations_run_on_one_thread_and_give_the_count_back():
    """A small image's RL iterations (FFT grid under ONE_THREAD_BELOW_PX) run on one
    thread; between iterations, and after an error, the caller's count is back."""
    from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
    from pkl_dg.richardson_lucy import rl_iterates
    from pkl_dg.threads import one_thread

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="inside"):
            with one_thread():
                assert torch.get_num_threads() == 1
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
        with one_thread(False):
            assert torch.get_num_threads() == 2
        seen = []
        fm = ForwardModel(PSFConvolution(gaussian_psf(1.5)), background=1.0)

        def stop(it):
            seen.append(torch.get_num_threads())
            return it.k == 3

        y = torch.full((40, 40), 5.0)
        for it in rl_iterates(y, fm, 10, stop=stop):
            assert torch.get_num_threads() == 2  # the consumer's count while it runs
        assert it.k == 3 and seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _tiled_workspace(monkeypatch, side=400):
    import pkl_dg.physics.filtering as filtering
    from pkl_dg.physics import PSFConvolution, gaussian_psf

    monkeypatch.setattr(filtering, "BLOCK_FROM", 64)
    conv = PSFConvolution(gaussian_psf(1.5))
    x = torch.rand(side, side + 7, generator=torch.Generator().manual_seed(0))
    ws = conv.workspace(tuple(x.shape))
    assert ws._blocked
    return conv, x, ws


def _whole_blur(monkeypatch, conv, x):
    import pkl_dg.physics.filtering as filtering

    monkeypatch.setattr(filtering, "BLOCK_FROM", 10**6)
    whole = conv.workspace(tuple(x.shape))
    assert not whole._blocked
    return whole.A(x).clone()


def test_blur_tiles_are_shared_by_the_threads_each_on_one_torch_thread(monkeypatch):
    """The tiled blur of a large image splits its tiles among as many Python threads as
    torch has threads (the caller and helpers), each running torch on one thread, gives the
    caller's count back and equals the one-FFT blur."""
    import threading

    before, seen = torch.get_num_threads(), []
    real_rfft2 = torch.fft.rfft2

    def spy(*a, **k):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return real_rfft2(*a, **k)

    try:
        torch.set_num_threads(2)
        conv, x, ws = _tiled_workspace(monkeypatch, side=1200)  # 16 jobs of up to 4 tiles
        monkeypatch.setattr(torch.fft, "rfft2", spy)
        out = ws.A(x).clone()
        monkeypatch.setattr(torch.fft, "rfft2", real_rfft2)
        assert seen and {n for _, n in seen} == {1} and torch.get_num_threads() == 2
        assert len({ident for ident, _ in seen}) == 2  # the caller and one helper
        torch.testing.assert_close(out, _whole_blur(monkeypatch, conv, x), rtol=1e-4,
                                   atol=1e-4)
        seen.clear()
        torch.set_num_threads(1)  # one thread: no helper
        monkeypatch.setattr(torch.fft, "rfft2", spy)
        _tiled_workspace(monkeypatch, side=1200)[2].A(x)
        monkeypatch.setattr(torch.fft, "rfft2", real_rfft2)
        assert {ident for ident, _ in seen} == {threading.get_ident()}
    finally:
        torch.set_num_threads(before)


def test_blur_tiles_under_inference_mode_and_after_an_error(monkeypatch):
    """Helpers run in the caller's autograd mode (writing an inference-mode buffer from a
    helper outside it failed); a failing job's error reaches the caller once every job has
    stopped, and the next blur works."""
    before = torch.get_num_threads()
    real_rfft2, calls = torch.fft.rfft2, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("tile failed")
        return real_rfft2(*a, **k)

    try:
        torch.set_num_threads(2)
        conv, x, ws = _tiled_workspace(monkeypatch, side=1200)
        with torch.inference_mode():
            inferred = conv.workspace(tuple(x.shape)).A(x).clone()
        monkeypatch.setattr(torch.fft, "rfft2", failing)
        with pytest.raises(RuntimeError, match="tile failed"):
            ws.A(x)
        assert len(calls) < 16  # the remaining jobs were dropped
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(torch.fft, "rfft2", real_rfft2)
        torch.testing.assert_close(ws.A(x), inferred)
    finally:
        torch.set_num_threads(before)


def _blur_in_child(queue):
    from pkl_dg.physics.filtering import valid_filter

    # OpenMP (libgomp) cannot run a parallel region in a child forked after the parent ran
    # one, so the child makes its tensors on one thread; the tiles run on one thread each
    torch.set_num_threads(1)
    u, out = torch.ones(1, 1316, 1316), torch.empty(1, 1300, 1300)
    otf = torch.ones(320, 161, dtype=torch.complex64)
    torch.set_num_threads(2)
    valid_filter(u, otf, (8, 8), (1300, 1300), out=out)
    torch.set_num_threads(1)
    queue.put(float(out.mean()))


def test_a_forked_child_gets_helper_threads_of_its_own(monkeypatch):
    """Threads do not survive a fork: a child that inherited the parent's helper pool must
    start its own, not wait forever for the parent's threads."""
    import multiprocessing

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _tiled_workspace(monkeypatch)[2].A(torch.rand(400, 407))  # the parent's pool exists
    finally:
        torch.set_num_threads(before)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_blur_in_child, args=(queue,))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child's tiled blur did not finish")
    assert child.exitcode == 0 and queue.get(timeout=5) == pytest.approx(1.0)


def test_work_beside_runs_on_a_helper_with_threads_to_spare_and_lazily_without():
    import threading

    from pkl_dg.threads import beside

    before = torch.get_num_threads()
    ran = []

    def job(x):
        ran.append(threading.get_ident())
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    try:
        torch.set_num_threads(1)
        later = beside(job, 3)
        assert ran == []  # not run until its result is asked for
        assert later() == 6 and ran == [threading.get_ident()]
        failing = beside(job, -1)
        with pytest.raises(ValueError, match="negative"):
            failing()
        torch.set_num_threads(2)
        ran.clear()
        later = beside(job, 4)
        assert later() == 8 and ran and ran[0] != threading.get_ident()
        with pytest.raises(ValueError, match="negative"):
            beside(job, -1)()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cap", [500, 7])
def test_the_stop_is_judged_beside_the_next_iteration_with_the_same_outcome(monkeypatch, cap):
    """A small image's RL runs on one thread; with two, AutoStop judges iterate k on a
    helper thread while iterate k + 1 is computed: the run must end at the same iterate
    (k + 1 dropped), with the same record, also when the cap ends it first."""
    import threading

    from pkl_dg.guidance.stopping import AutoStop
    from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
    from pkl_dg.richardson_lucy import rl_iterates

    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.poisson(np.full((64, 64), 30.0)).astype(np.float32))
    y[20:30, 20:40] += 200.0
    fm = ForwardModel(PSFConvolution(gaussian_psf(2.5)), 1.0)
    judged_on = []
    judge = AutoStop._judge

    def recording(self, k, mu):
        judged_on.append(threading.get_ident())
        return judge(self, k, mu)

    monkeypatch.setattr(AutoStop, "_judge", recording)
    before, runs = torch.get_num_threads(), {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            judged_on.clear()
            rule = AutoStop(y, fm)
            with torch.inference_mode():
                xs = [it.x.clone() for it in rl_iterates(y, fm, cap, stop=rule)]
            runs[threads] = (len(xs), rule.k, rule.reason, rule.ratio, xs[-1])
            assert (threading.get_ident() in judged_on) == (threads == 1)
    finally:
        torch.set_num_threads(before)
    (n1, k1, why1, r1, x1), (n2, k2, why2, r2, x2) = runs[1], runs[2]
    assert (n1, k1, why1, r1) == (n2, k2, why2, r2) and n1 == k1
    assert (why1 == "") == (cap == 7)  # the cap ended the short run
    assert torch.equal(x1, x2)
