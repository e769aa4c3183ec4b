"""The ETA of a PKL run weighs each block's final denoising pass by its network work (no Qt)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pkl_dg.diffusion.sampler import FINAL_PASS_IMAGES
from pkl_dg.napari.step_pace import StepPace
from pkl_dg.settings import RestoreSettings


def frame(index, total, step, steps):
    return SimpleNamespace(index=index, total=total, step=step, steps=steps)


def test_the_pass_weighs_its_network_images_against_a_steps():
    # 40 steps, one sample: the pass is 5 images, a step 1 → the pass is 5 steps' worth
    pace = StepPace(steps=40, samples=1)
    rec = frame(40, 41, 40, 41)
    assert pace.final_weight(rec) == FINAL_PASS_IMAGES == 5
    first = frame(1, 41, 1, 41)
    pace.observe(first, now=3.0)  # step 1 also carried the preparation (PSF, RL start)
    assert pace.status(first, started=0.0, now=3.0) == "step 1/41 · ETA …"
    pace.observe(rec, now=42.0)  # then 1 s per step
    assert pace.in_final_pass(rec)
    text = pace.status(rec, started=0.0, now=42.0)
    assert text == "step 40/41 · final denoising pass · ETA 5 s"
    assert pace.status(rec, started=0.0, now=45.0).endswith("ETA 2 s")  # counting down
    late = pace.status(rec, started=0.0, now=72.0)
    assert late == "step 40/41 · final denoising pass: 30 s so far (longer than estimated)"
    # four samples in one group: a step runs 4 images, the pass 5 → 1.25 steps
    assert StepPace(steps=10, samples=4).final_weight(frame(1, 11, 1, 11)) == 1.25
    # four samples one at a time (4 groups of 10 steps): 5 steps' worth again
    assert StepPace(steps=10, samples=4).final_weight(frame(1, 41, 1, 41)) == 5


def test_a_stack_times_the_first_pass_and_uses_it_for_the_planes_after():
    pace = StepPace(steps=4, samples=1)
    steps, total = 5, 15  # 3 planes of 4 steps and a pass
    t = 0.0
    for step in range(1, 5):  # plane 0: a step per second from t = 1
        t += 1.0
        pace.observe(frame(step, total, step, steps), t)
    t += 12.0  # its pass took 12 steps' worth, not 5
    pace.observe(frame(5, total, 5, steps), t)
    assert pace.measured == pytest.approx(12.0)
    rec = frame(6, total, 1, steps)
    pace.observe(rec, t + 1.0)
    # done: plane 0 (4 + 12) and one step; left: 3 + 12, then 4 + 12
    rate = (t + 1.0) / 17
    assert pace.status(rec, 0.0, t + 1.0) == f"step 6/15 · ETA {rate * 31:.0f} s"


def test_runs_without_a_final_pass_have_no_pace():
    assert StepPace.for_run(RestoreSettings(method="rl")) is None
    assert StepPace.for_run(RestoreSettings(final_noise=0.0)) is None
    pace = StepPace.for_run(RestoreSettings(steps=7, samples=3))
    assert (pace.steps, pace.samples) == (7, 3)
