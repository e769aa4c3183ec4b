"""Running a batch on Dask: submit every block (or chunk), write each output as it completes.

:func:`run_batch` plans the jobs (:mod:`pkl_dg.batch.plan`), skips outputs that are already
complete, submits the rest to a ``distributed`` cluster (a ``LocalCluster`` unless a
scheduler address or client is given), shows one progress bar with ETA over all blocks, and
writes each output (to ``NAME.partial`` first, renamed when done) as soon as all its blocks
are back; until then finished blocks wait on disk (:mod:`pkl_dg.batch.assemble`), not in
memory. An input that fails is reported and the others go on.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pkl_dg._version import __version__
from pkl_dg.batch.plan import Job, expand_inputs, plan_job, plan_outputs
from pkl_dg.batch.assemble import BlockAssembler
from pkl_dg.settings import RestoreSettings
from pkl_dg.settings_rules import effective


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
    the cores. On an external cluster each task sets torch to its worker's cores divided by
    the worker's Dask threads unless ``threads`` is given.
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
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
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
    from pkl_dg.io import write_ome_tiff, write_ome_zarr
    from pkl_dg.uncertainty import has_posterior_std

    meta = {"pkl_dg_version": __version__, "settings": effective(job.settings).to_dict(),
            "units": "photons", "input_file": str(job.input), "image": job.image_meta,
            "blocks": blocks_meta, "batch": _batch_record(job), "seconds": round(seconds, 3)}
    if job.chunks is not None:
        meta["chunks"] = {"count": len(job.chunks), "core": list(job.chunks[0].core),
                          "box": list(job.chunks[0].box)}
    if has_posterior_std(job.settings):
        meta["posterior_std"] = ("not kept: pkl-dg batch writes the mean of the posterior "
                                 "samples; pkl-dg restore writes their per-pixel std too")
    pixel = tuple(job.image_meta["pixel_size_nm"]) if job.image_meta.get("pixel_size_nm") else None
    writer = write_ome_zarr if job.fmt == "ome-zarr" else write_ome_tiff
    writer(job.output, image, job.axes or "YX", meta, pixel_size_nm=pixel,
           z_step_nm=job.image_meta.get("z_step_nm"), overwrite=True)


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
        Recompute outputs that are already complete (else they are skipped).
    scheduler, workers, threads, client
        Where to compute: an existing ``distributed.Client``, a scheduler address, or a
        local cluster of ``workers`` processes with ``threads`` torch threads each.

    Raises
    ------
    FileNotFoundError, ValueError
        Bad inputs as a whole (nothing matched, two inputs → one output); problems of one
        input are reported in its job instead.
    """
    from tqdm import tqdm

    s = settings or RestoreSettings()
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"output folder {outdir} is a file")
    outdir.mkdir(parents=True, exist_ok=True)
    jobs = plan_outputs(expand_inputs(list(inputs)), outdir, fmt, s)
    todo = []
    for job in jobs:
        try:
            plan_job(job, given or set(), chunk)
        except (ValueError, FileNotFoundError) as exc:
            job.status, job.message = "failed", str(exc)
            continue
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
        _compute(c, todo, per, progress, tqdm)
    finally:
        if own is not None:
            own.close()
    return jobs


def _compute(client, todo: list[Job], threads: int | None, progress: bool, tqdm) -> None:
    from distributed import as_completed

    from pkl_dg.batch.worker import plane_statistics, restore_task

    owner: dict[Any, tuple[int, int, int]] = {}
    staged: dict[int, BlockAssembler] = {}  # per job, from its first result on
    started = [time.perf_counter()] * len(todo)
    for j, job in enumerate(todo):
        sd = _worker_settings(job.settings, threads)
        path = str(job.input)
        for b, idx in enumerate(job.blocks):
            if job.chunks is None:
                f = client.submit(restore_task, path, idx, sd, None, None, threads, pure=False)
                owner[f] = (j, b, 0)
                continue
            stats = client.submit(plane_statistics, path, idx, sd, threads, pure=False)
            for k, ch in enumerate(job.chunks):
                f = client.submit(restore_task, path, idx, sd, ch.box, stats, threads,
                                  pure=False)
                owner[f] = (j, b, k)
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
            if fut.status != "finished":
                exc = fut.exception()
                job.status, job.message = "failed", f"{type(exc).__name__}: {exc}"
                for other, (jj, _, _) in list(owner.items()):
                    if jj == j:
                        other.cancel()
                if j in staged:
                    staged.pop(j).discard()
                continue
            try:
                if j not in staged:
                    staged[j] = BlockAssembler(job)
                staged[j].add(b, k, fut.result())
            except OSError as exc:  # the staging array beside the output: reported
                job.status, job.message = "failed", f"staging {job.output.name}: {exc}"
                if j in staged:
                    staged.pop(j).discard()
                continue
            fut.release()
            if staged[j].complete:
                assembler = staged.pop(j)
                _finish(job, assembler, time.perf_counter() - started[j])
                assembler.discard()
    finally:
        bar.close()
        for assembler in staged.values():  # interrupted: nothing half-staged is left behind
            assembler.discard()


def _finish(job: Job, assembler: BlockAssembler, seconds: float) -> None:
    """Write a job's output from its staged blocks (read here, by this process's threads:
    the cluster's workers may not see this machine's disk)."""
    import dask

    try:
        with dask.config.set(scheduler="threads"):
            _write(job, assembler.image(), assembler.blocks_meta(), seconds)
    except (OSError, ValueError) as exc:  # reported in the summary; the others go on
        job.status, job.message = "failed", f"writing {job.output.name}: {exc}"
        return
    job.status, job.seconds = "done", round(seconds, 1)
    job.message = _say_block_warnings(job, assembler.blocks_meta())


def _say_block_warnings(job: Job, blocks: list[dict[str, Any]]) -> str:
    """Each distinct warning of a job's blocks once, with how many blocks it concerns;
    the summary's note for the job."""
    counts = Counter(kind for b in blocks for kind in b.get("warnings", {}))
    for kind, n in counts.items():  # the first block's words (others differ in numbers)
        text = next(b["warnings"][kind] for b in blocks if kind in b.get("warnings", {}))
        where = f" (in {n} of {len(blocks)} blocks; each block's in the metadata)" \
            if len(blocks) > 1 else ""
        warnings.warn(f"{job.input.name}: {text}{where}", stacklevel=2)
    return f"{len(counts)} warning(s): see above and the file's metadata" if counts else ""


def summary_table(jobs: list[Job]) -> str:
    """A plain-text table: input, status, output, seconds, message."""
    rows = [("input", "status", "output", "s", "note")]
    for j in jobs:
        rows.append((j.input.name, j.status, j.output.name,
                     f"{j.seconds:g}" if j.status == "done" else "", j.message))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    done = sum(j.status == "done" for j in jobs)
    skipped = sum(j.status == "skipped" for j in jobs)
    failed = sum(j.status == "failed" for j in jobs)
    lines.append(f"{done} restored, {skipped} already complete, {failed} failed")
    return "\n".join(line.rstrip() for line in lines)
