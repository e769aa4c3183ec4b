"""Time left in a run whose blocks end with a final denoising pass (no Qt).

A PKL run streams one frame per diffusion step of each group of posterior samples and, per
block, one after its final denoising pass (:func:`pkl_dg.diffusion.sampler.final_denoise`).
A step runs the network on the samples of its group (plus the data steps); the pass runs it
on :data:`~pkl_dg.diffusion.sampler.FINAL_PASS_IMAGES` images, at the steps' precision. Counted as one step, the pass made the widget say
"step 40/41 · ETA 3 s" for half a minute (2048², one sample per step, CPU).

:class:`StepPace` weighs each block's pass as that many network images, in steps' worth,
and once a block's pass has been timed uses the measured weight for the blocks after it.
While a pass runs its status says so; when the pass outlasts its estimate the status gives
the time it has run instead of a countdown at 0.
"""

from __future__ import annotations

from typing import Any

from pkl_dg.diffusion.sampler import FINAL_PASS_IMAGES
from pkl_dg.settings import RestoreSettings
from pkl_dg.settings_rules import is_guided, uses_prior


class StepPace:
    """The ETA of a run of :class:`pkl_dg.restoration.StepRecord` frames whose last step
    per block is a final denoising pass.

    Parameters
    ----------
    steps
        Diffusion steps per group of samples (the ``steps`` setting).
    samples
        Posterior samples per block (the ``samples`` setting).
    """

    def __init__(self, steps: int, samples: int) -> None:
        self.steps, self.samples = int(steps), int(samples)
        self.measured: float | None = None  # the pass's weight, timed on a finished block
        self._arrived: dict[int, float] = {}  # frame index → when it arrived
        self._block_start: tuple[int, float] | None = None  # (block, its step-1 frame's time)
        self._pass_start: tuple[int, float] | None = None  # (block, when its pass began)
        #: the run's first frame: (steps' worth done, when it arrived); the rate is taken
        #: from there on (that frame also carries the PSF, model and rough RL estimate)
        self._first: tuple[float, float] | None = None

    @classmethod
    def for_run(cls, settings: RestoreSettings) -> "StepPace | None":
        """The pace of a run with ``settings``; None when its steps all cost alike
        (Richardson–Lucy, an unguided prior, no final pass)."""
        if not (uses_prior(settings) and is_guided(settings) and settings.final_noise > 0):
            return None
        return cls(settings.steps, settings.samples)

    # ------------------------------------------------------------------ the weights
    def final_weight(self, record: Any) -> float:
        """The final pass in steps of ``record``'s run: measured, else its network images
        over a step's (the samples of a group, on average)."""
        if self.measured is not None:
            return self.measured
        groups = max((record.steps - 1) // max(self.steps, 1), 1)
        return FINAL_PASS_IMAGES * groups / max(self.samples, 1)

    def _done(self, record: Any) -> float:
        """Steps' worth done when ``record`` arrived (a finished pass counts its weight)."""
        sampling = record.steps - 1  # frames per block before its pass
        per_block = sampling + self.final_weight(record)
        block = (record.index - record.step) // max(record.steps, 1)
        return block * per_block + (record.step if record.step <= sampling else per_block)

    def in_final_pass(self, record: Any) -> bool:
        """True when ``record`` is its block's last step before the pass: the pass runs
        from the moment it arrives until the next frame."""
        return record.steps > 1 and record.step == record.steps - 1

    # ------------------------------------------------------------------ timing
    def observe(self, record: Any, now: float) -> None:
        """Note that ``record`` arrived at ``now`` (``time.perf_counter``): every frame of
        the run, in order, shown or not."""
        self._arrived[record.index] = now
        if self._first is None:
            self._first = (self._done(record), now)
        block = (record.index - record.step) // max(record.steps, 1)
        if record.step == 1:
            self._block_start = (block, now)
        if self.in_final_pass(record):
            self._pass_start = (block, now)
        elif (record.step == record.steps and record.steps > 2
              and self._pass_start is not None and self._pass_start[0] == block
              and self._block_start is not None and self._block_start[0] == block):
            step_s = (self._pass_start[1] - self._block_start[1]) / (record.steps - 2)
            if step_s > 0:
                self.measured = (now - self._pass_start[1]) / step_s

    def status(self, record: Any, started: float, now: float) -> str:
        """The progress text for ``record`` at ``now``: "step i/N · ETA s", and during a
        final pass what runs and the time left (or, past its estimate, the time it has run).

        Parameters
        ----------
        record
            The newest frame shown (``index``, ``total``, ``step``, ``steps``).
        started
            When the run started (``time.perf_counter``).
        now
            The time to report at.
        """
        final = self.final_weight(record)
        per_block = record.steps - 1 + final
        done = self._done(record)
        all_units = record.total // max(record.steps, 1) * per_block
        arrived = self._arrived.get(record.index, now)
        step = f"step {record.index}/{record.total}"
        first_done, first_at = self._first if self._first is not None else (0.0, started)
        if done <= first_done:
            return f"{step} · ETA …"
        rate = (arrived - first_at) / (done - first_done)  # seconds per step's worth
        if not self.in_final_pass(record):
            return f"{step} · ETA {rate * (all_units - done):.0f} s"
        running = now - arrived
        after = rate * (all_units - done - final)  # the blocks after this one
        left = rate * final - running
        if left > 0:
            return f"{step} · final denoising pass · ETA {left + after:.0f} s"
        text = f"{step} · final denoising pass: {running:.0f} s so far (longer than estimated)"
        return f"{text} · then ETA {after:.0f} s" if after >= 0.5 else text
