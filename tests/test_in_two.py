"""Half of a list of pieces on a helper thread (pkl_dg.threads.in_two) and the network's calls
on a CPU that use it (pkl_dg.diffusion.tiling)."""

from __future__ import annotations

import threading

import pytest
import torch

from pkl_dg.diffusion.tiling import CPU_MAX_PIXELS, TiledDenoiser, tiled_network
from pkl_dg.threads import HELPER_PREFIX, in_two


def _where(item):
    return (item, threading.current_thread().name.startswith(HELPER_PREFIX),
            torch.get_num_threads(), torch.is_autocast_enabled("cpu"),
            torch.is_inference_mode_enabled())


def test_in_two_runs_the_second_half_on_a_helper_with_the_callers_modes(two_threads):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        seen = in_two(_where, [0, 1, 2, 3, 4])
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4]  # the results in order
    assert [s[1] for s in seen] == [False, False, False, True, True]
    assert all(s[2] == 1 and s[3] and s[4] for s in seen)  # one thread each, modes kept
    assert torch.get_num_threads() == 2 and not torch.is_autocast_enabled("cpu")
    seen = in_two(_where, [0, 1])  # modes off stay off on the helper
    assert [(s[1], s[3], s[4]) for s in seen] == [(False, False, False), (True, False, False)]


def test_in_two_stays_on_the_caller_with_one_thread_or_one_item():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert not any(s[1] for s in in_two(_where, [0, 1, 2]))
    finally:
        torch.set_num_threads(before)
    assert not in_two(_where, [7])[0][1]


def test_in_two_raises_an_error_of_either_half_after_both_have_ended(two_threads):
    ended = []

    def fn(item):
        if item == "bad":
            raise RuntimeError(f"piece {item}")
        threading.Event().wait(0.05)
        ended.append(item)
        return item

    with pytest.raises(RuntimeError, match="piece bad"):
        in_two(fn, ["bad", "a", "b"])  # the caller's piece fails; the helper's ran to its end
    assert ended == ["b"]
    with pytest.raises(RuntimeError, match="piece bad"):
        in_two(fn, ["a", "b", "bad"])


class _Net(torch.nn.Module):
    """A stand-in network: a 3×3 convolution, one call per batch recorded."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.calls = []

    def forward(self, x, t):
        self.calls.append((len(x), threading.current_thread().name.startswith(HELPER_PREFIX)))
        return self.conv(x) + t[:, None, None, None].float()


def test_a_cpu_network_makes_two_calls_half_of_them_on_a_helper(two_threads):
    net = _Net()
    x, t = torch.rand(4, 1, 64, 64), torch.arange(4)
    with torch.no_grad():
        serial = TiledDenoiser(net, tile=64, overlap=16, max_pixels=CPU_MAX_PIXELS)(x, t)
        assert net.calls == [(4, False)]  # 4 × 64² fit one call
        net.calls.clear()
        wrapped = tiled_network(net, (64, 64), 0, 16, torch.device("cpu"))
        assert wrapped.in_two
        assert torch.equal(wrapped(x, t), serial)
    assert net.calls == [(2, False), (2, True)]
    # a plain callable (not a torch module) is called from one thread only
    assert not tiled_network(lambda x, t: x, (64, 64), 0, 16, torch.device("cpu")).in_two


def test_in_two_shares_four_threads_two_and_two():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        seen = in_two(_where, [0, 1, 2, 3])
        assert [(s[1], s[2]) for s in seen] == [(False, 2), (False, 2), (True, 2), (True, 2)]
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_one_thread_keeps_the_network_calls_as_they_were():
    """With one torch thread a network's calls are not split: the final pass's 4 grid
    phases of a small image stay one call (the cancel test of the pass counts on it)."""
    before = torch.get_num_threads()
    net = _Net()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            tiled_network(net, (64, 64), 0, 16, torch.device("cpu"))(torch.rand(4, 1, 64, 64),
                                                                      torch.arange(4))
    finally:
        torch.set_num_threads(before)
    assert net.calls == [(4, False)]


def test_a_tiled_cpu_network_sends_two_tiles_at_once_half_on_a_helper(two_threads):
    net = _Net()
    x, t = torch.rand(1, 1, 200, 200), torch.tensor([3])
    with torch.no_grad():
        serial = TiledDenoiser(net, tile=128, overlap=32, max_pixels=128 * 128)(x, t)
        assert len(net.calls) == 4 and not any(h for _, h in net.calls)
        net.calls.clear()
        both = TiledDenoiser(net, tile=128, overlap=32, max_pixels=128 * 128, in_two=True)(x, t)
    assert torch.equal(both, serial)
    assert net.calls.count((1, True)) == 2 and net.calls.count((1, False)) == 2


def test_the_benchmarks_network_timer_counts_overlapping_calls_once(two_threads):
    import time

    from pkl_dg.bench.network import TimedNetwork

    class Slow(torch.nn.Module):
        def forward(self, x, t):
            time.sleep(0.2)
            return x

    timed = TimedNetwork(Slow())
    t0 = time.perf_counter()
    in_two(lambda _: timed(torch.zeros(1), torch.zeros(1)), [0, 1])
    wall = time.perf_counter() - t0
    assert 0.19 <= timed.seconds <= wall < 0.35  # one 0.2 s span, not two
