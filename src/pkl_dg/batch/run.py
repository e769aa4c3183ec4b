"""Running a batch on Dask: submit every block (or chunk), write each output as it completes.

:func:`run_batch` plans the jobs (:mod:`pkl_dg.batch.plan`), skips outputs that are already
complete, submits the rest to a ``distributed`` cluster (a ``LocalCluster`` without a
dashboard unless a scheduler address or client is given), shows one progress bar with ETA
over all blocks, and writes each output (to ``NAME.partial`` first, renamed when done) as
soon as all its blocks are back; until then finished blocks wait on disk
(:mod:`pkl_dg.batch.assemble`), not in memory. When a run is interrupted they stay there,
and a rerun with the same settings restores only the other blocks. An input that fails is
reported in one line (its traceback goes to ``NAME.failed.log``) and the others go on.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pkl_dg._version import __version__
from pkl_dg.batch.plan import (Job, check_run_wide, expand_inputs, plan_job, plan_outputs,
                              without_psf_file)
from pkl_dg.batch.assemble import BlockAssembler, staging_record
from pkl_dg.batch.reading import calibration_record
from pkl_dg.batch.report import (BlockFailure, clear_failure_log, clear_stale_failure_logs,
                                 say_block_warnings, write_failure_log)
from pkl_dg.settings import RestoreSettings
from pkl_dg.settings_rules import effective, settings_record


@dataclass
class Cluster:
    """A connected client, the cluster it owns (None for an external scheduler) and the
    torch threads each task uses (None: decided on the worker from its core count)."""

    client: Any
    cluster: Any
    threads: int | None

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def start_cluster(scheduler: str | None = None, workers: int | None = None,
                  threads: int | None = None) -> Cluster:
    """Connect to ``scheduler`` or start a ``LocalCluster`` of ``workers`` processes.

    A local cluster runs one task at a time per worker (one Dask thread) and gives torch
    ``threads`` per worker (default: cores // workers), so workers × threads never exceeds
    the cores. It has no dashboard (for one, start a scheduler with ``dask scheduler``
    and workers with ``dask worker`` and pass its address). On an external cluster each
    task sets torch to its worker's cores divided by the worker's Dask threads unless
    ``threads`` is given.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        if workers:
            raise ValueError("--workers applies to the local cluster only: the cluster at "
                             "--scheduler has its own workers")
        try:
            return Cluster(Client(scheduler, timeout="20s"), None, threads)
        except OSError as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    cores = os.cpu_count() or 1
    n = workers or cores
    if n < 1:
        raise ValueError(f"--workers must be ≥ 1, got {n}")
    per = threads or max(1, cores // n)
    # no dashboard; the scheduler's HTTP server (Dask starts one anyway) takes a free port
    # on this machine, so a second batch or a Jupyter cluster on :8787 cannot clash with it
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR,
                           scheduler_kwargs={"dashboard": False,
                                             "dashboard_address": "127.0.0.1:0"})
    return Cluster(Client(cluster), cluster, per)


#: settings that do not change a result: an output made with other values is still complete
_RESULT_NEUTRAL = ("threads", "device")


def _result_settings(s: RestoreSettings) -> dict[str, Any]:
    return {k: v for k, v in effective(s).to_dict().items() if k not in _RESULT_NEUTRAL}


# ---------------------------------------------------------------------------------------
def _batch_record(job: Job) -> dict[str, Any]:
    return {"complete": True, "input": str(job.input.resolve()), "input_shape": list(job.shape),
            "axes": job.axes, "settings": _result_settings(job.settings)}


def output_state(job: Job) -> str:
    """'missing', 'complete', 'partial' (damaged or unfinished: redo) or 'different'
    (complete but from other settings or another input: not replaced without --overwrite).

    A complete output is checked, not just present: its metadata must say it is complete,
    and its pixel data must open with the input's shape and every chunk stored.
    """
    from pkl_dg.io import read_metadata

    p = job.output
    if not p.exists():
        return "missing"
    try:
        rec = read_metadata(p).get("batch", {})
        if not rec.get("complete") or tuple(rec.get("input_shape", ())) != job.shape:
            return "partial"
        if not _pixels_complete(p, job.shape):
            return "partial"
    except (ValueError, OSError, KeyError):
        return "partial"
    if rec.get("input") != str(job.input.resolve()) or \
            rec.get("settings") != _result_settings(job.settings):
        return "different"
    return "complete"


def _pixels_complete(p: Path, shape: tuple[int, ...]) -> bool:
    if p.is_dir():
        import zarr

        arr = zarr.open_group(str(p), mode="r")["s0"]
        return tuple(arr.shape) == shape and arr.nchunks_initialized == arr.nchunks
    import tifffile

    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        if tuple(series.shape) != shape:
            return False
        series.pages[-1].asarray()  # the last plane is readable: the file is not truncated
    return True


def _write(job: Job, image: Any, blocks_meta: list[dict], seconds: float) -> None:
    """Write the output with its metadata (``compute_seconds``: the blocks' compute time on
    the workers, summed; ``empty_blocks``: the blocks written as zeros)."""
    from pkl_dg.io import write_ome_tiff, write_ome_zarr
    from pkl_dg.uncertainty import has_posterior_std

    meta = {"pkl_dg_version": __version__, **settings_record(job.settings),
            "units": "photons", "input_file": str(job.input), "image": job.image_meta,
            "blocks": blocks_meta, "batch": _batch_record(job), "compute_seconds": seconds}
    meta["calibration"] = calibration_record(job.axes, tuple(job.shape), job.settings,
                                             blocks_meta)
    if job.sampling_assumed:  # the nm figures of the metadata rest on a default
        meta["sampling_assumed"] = job.sampling_assumed
    empty = [b["index"] for b in blocks_meta if b.get("empty")]
    if empty:
        meta["empty_blocks"] = empty
    if job.chunks is not None:
        meta["chunks"] = {"count": len(job.chunks), "core": list(job.chunks[0].core),
                          "box": list(job.chunks[0].box)}
    if has_posterior_std(job.settings):
        meta["posterior_std"] = ("not kept: pkl-dg batch writes the mean of the posterior "
                                 "samples; pkl-dg restore writes their per-pixel std too")
    pixel = tuple(job.image_meta["pixel_size_nm"]) if job.image_meta.get("pixel_size_nm") else None
    given = job.given_sampling  # the user's (the PSF's) over the file's
    pixel = (given["pixel_size_nm"],) * 2 if "pixel_size_nm" in given else pixel
    writer = write_ome_zarr if job.fmt == "ome-zarr" else write_ome_tiff
    writer(job.output, image, job.axes or "YX", meta, pixel_size_nm=pixel,
           z_step_nm=given.get("z_step_nm", job.image_meta.get("z_step_nm")),
           time_interval_s=job.image_meta.get("time_interval_s"), overwrite=True,
           channel_names=job.image_meta.get("channel_names"))


def _worker_settings(s: RestoreSettings, threads: int | None) -> dict[str, Any]:
    d = s.to_dict()
    if threads and "threads" in d:  # settings that carry a thread count: the worker's
        d["threads"] = threads
    return d


# ---------------------------------------------------------------------------------------
def run_batch(inputs: list[str | Path], outdir: str | Path,
              settings: RestoreSettings | None = None, *, given: set[str] | None = None,
              fmt: str = "auto", chunk: int = 1024, overwrite: bool = False,
              scheduler: str | None = None, workers: int | None = None,
              threads: int | None = None, client: Any = None,
              progress: bool = True) -> list[Job]:
    """Restore every input into ``outdir``; returns the jobs with their status.

    Parameters
    ----------
    inputs
        Files, folders or glob patterns (see :func:`~pkl_dg.batch.plan.expand_inputs`).
    settings, given
        The restoration's settings and the names of those the user set explicitly (these
        are never replaced by the file's own pixel size).
    fmt
        'auto' (OME-Zarr for Zarr inputs, else OME-TIFF), 'ome-tiff' or 'ome-zarr'.
    chunk
        Planes larger than this (pixels) are restored in overlapping chunks; 0 never cuts.
    overwrite
        Recompute outputs that are already complete (else they are skipped), and do not
        take over the blocks an interrupted run staged.
    scheduler, workers, threads, client
        Where to compute: an existing ``distributed.Client``, a scheduler address, or a
        local cluster of ``workers`` processes with ``threads`` torch threads each.

    Raises
    ------
    FileNotFoundError, ValueError
        Bad inputs as a whole (nothing matched, two inputs → one output) or a setting that
        would fail every input (:func:`~pkl_dg.batch.plan.check_run_wide`: the PSF file, the
        chunk side), raised before any input is read; problems of one input are reported
        in its job instead (a ``NAME.failed.log`` beside the output holds the traceback;
        an earlier run's log whose input has since been deleted is removed, with a warning).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    s = settings or RestoreSettings()
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"output folder {outdir} is a file")
    inputs = without_psf_file(expand_inputs(list(inputs)), s)
    check_run_wide(s, chunk)
    outdir.mkdir(parents=True, exist_ok=True)
    jobs = plan_outputs(inputs, outdir, fmt, s)
    clear_stale_failure_logs(outdir, jobs)  # of inputs deleted since: removed, with a note
    todo = []
    for job in jobs:
        try:
            plan_job(job, given or set(), chunk)
        except (ValueError, FileNotFoundError) as exc:
            import traceback

            _fail(job, str(exc), traceback.format_exc(), t_start)
            continue
        finally:
            if job.reader_notes:  # e.g. a truncated ImageJ file opens with fewer planes
                warnings.warn(f"{job.input.name}: the TIFF reader logged: "
                              f"{'; '.join(job.reader_notes)} (the file may be truncated or "
                              "damaged: check that it opens in full)", stacklevel=2)
        state = output_state(job)
        if state == "complete" and not overwrite:
            job.status, job.message = "skipped", "already complete"
        elif state == "different" and not overwrite:
            job.status, job.message = "failed", (
                f"{job.output.name} exists from other settings or another input: pass "
                "--overwrite to replace it or choose another -o")
        else:
            job.message = "redone: the earlier output was incomplete" if state == "partial" else ""
            todo.append(job)
    if not todo:
        return jobs
    own = None if client is not None else start_cluster(scheduler, workers, threads)
    try:
        c = client if client is not None else own.client
        per = threads if client is not None else own.threads
        _compute(c, todo, per, progress, tqdm, overwrite, t_start)
    finally:
        if own is not None:
            own.close()
    return jobs


def _compute(client, todo: list[Job], threads: int | None, progress: bool, tqdm,
             overwrite: bool, t_start: float) -> None:
    from pkl_dg.batch.worker import plane_statistics, restore_task

    owner: dict[Any, tuple[int, int, int]] = {}
    staged: dict[int, BlockAssembler] = {}
    try:
        for j, job in enumerate(todo):
            try:  # take over what an interrupted run staged with the same settings
                staged[j] = BlockAssembler(job, staging_record(job, _result_settings(
                    job.settings)), fresh=overwrite)
            except OSError as exc:  # the staging array beside the output: reported
                _fail(job, f"staging {job.output.name}: {exc}", "", t_start)
                continue
            _note_staging(job, staged[j].note)
            if staged[j].complete:
                _finish(job, staged.pop(j), t_start)
                continue
            sd = _worker_settings(job.settings, threads)
            path = str(job.input)
            for b, idx in enumerate(job.blocks):
                if b in staged[j].done_blocks:
                    continue
                if job.chunks is None:
                    f = client.submit(restore_task, path, idx, sd, None, None, threads,
                                      pure=False)
                    owner[f] = (j, b, 0)
                    continue
                stats = client.submit(plane_statistics, path, idx, sd, threads, pure=False)
                have = staged[j].chunks_done(b)  # kept by an interrupted run
                for k, ch in enumerate(job.chunks):
                    if k in have:
                        continue
                    f = client.submit(restore_task, path, idx, sd, ch.box, stats, threads,
                                      pure=False)
                    owner[f] = (j, b, k)
        _collect(owner, todo, staged, progress, tqdm, t_start)
    except KeyboardInterrupt:
        # kept only where a rerun has blocks or chunks to take over
        kept = [a for a in staged.values() if a.done_blocks or a.staged_chunks]
        for a in staged.values():
            if a not in kept:
                a.discard()
        if kept:  # said before the CLI's "interrupted"
            what = "blocks and chunks" if any(a.staged_chunks for a in kept) else "blocks"
            names = ", ".join(a.path.name for a in kept)
            warnings.warn(f"the finished {what} are kept in {names}: rerun the same "
                          "command to restore only the others", stacklevel=2)
        raise


def _note_staging(job: Job, note: str) -> None:
    """Put what became of an interrupted run's blocks in the job's note; starting over
    is also said now (the summary comes only at the end)."""
    if not note:
        return
    if note.startswith("started over"):
        warnings.warn(f"{job.input.name}: {note}", stacklevel=3)
    job.message = f"{job.message}; {note}" if job.message else note


def _collect(owner: dict[Any, tuple[int, int, int]], todo: list[Job],
             staged: dict[int, BlockAssembler], progress: bool, tqdm, t_start: float) -> None:
    """Take the results as they come: stage each block, write each finished output."""
    from distributed import as_completed

    unit = "chunk" if any(job.chunks for job in todo) else "block"
    bar = tqdm(total=len(owner), desc="batch", unit=unit, file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        for fut in as_completed(list(owner)):
            j, b, k = owner.pop(fut)
            job = todo[j]
            bar.update(1)
            if job.status == "failed":
                continue
            result = fut.result() if fut.status == "finished" else _dask_failure(fut)
            if isinstance(result, BlockFailure):
                _fail(job, result.message, result.details, t_start)
                for other, (jj, _, _) in list(owner.items()):
                    if jj == j:
                        other.cancel()
                staged.pop(j).discard()
                continue
            try:
                staged[j].add(b, k, result)
            except OSError as exc:  # the staging array beside the output: reported
                _fail(job, f"staging {job.output.name}: {exc}", "", t_start)
                staged.pop(j).discard()
                continue
            fut.release()
            if staged[j].complete:
                _finish(job, staged.pop(j), t_start)
    finally:
        bar.close()


def _dask_failure(fut) -> BlockFailure:
    """A task Dask itself could not run (its worker died, it could not be sent): the
    exception and what traceback there is."""
    import traceback

    exc = fut.exception()
    tb = fut.traceback()
    return BlockFailure(f"{type(exc).__name__}: {exc}",
                        "".join(traceback.format_tb(tb)) if tb is not None else "")


def _fail(job: Job, message: str, details: str, t_start: float) -> None:
    job.status, job.finished_s = "failed", round(time.perf_counter() - t_start, 1)
    job.message = write_failure_log(job, message, details) if details else message


def _finish(job: Job, assembler: BlockAssembler, t_start: float) -> None:
    """Write a job's output from its staged blocks (read here, by this process's threads:
    the cluster's workers may not see this machine's disk) and delete them; an input whose
    every block holds only zeros fails (nothing to restore) and writes nothing."""
    import dask

    blocks = assembler.blocks_meta()
    if all(b.get("empty") for b in blocks):
        assembler.discard()
        return _fail(job, "image is all zero: there is nothing to restore", "", t_start)
    seconds = round(sum(b.get("compute_seconds", 0.0) for b in blocks), 1)
    try:
        with dask.config.set(scheduler="threads"):
            _write(job, assembler.image(), blocks, seconds)
    except (OSError, ValueError) as exc:  # reported in the summary; the others go on
        return _fail(job, f"writing {job.output.name}: {exc}", "", t_start)
    assembler.discard()
    clear_failure_log(job)
    job.status, job.seconds = "done", seconds
    job.finished_s = round(time.perf_counter() - t_start, 1)
    said = say_block_warnings(job, blocks)
    job.message = "; ".join(m for m in (job.message, said) if m)
