"""A run that streams frames and ends with an outcome: :class:`StreamedRun`.

What :func:`pkl_dg.restoration.restore_iter` and :func:`pkl_dg.compare.compare_iter` return:
iterate for the frames (steps to show, progress to report, a point to cancel), then read
``.result``; ``finish()`` does both. It replaces draining a generator by hand for its
return value (``while True: next(…)`` / ``except StopIteration as stop: stop.value``).
"""

from __future__ import annotations

from typing import Callable, Generator, Generic, TypeVar

Frame = TypeVar("Frame")
Outcome = TypeVar("Outcome")


class StreamedRun(Generic[Frame, Outcome]):
    """A run that streams frames: iterate it for the frames; ``result`` once it has ended.

    Wraps a generator that yields the frames and returns the outcome. As for that generator,
    the ``StopIteration`` that ends the iteration carries the outcome as its ``value``.

    Parameters
    ----------
    frames : Generator
        Yields the frames and returns the outcome; nothing runs before the first frame is
        asked for.
    metadata : dict, optional
        What the run has established so far, filled in by the run as it goes (its
        :attr:`metadata`); readable whenever no frame is being computed, e.g. after
        :meth:`close`.
    """

    def __init__(self, frames: Generator[Frame, None, Outcome],
                 metadata: dict | None = None) -> None:
        self._frames = frames
        self.metadata = metadata if metadata is not None else {}
        self._ended = False  # the last frame was taken: the result is there
        self._closed = False  # stopped before its end: no result
        self._result: Outcome | None = None

    def __iter__(self) -> StreamedRun[Frame, Outcome]:
        return self

    def __next__(self) -> Frame:
        if self._ended:
            raise StopIteration(self._result)
        if self._closed:
            raise StopIteration
        try:
            return next(self._frames)
        except StopIteration as stop:
            self._ended, self._result = True, stop.value
            raise

    @property
    def result(self) -> Outcome:
        """The outcome; a ``RuntimeError`` before the last frame has been taken."""
        if not self._ended:
            raise RuntimeError("the run has not ended: iterate it to the end (or call "
                               "finish()) before reading its result")
        return self._result  # type: ignore[return-value]

    def finish(self, progress: Callable[[Frame], None] | None = None) -> Outcome:
        """Run to the end, calling ``progress`` with every frame; return :attr:`result`."""
        for frame in self:
            if progress is not None:
                progress(frame)
        return self.result

    def close(self) -> None:
        """Stop the run: it yields nothing more and, unless it had ended, has no result."""
        self._frames.close()
        self._closed = not self._ended
