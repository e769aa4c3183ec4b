"""Assembling one output from its restored blocks without holding the output in memory.

Blocks (planes, or volumes in 3D mode) and the chunks of large planes come back from the
workers in any order. :class:`BlockAssembler` keeps the results of a block only until its
last chunk has arrived, blends them (:func:`~pkl_dg.batch.tiles.blend_chunks`) and writes
the block into a staging Zarr array on disk beside the output (``.NAME.blocks.zarr``,
chunked per plane). Memory then holds the blocks in flight, not the whole output: a
time-lapse or a large volume is written from the staging array, lazily (dask) for an
OME-Zarr output. The staging array is deleted once the output is written or the input has
failed, and kept when the run is interrupted: it records the settings its blocks were made
with (:func:`staging_record`) and, after each block's pixels are on disk, one line of that
block's metadata in ``blocks.jsonl``, so a rerun with the same settings takes over the
finished blocks and restores only the others. The chunks of a block not yet complete are
kept too (``chunks/``: one ``.npy`` each, written without pickle, and a line of its metadata
in ``chunks.jsonl`` once its pixels are on disk; deleted when their block is written): an
interrupted run over a large plane keeps the chunks it finished, and the rerun restores
only the plane's other chunks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pkl_dg.batch.plan import Job
from pkl_dg.batch.report import EMPTY_BLOCK
from pkl_dg.batch.tiles import blend_chunks

#: largest YX side of one staging chunk (px)
STAGING_CHUNK = 1024
#: the file in the staging folder that lists the finished blocks, one JSON line each
DONE_LIST = "blocks.jsonl"
#: the folder of the chunks of unfinished blocks, and the file that lists them
CHUNK_DIR, CHUNK_LIST = "chunks", "chunks.jsonl"


def staging_path(output: Path) -> Path:
    """Where the blocks of ``output`` are staged: ``.NAME.blocks.zarr`` beside it."""
    return output.parent / f".{output.name}.blocks.zarr"


def staging_record(job: Job, settings: dict[str, Any]) -> dict[str, Any]:
    """What the staged blocks of ``job`` depend on: the input (path, shape, size and time
    of change), the result's ``settings`` and the chunk plan. Blocks staged under another
    record are not reused."""
    st = job.input.stat()
    record = {"input": str(job.input.resolve()), "input_shape": list(job.shape),
              "input_changed": [st.st_size, st.st_mtime_ns] if job.input.is_file() else None,
              "settings": settings, "chunks": None if job.chunks is None else
              [[list(c.core), list(c.box)] for c in job.chunks]}
    return json.loads(json.dumps(record))  # as the staging array's attributes give it back


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which parts of two staging records differ, in words."""
    if not old:
        return "they have no record of their settings (an earlier version staged them)"
    parts = [{"input": "another input", "input_shape": "another input shape",
              "input_changed": "the input file changed", "chunks": "another --chunk"}[k]
             for k in ("input", "input_shape", "input_changed", "chunks")
             if old.get(k) != new.get(k)]
    changed = sorted(k for k in set(old.get("settings", {})) | set(new["settings"])
                     if old.get("settings", {}).get(k) != new["settings"].get(k))
    if changed:
        parts.append("other settings (" + ", ".join(changed) + ")")
    return "they were made from " + ", ".join(parts)


