"""What a batch tells the user: failed blocks, the reader's notes, warnings once per input,
and the summary table.

A task that fails on a worker returns a :class:`BlockFailure` (its one-line reason and the
traceback) instead of raising, so the workers print nothing to the terminal; the client
reports the reason in the summary and keeps the traceback in ``NAME.failed.log`` beside
where the output would have been (:func:`write_failure_log`). Messages that tifffile logs
while a block is read (``ImageJ series metadata invalid …``) are collected
(:func:`~pkl_dg.batch.reading.reader_notes`) and said once per input the same way.
"""

from __future__ import annotations

import traceback
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pkl_dg.batch.plan import Job
from pkl_dg.block_reports import block_list
from pkl_dg.inputs import EmptyPlaneWarning

#: the block warning a worker records for a plane or volume with only zeros
EMPTY_BLOCK = "EmptyPlaneWarning"
#: the block warning that carries what the TIFF reader logged while reading the block
READER_NOTE = "TiffReaderNote"


@dataclass
class BlockFailure:
    """A task that failed on a worker: the reason in one line, and the details (traceback
    and reader notes) for the failure log."""

    message: str
    details: str = ""


def report_failure(exc: BaseException, notes: list[str] | None = None) -> BlockFailure:
    """The :class:`BlockFailure` of ``exc``, raised in a worker task."""
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if notes:
        details += "\nthe TIFF reader logged:\n" + "\n".join(notes) + "\n"
    # this package's own errors are sentences for the user; others keep their type
    own = isinstance(exc, (ValueError, FileNotFoundError)) and str(exc)
    return BlockFailure(str(exc) if own else f"{type(exc).__name__}: {exc}", details)


#: how a failure log begins: this, the input's path, " failed: " and the reason
_LOG_HEAD = "pkl-dg batch: "
_LOG_SUFFIX = ".failed.log"


def failure_log_path(job: Job) -> Path:
    """Where the details of a failed input go: ``NAME.failed.log`` in the output folder."""
    return job.output.parent / f"{job.output.name}{_LOG_SUFFIX}"


def write_failure_log(job: Job, message: str, details: str) -> str:
    """Write the failure's details to :func:`failure_log_path`; returns the summary's note
    (``message`` and where the details are; only ``message`` if the log cannot be written)."""
    p = failure_log_path(job)
    try:
        p.write_text(f"{_LOG_HEAD}{job.input.resolve()} failed: {message}\n\n{details}",
                     encoding="utf-8")
    except OSError as exc:
        return f"{message} (details not kept: cannot write {p.name}: {exc})"
    return f"{message} (details in {p.name})"


def clear_failure_log(job: Job) -> None:
    """Remove the failure log of an earlier run once the input has been restored."""
    failure_log_path(job).unlink(missing_ok=True)


def clear_stale_failure_logs(outdir: Path, jobs: list[Job]) -> list[str]:
    """Remove the failure logs of earlier runs whose input has since been deleted, and say
    so in a warning; returns the names of the logs removed.

    A log (``NAME.failed.log``, written by :func:`write_failure_log`) goes only when the
    input it names is gone from a folder that is still there; the logs of this run's
    inputs (rewritten or cleared as they fail or are restored), of inputs that still exist
    (another batch into the same folder) and of inputs whose folder cannot be reached (a
    drive not mounted) stay, as do files the batch did not write.

    Parameters
    ----------
    outdir : Path
        The run's output folder.
    jobs : list of Job
        The run's jobs (:func:`~pkl_dg.batch.plan.plan_outputs`).

    Returns
    -------
    list of str
        The names of the logs removed.
    """
    ours = {failure_log_path(job).name for job in jobs}
    removed: list[tuple[str, Path]] = []
    for log in sorted(outdir.glob(f"*{_LOG_SUFFIX}")):
        if log.name in ours or not log.is_file():
            continue
        try:
            with log.open(encoding="utf-8") as f:
                head = f.readline()
        except (OSError, UnicodeDecodeError):
            continue
        if not head.startswith(_LOG_HEAD) or " failed: " not in head:
            continue
        source = Path(head[len(_LOG_HEAD):].split(" failed: ", 1)[0])
        if source.exists() or not source.parent.is_dir():
            continue
        try:
            log.unlink()
        except OSError:
            continue
        removed.append((log.name, source))
    if removed:
        warnings.warn(f"removed {len(removed)} failure log(s) of an earlier run whose input no "
                      f"longer exists: {'; '.join(f'{n} ({p})' for n, p in removed)}",
                      stacklevel=3)
    return [name for name, _ in removed]


def _empty_text(job: Job, blocks: list[dict[str, Any]]) -> str:
    empty = [b["index"] for b in blocks if b.get("empty")]
    return (f"{job.input.name}: planes/volumes {block_list(empty)} hold only zeros: they are "
            "written as zeros, not restored (listed in the metadata as empty_blocks; in "
            f"{len(empty)} of {len(blocks)} blocks)")


def say_block_warnings(job: Job, blocks: list[dict[str, Any]]) -> str:
    """Each distinct warning of a job's blocks once, with how many blocks it concerns;
    the summary's note for the job."""
    counts = Counter(kind for b in blocks for kind in b.get("warnings", {}))
    for kind, n in counts.items():  # the first block's words (others differ in numbers)
        if kind == EMPTY_BLOCK:
            warnings.warn(_empty_text(job, blocks), EmptyPlaneWarning, stacklevel=2)
            continue
        text = next(b["warnings"][kind] for b in blocks if kind in b.get("warnings", {}))
        where = f" (in {n} of {len(blocks)} blocks; each block's in the metadata)" \
            if len(blocks) > 1 else ""
        warnings.warn(f"{job.input.name}: {text}{where}", stacklevel=2)
    return f"{len(counts)} warning(s): see above and the file's metadata" if counts else ""


def summary_table(jobs: list[Job]) -> str:
    """A plain-text table: input, status, output (— where none was written), compute
    seconds, note; then the counts and the run's wall time.

    The seconds of an input are its blocks' compute time on the workers, summed (a block
    waiting in the queue does not count); the wall time is from the start of the run to
    the last output written.
    """
    rows = [("input", "status", "output", "compute s", "note")]
    for j in jobs:
        rows.append((j.input.name, j.status,
                     j.output.name if j.status in ("done", "skipped") else "—",
                     f"{j.seconds:g}" if j.status == "done" else "", j.message))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    done = sum(j.status == "done" for j in jobs)
    skipped = sum(j.status == "skipped" for j in jobs)
    failed = sum(j.status == "failed" for j in jobs)
    end = f"{done} restored, {skipped} already complete, {failed} failed"
    wall = max((j.finished_s for j in jobs), default=0.0)
    if done or any(j.finished_s for j in jobs):
        end += (f"; wall time {wall:.1f} s (compute s: the input's blocks on the workers, "
                "summed, without time waiting in the queue)")
    lines.append(end)
    return "\n".join(line.rstrip() for line in lines)

