"""Assembling one output from its restored blocks without holding the output in memory.

Blocks (planes, or volumes in 3D mode) and the chunks of large planes come back from the
workers in any order. :class:`BlockAssembler` keeps the results of a block only until its
last chunk has arrived, blends them (:func:`~pkl_dg.batch.tiles.blend_chunks`) and writes
the block into a staging Zarr array on disk beside the output (``.NAME.blocks.zarr``,
chunked per plane). Memory then holds the blocks in flight, not the whole output: a
time-lapse or a large volume is written from the staging array, lazily (dask) for an
OME-Zarr output. The staging array is deleted once the output is written or the input has
failed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pkl_dg.batch.plan import Job
from pkl_dg.batch.tiles import blend_chunks

#: largest YX side of one staging chunk (px)
STAGING_CHUNK = 1024


def staging_path(output: Path) -> Path:
    """Where the blocks of ``output`` are staged: ``.NAME.blocks.zarr`` beside it."""
    return output.parent / f".{output.name}.blocks.zarr"


class BlockAssembler:
    """Collects one job's results; writes each finished block to the staging array.

    Parameters
    ----------
    job
        The input's job: its output shape (float32), blocks and chunks (None: one result
        per block).

    Raises
    ------
    OSError
        The staging array cannot be created beside the output.
    """

    def __init__(self, job: Job) -> None:
        import zarr

        self.job = job
        self.per_block = 1 if job.chunks is None else len(job.chunks)
        self.path = staging_path(job.output)
        if self.path.exists():  # left by an interrupted run: its blocks are redone
            shutil.rmtree(self.path)
        chunks = tuple(1 for _ in job.shape[:-2]) + tuple(min(STAGING_CHUNK, n)
                                                          for n in job.shape[-2:])
        self.array = zarr.open_array(str(self.path), mode="w", shape=job.shape,
                                     chunks=chunks, dtype="float32")
        self._pending: dict[int, dict[int, tuple[np.ndarray, dict]]] = {}
        self._meta: dict[int, dict[str, Any]] = {}

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
            return
        del self._pending[block]
        if self.job.chunks is None:
            image = parts[0][0]
        else:
            image = blend_chunks(self.job.shape[-2:], self.job.chunks,
                                 [parts[k][0] for k in range(self.per_block)])
        self.array[self.job.blocks[block]] = np.asarray(image, dtype=np.float32)
        meta = dict(parts[0][1])
        said = {k: v for _img, m in parts.values() for k, v in m.get("warnings", {}).items()}
        if said:  # any chunk's, one of each kind
            meta["warnings"] = said
        self._meta[block] = meta

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