class BlockAssembler:
    """Collects one job's results; writes each finished block to the staging array.

    Parameters
    ----------
    job
        The input's job: its output shape (float32), blocks and chunks (None: one result
        per block).
    record
        What its blocks depend on (:func:`staging_record`). Blocks an interrupted run
        staged under the same record are taken over (:attr:`done_blocks`; :attr:`note`
        says how many); under another record, or none, they are deleted and :attr:`note`
        says why (empty when there was nothing staged).
    fresh
        Start over even if the staged blocks match (``--overwrite``).

    Raises
    ------
    OSError
        The staging array cannot be created beside the output.
    """

    def __init__(self, job: Job, record: dict[str, Any] | None = None,
                 fresh: bool = False) -> None:
        import zarr

        self.job = job
        self.per_block = 1 if job.chunks is None else len(job.chunks)
        self.path = staging_path(job.output)
        self._pending: dict[int, dict[int, tuple[np.ndarray, dict]]] = {}
        self._meta: dict[int, dict[str, Any]] = {}
        self.note = ""
        if self.path.exists() and record is not None:
            reused, self.note = self._take_over(record, fresh)
            if reused:
                return
        if self.path.exists():  # left by an interrupted run and not taken over: redone
            shutil.rmtree(self.path)
        chunks = tuple(1 for _ in job.shape[:-2]) + tuple(min(STAGING_CHUNK, n)
                                                          for n in job.shape[-2:])
        self.array = zarr.open_array(str(self.path), mode="w", shape=job.shape,
                                     chunks=chunks, dtype="float32")
        self.array.attrs["pkl_dg_batch"] = record or {}

    def _take_over(self, record: dict[str, Any], fresh: bool) -> tuple[bool, str]:
        """Open the staged blocks if they were made under ``record``: whether they were
        taken over, and the note."""
        import zarr

        if fresh:
            return False, "started over (--overwrite): the staged blocks were not reused"
        try:
            array = zarr.open_array(str(self.path), mode="r+")
            old = dict(array.attrs.get("pkl_dg_batch", {}))
        except (OSError, ValueError) as exc:  # damaged: its blocks are redone
            return False, (f"started over: the staged blocks are unreadable "
                           f"({type(exc).__name__}: {exc})")
        if old != record:
            return False, ("started over: the staged blocks were not reused: "
                           + _differences(old, record))
        self.array, self._meta = array, {int(r["block"]): r["meta"]
                                         for r in self._read_list(DONE_LIST)}
        chunks = self._take_over_chunks()
        n = len(self._meta)
        said = [f"{n} of {len(self.job.blocks)} blocks"] if n else []
        if chunks:
            said.append(f"{chunks} chunk(s) of unfinished planes")
        return True, (f"reused {' and '.join(said)} of an interrupted run" if said else "")

    def _read_list(self, name: str) -> list[dict[str, Any]]:
        """The records of a list in the staging folder whose block is one of the job's (a
        line cut short by a kill is skipped: its block or chunk is redone)."""
        p, out = self.path / name, []
        if not p.exists():
            return out
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                b = int(rec["block"])
            except (ValueError, KeyError, TypeError):
                continue
            if 0 <= b < len(self.job.blocks):
                out.append(rec)
        return out

    def _chunk_file(self, block: int, chunk: int) -> Path:
        return self.path / CHUNK_DIR / f"{block}_{chunk}.npy"

    def _take_over_chunks(self) -> int:
        """Load the staged chunks of unfinished blocks as received; a block whose chunks are
        all there (the run stopped before writing it) is written now. Returns how many
        chunks were taken over (an unreadable one is redone)."""
        taken = 0
        for rec in self._read_list(CHUNK_LIST):
            b, k = int(rec["block"]), int(rec.get("chunk", -1))
            if b in self._meta or not 0 <= k < self.per_block:
                continue
            try:
                image = np.load(self._chunk_file(b, k), allow_pickle=False)
            except (OSError, ValueError):
                continue
            self._pending.setdefault(b, {})[k] = (image, rec["meta"])
            taken += 1
        for b in [b for b, parts in self._pending.items() if len(parts) == self.per_block]:
            self._write_block(b)
        return taken

    @property
    def done_blocks(self) -> set[int]:
        """The blocks already written to the staging array."""
        return set(self._meta)

    def chunks_done(self, block: int) -> set[int]:
        """The chunks of ``block`` already received (this run or a staged one)."""
        return set(self._pending.get(block, {}))

    @property
    def staged_chunks(self) -> int:
        """Chunks of unfinished blocks held (and kept on disk for a rerun)."""
        return sum(len(parts) for parts in self._pending.values())

    @property
    def pending_blocks(self) -> int:
        """Blocks with some but not all of their chunks received (held in memory)."""
        return len(self._pending)

    @property
    def complete(self) -> bool:
        """Every block has been written to the staging array."""
        return len(self._meta) == len(self.job.blocks)

    def add(self, block: int, chunk: int, result: tuple[np.ndarray, dict[str, Any]]) -> None:
        """Take chunk ``chunk`` (0 for an unchunked block) of block ``block``: (image,
        metadata) from :func:`~pkl_dg.batch.worker.restore_task`."""
        parts = self._pending.setdefault(block, {})
        parts[chunk] = result
        if len(parts) < self.per_block:
            self._stage_chunk(block, chunk, result)
            return
        self._write_block(block)

    def _stage_chunk(self, block: int, chunk: int, result: tuple[np.ndarray, dict]) -> None:
        """Keep a chunk of an unfinished block on disk (its pixels, then its list line)."""
        self._chunk_file(block, chunk).parent.mkdir(exist_ok=True)
        np.save(self._chunk_file(block, chunk), np.asarray(result[0], dtype=np.float32),
                allow_pickle=False)
        with open(self.path / CHUNK_LIST, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"block": block, "chunk": chunk, "meta": result[1]}) + "\n")

    def _write_block(self, block: int) -> None:
        """Blend a block's chunks, write it to the staging array and list it as done; its
        staged chunks are deleted."""
        parts = self._pending.pop(block)
        if self.job.chunks is None:
            image = parts[0][0]
        else:
            image = blend_chunks(self.job.shape[-2:], self.job.chunks,
                                 [parts[k][0] for k in range(self.per_block)])
        self.array[self.job.blocks[block]] = np.asarray(image, dtype=np.float32)
        meta = _block_meta([parts[k][1] for k in range(self.per_block)])
        with open(self.path / DONE_LIST, "a", encoding="utf-8") as fh:  # pixels are on disk
            fh.write(json.dumps({"block": block, "meta": meta}) + "\n")
        self._meta[block] = meta
        for k in parts:
            self._chunk_file(block, k).unlink(missing_ok=True)

    def blocks_meta(self) -> list[dict[str, Any]]:
        """Each block's index and metadata, in block order."""
        return [{"index": list(idx), **self._meta[b]} for b, idx in enumerate(self.job.blocks)]

    def image(self):
        """The assembled output as a lazy dask array over the staging array."""
        import dask.array as da

        return da.from_zarr(self.array)

    def discard(self) -> None:
        """Delete the staging array."""
        self._pending.clear()
        if self.path.exists():
            shutil.rmtree(self.path)


def _block_meta(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One block's metadata from its chunks' (one part for an unchunked block): the first
    restored chunk's, every chunk's warnings (one of each kind) and the compute seconds of
    all chunks and the plane's statistics. A block is empty only if every chunk is; chunks
    with only zeros inside a block with signal are listed as ``empty_chunks``."""
    restored = [k for k, m in enumerate(parts) if not m.get("empty")]
    meta = {k: v for k, v in parts[restored[0] if restored else 0].items()
            if k != "statistics_seconds"}
    said = {k: v for m in parts for k, v in m.get("warnings", {}).items()}
    if restored:
        said.pop(EMPTY_BLOCK, None)
        if len(restored) < len(parts):
            meta["empty_chunks"] = [k for k in range(len(parts)) if k not in restored]
    if said:  # any chunk's, one of each kind
        meta["warnings"] = said
    meta["compute_seconds"] = round(sum(m.get("compute_seconds", 0.0) for m in parts)
                                    + parts[0].get("statistics_seconds", 0.0), 3)
    return meta
