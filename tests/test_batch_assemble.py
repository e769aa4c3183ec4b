"""Blocks are staged on disk as they finish; memory holds only blocks still in flight."""

from pathlib import Path

import numpy as np

from pkl_dg.batch.assemble import BlockAssembler, staging_path
from pkl_dg.batch.plan import Job
from pkl_dg.batch.tiles import blend_chunks, plan_chunks
from pkl_dg.settings import RestoreSettings


def _job(tmp_path: Path, shape, chunks=None) -> Job:
    blocks = list(np.ndindex(*shape[:-2]))
    return Job(input=tmp_path / "in.tif", output=tmp_path / "out.ome.zarr", fmt="ome-zarr",
               settings=RestoreSettings(), axes="TYX", shape=shape, blocks=blocks,
               chunks=chunks)


def test_blocks_in_any_order_are_staged_and_released(tmp_path):
    rng = np.random.default_rng(0)
    planes = rng.random((3, 40, 30)).astype(np.float32)
    job = _job(tmp_path, planes.shape)
    a = BlockAssembler(job)
    assert staging_path(job.output).is_dir()
    for b in (2, 0, 1):
        a.add(b, 0, (planes[b], {"block": b}))
        assert a.pending_blocks == 0  # an unchunked block is written as soon as it arrives
    assert a.complete
    np.testing.assert_array_equal(np.asarray(a.image()), planes)
    assert [m["index"] for m in a.blocks_meta()] == [[0], [1], [2]]
    assert [m["block"] for m in a.blocks_meta()] == [0, 1, 2]
    a.discard()
    assert not staging_path(job.output).exists()


def test_chunks_are_held_until_their_block_is_complete_then_blended(tmp_path):
    rng = np.random.default_rng(1)
    planes = rng.random((2, 100, 90)).astype(np.float32)
    chunks = plan_chunks(100, 90, 48, margin=4, blend=16)
    job = _job(tmp_path, planes.shape, chunks)
    a = BlockAssembler(job)
    cut = [[p[c.box[0]:c.box[1], c.box[2]:c.box[3]] for c in chunks] for p in planes]
    for k in range(len(chunks) - 1):
        a.add(1, k, (cut[1][k], {}))
    assert a.pending_blocks == 1 and not a.complete
    a.add(1, len(chunks) - 1, (cut[1][-1], {}))
    assert a.pending_blocks == 0
    for k in range(len(chunks)):
        a.add(0, k, (cut[0][k], {}))
    assert a.complete
    want = np.stack([blend_chunks((100, 90), chunks, c) for c in cut])
    np.testing.assert_allclose(np.asarray(a.image()), want, rtol=1e-6)
    a.discard()


def test_the_chunks_of_an_unfinished_plane_survive_an_interrupted_run(tmp_path):
    """A run stopped mid-plane keeps the chunks it finished (on disk, no pickle); the rerun
    takes them over, is asked only for the others, and assembles what an uninterrupted run
    does. A plane whose chunks all arrived before the stop is written on take-over."""
    from pkl_dg.batch.assemble import CHUNK_DIR, staging_record

    rng = np.random.default_rng(2)
    planes = rng.random((3, 100, 90)).astype(np.float32)
    chunks = plan_chunks(100, 90, 48, margin=4, blend=16)
    n = len(chunks)
    assert n >= 3
    job = _job(tmp_path, planes.shape, chunks)
    job.input.write_bytes(b"input")
    record = staging_record(job, {"method": "pkl"})
    cut = [[p[c.box[0]:c.box[1], c.box[2]:c.box[3]] for c in chunks] for p in planes]
    first = BlockAssembler(job, record)
    first.add(0, 0, (cut[0][0], {"chunk": 0}))  # then the run is interrupted
    first.add(0, 2, (cut[0][2], {"chunk": 2}))
    for k in range(n - 1):
        first.add(2, k, (cut[2][k], {"chunk": k}))
    first._stage_chunk(2, n - 1, (cut[2][n - 1], {"chunk": n - 1}))  # stopped before block 2
    assert first.staged_chunks == 2 + n - 1 and not first.done_blocks
    del first
    rerun = BlockAssembler(job, record)
    assert "reused 1 of 3 blocks and" in rerun.note and "chunk(s) of unfinished planes" in rerun.note
    assert rerun.done_blocks == {2} and rerun.chunks_done(0) == {0, 2}
    assert rerun.chunks_done(1) == set()
    for k in set(range(n)) - {0, 2}:
        rerun.add(0, k, (cut[0][k], {"chunk": k}))
    for k in range(n):
        rerun.add(1, k, (cut[1][k], {"chunk": k}))
    assert rerun.complete and rerun.staged_chunks == 0
    assert not any((staging_path(job.output) / CHUNK_DIR).iterdir())  # written: deleted
    want = np.stack([blend_chunks((100, 90), chunks, c) for c in cut])
    np.testing.assert_allclose(np.asarray(rerun.image()), want, rtol=1e-6)
    assert rerun.blocks_meta()[0]["chunk"] == 0  # the chunks' metadata came back too
    # other settings: nothing is taken over
    other = BlockAssembler(job, staging_record(job, {"method": "rl"}))
    assert other.chunks_done(0) == set() and other.note.startswith("started over")
    other.discard()


def test_a_stale_staging_array_is_replaced(tmp_path):
    job = _job(tmp_path, (1, 8, 8))
    staging_path(job.output).mkdir()
    (staging_path(job.output) / "junk").write_text("left by an interrupted run")
    a = BlockAssembler(job)
    a.add(0, 0, (np.ones((8, 8), np.float32), {}))
    assert np.asarray(a.image()).sum() == 64
    a.discard()


def test_photo_files_in_an_input_folder_are_skipped_with_a_warning(tmp_path):
    """A .png among the TIFFs was skipped without a word."""
    import pytest
    import tifffile

    from pkl_dg.batch.plan import expand_inputs

    tifffile.imwrite(tmp_path / "cell.tif", np.zeros((8, 8), np.uint16))
    (tmp_path / "snapshot.png").write_bytes(b"\x89PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"1 file\(s\) in .* are not read .*snapshot\.png"):
        found = expand_inputs([tmp_path])
    assert [p.name for p in found] == ["cell.tif"]
