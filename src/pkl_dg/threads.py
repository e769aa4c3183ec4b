"""CPU thread policy of a restoration (no torch at import time).

Measured here (2 cores, torch 2.13 CPU, other jobs running; a default 128² PKL restore /
30 RL iterations at 1024², seconds; single runs, so ±2× noise from the other jobs), with
and without one extra busy process:

===========================  =============  ==============
threads, OpenMP wait policy  no competitor  one busy process
===========================  =============  ==============
2 (torch's default), active  0.66 / 5.6     56.0 / 13.5
1, active                    1.02 / 1.2     3.1 / 6.6
1, passive                   1.10 / 1.4     5.7 / 4.1
===========================  =============  ==============

Threads that spin-wait for a sibling preempted by another process make a run many times
slower (18× here; 33–70× in issue 16's measurements), while the extra thread gains at most
about 1.5× on an idle machine. So the automatic count is ``physical cores − 1`` (at least 1), and
OpenMP's *passive* wait policy (idle threads sleep instead of spinning) keeps any
multi-threaded run from starving a busy machine. The policy is read once, when the OpenMP
runtime loads with torch, so :func:`set_passive_wait_policy` must run before
``import torch``; ``pkl_dg`` calls it on import and a user's own ``OMP_WAIT_POLICY``
always wins. ``pkl-dg bench load`` measures the result (BENCHMARKS.md, "Under load").

The count is the ``threads`` field of :class:`pkl_dg.settings.RestoreSettings` (0 means
automatic), so the CLI (``--threads``), the widget ("CPU threads") and the metadata of each
result share it. ``torch.set_num_threads`` is process-wide: a run sets it for the process.
Work that torch's own threads cannot share well (the tiles of a large image's blur) is
split among the caller and ``threads − 1`` helper threads instead (:func:`helper_pool`);
independent numpy/scipy pieces (the photon calibration's) run beside the caller
(:func:`beside`); the network's calls of one step go half on a helper (:func:`in_two`),
and a mid-sized 2D image's Richardson–Lucy convolutions in two bands
(:mod:`pkl_dg.physics.bands`).
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def set_passive_wait_policy() -> bool:
    """Ask OpenMP threads to sleep when idle; True if this took effect.

    Does nothing (returns False) when the user set ``OMP_WAIT_POLICY`` or torch is already
    imported (its OpenMP runtime has read the variable by then).
    """
    if WAIT_POLICY_ENV in os.environ or "torch" in sys.modules:
        return False
    os.environ[WAIT_POLICY_ENV] = "PASSIVE"
    return True


def physical_cores() -> int:
    """Physical cores this process may use (logical CPUs when that is unknown)."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    import psutil

    physical = psutil.cpu_count(logical=False) or logical
    return max(1, min(physical, logical))


def default_threads() -> int:
    """The automatic thread count: physical cores − 1, at least 1."""
    return max(1, physical_cores() - 1)


def resolve_threads(requested: int) -> int:
    """``requested`` if ≥ 1, else (0 = automatic) :func:`default_threads`."""
    if requested < 0:
        raise ValueError(f"CPU threads must be ≥ 0 (0 = automatic), got {requested}")
    return int(requested) if requested >= 1 else default_threads()


def apply_threads(requested: int) -> int:
    """Set torch's CPU thread count for the process; return the count now in use."""
    import torch

    n = resolve_threads(requested)
    torch.set_num_threads(n)  # also when unchanged: OpenMP keeps the count per thread
    return n


def thread_info() -> dict:
    """What a result's metadata records about threads."""
    import torch

    return {"threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get(WAIT_POLICY_ENV, "runtime default")}


#: FFT-grid pixels below which Richardson–Lucy's iterations run on one thread (see
#: :func:`one_thread`). Measured on the 2-core benchmark machine, passive wait, one RL
#: iteration, 1 vs 2 threads: 512² 2.76 vs 3.26 ms, 640² 4.97 vs 4.58 ms, 768² 6.39 vs
#: 5.20 ms, 1024² 11.3 vs 7.7 ms (``/work/exp20/rlparts2.py``, session 20).
ONE_THREAD_BELOW_PX = 576 * 576


@contextmanager
def one_thread(when: bool = True) -> Iterator[None]:
    """Run the block on one torch thread (if ``when``); the count set before is restored
    afterwards, also on an exception.

    Why: with OpenMP's passive wait (:func:`set_passive_wait_policy`) every parallel
    operation wakes the sleeping threads, which costs more than a second thread saves on
    an operation of a few hundred microseconds: Richardson–Lucy on a 512² image, and the
    320² tiles of a 4096² blur, run faster on one thread than on two (the network, and
    the element-wise work on a large image, still gain from two). Switching costs well
    under a microsecond: it sets OpenMP's and MKL's counts for the calling thread; no
    thread is started or stopped.
    """
    if not when:
        yield
        return
    with torch_threads(1):
        yield


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on ``count`` torch threads (of the calling thread; see
    :func:`one_thread`); the count set before is restored afterwards, also on an
    exception."""
    import torch

    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: name prefix of the helper threads (:func:`helper_pool`)
HELPER_PREFIX = "pkl-dg-helper"


class _HelperPool:
    """The process's helper threads for work split by hand (:func:`helper_pool`)."""

    def __init__(self) -> None:
        self.lock, self.pool, self.size = threading.Lock(), None, 0

    def get(self, size: int) -> ThreadPoolExecutor:
        with self.lock:
            if self.pool is None or self.size < size:
                if self.pool is not None:
                    self.pool.shutdown(wait=False)  # its threads end once idle
                self.pool = ThreadPoolExecutor(size, thread_name_prefix=HELPER_PREFIX,
                                               initializer=_single_threaded)
                self.size = size
            return self.pool


def _single_threaded() -> None:
    import torch

    torch.set_num_threads(1)


_HELPERS = _HelperPool()
if hasattr(os, "register_at_fork"):  # POSIX: threads do not survive a fork, so the child
    os.register_at_fork(after_in_child=lambda: _HELPERS.__init__())  # starts its own pool


def helper_pool(size: int) -> ThreadPoolExecutor:
    """A pool of at least ``size`` helper threads, each running torch on one thread.

    For work that the caller splits into pieces too small for torch's own threads (the
    tiles of :func:`pkl_dg.physics.filtering.valid_filter`): the caller works on pieces
    too and waits for its helpers before it returns. The threads persist between calls
    (starting a thread and its OpenMP/MKL state per call cost 2–3 ms of a 20 ms blur at
    2048², ``/work/exp21/persist.py``); they sleep while idle, and a forked child gets a
    new pool. A helper must not wait on another (the pool is shared by all callers).
    """
    return _HELPERS.get(size)


def beside(fn: Callable[..., T], *args: Any, threads: int | None = None,
           **kwargs: Any) -> Callable[[], T]:
    """Start ``fn(*args, **kwargs)`` on a helper thread while the caller goes on, when the
    run has CPU threads to spare (``threads``, default torch's count now, ≥ 2); else it runs
    when its result is asked for. Returns the callable that asks (waiting for the helper;
    an exception of ``fn`` is raised there in both cases, so errors come in the order
    results are used).

    For work that releases the GIL and that torch's threads do not share: numpy/scipy
    pieces (the photon calibration's), or a small torch computation beside a loop that runs
    on one thread (Richardson–Lucy's stop check beside its next iteration).
    """
    torch = sys.modules.get("torch")
    if threads is None:
        threads = 1 if torch is None else torch.get_num_threads()
    if threads < 2:
        return partial(fn, *args, **kwargs)
    return helper_pool(1).submit(fn, *args, **kwargs).result


def on_helper() -> bool:
    """Whether the calling thread is one of :func:`helper_pool`'s (which must not wait on
    another helper)."""
    return threading.current_thread().name.startswith(HELPER_PREFIX)


def two_at_once() -> bool:
    """Whether :func:`in_two` would split its work now: the caller has two or more torch
    threads and is not a helper itself."""
    import torch

    return torch.get_num_threads() >= 2 and not on_helper()


def in_two(fn: Callable[[Any], T], items: list) -> list[T]:
    """``[fn(item) for item in items]``, the second half of the items on a helper thread
    while the caller works through the first, when :func:`two_at_once` and there are two
    items or more; else in order on the caller. The caller's torch threads are shared
    between the halves (two: one each; four: two each).

    The helper takes over the caller's thread-local torch modes (autocast on the CPU,
    inference mode, gradient mode), so it computes what the caller would have. For large
    pieces that torch's own threads share less well than two whole pieces do: the
    network's calls on the images of one step (the shipped prior on 4 × 502², bf16, two
    threads: 174 → 131 ms, the same values, ``/work/exp23/netsplit.py``). An exception of
    ``fn`` is raised here (the caller's first) once both halves have ended.
    """
    import torch

    if len(items) < 2 or not two_at_once():
        return [fn(item) for item in items]
    n, half = torch.get_num_threads(), (len(items) + 1) // 2
    modes = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
             torch.is_inference_mode_enabled(), torch.is_grad_enabled())

    def rest() -> list[T]:
        autocast, dtype, inference, grad = modes
        with torch_threads(n - n // 2), torch.autocast("cpu", dtype=dtype, enabled=autocast), \
                torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return [fn(item) for item in items[half:]]

    later = helper_pool(1).submit(rest)
    try:
        with torch_threads(n // 2):
            first = [fn(item) for item in items[:half]]
    except BaseException:
        wait([later])  # the helper's half ends before the caller's error goes on
        raise
    return first + later.result()
