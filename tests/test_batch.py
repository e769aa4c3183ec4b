"""pkl-dg batch on a local Dask cluster of two workers: equality with restore, resuming,
failures, chunked large planes, one model load per worker."""

import logging
import warnings

import numpy as np
import pytest
import tifffile

from conftest import phantom
from pkl_dg.batch import run_batch
from pkl_dg.batch.tiles import blend_chunks, plan_chunks
from pkl_dg.cli import main
from pkl_dg.io import open_image, read_image, read_metadata, write_ome_zarr
from pkl_dg.restoration import restore
from pkl_dg.settings import RestoreSettings

RL = RestoreSettings(method="rl", rl_iterations=8, psf_sigma=1.5, threads=1) \
    if "threads" in RestoreSettings.__dataclass_fields__ else \
    RestoreSettings(method="rl", rl_iterations=8, psf_sigma=1.5)


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(lc)
    yield client
    client.close()
    lc.close()


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def noisy(n, seed):
    rng = np.random.default_rng(seed)
    return rng.poisson(phantom(n, seed) * 10 + 2).astype(np.uint16)


@pytest.fixture
def inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        tifffile.imwrite(src / f"cell{i}.tif", noisy(48, i))
    tl = np.stack([noisy(96, 10 + t) for t in range(3)])[:, None]  # T=3, Z=1, 96×96
    write_ome_zarr(src / "timelapse.ome.zarr", tl.astype(np.float32), "TZYX", {},
                   pixel_size_nm=(80.0, 80.0), z_step_nm=200.0)
    return src


def test_batch_equals_restore_resumes_and_reports_failures(tmp_path, inputs, cluster, capsys):
    (inputs / "broken.tif").write_bytes(b"II*\x00 truncated acquisition")
    out = tmp_path / "out"
    args = ["batch", str(inputs), "-o", str(out), "--scheduler", cluster.scheduler.address,
            "--method", "rl", "--rl-iterations", "8", "--psf-sigma", "1.5", "--quiet"]
    assert main(args) == 1  # one input failed
    table = capsys.readouterr().err
    assert "broken.tif" in table and "failed" in table and "damaged" in table
    assert "5 restored, 0 already complete, 1 failed" in table
    names = sorted(p.name for p in out.iterdir())
    assert names == ["broken.ome.tif.failed.log", "cell0.ome.tif", "cell1.ome.tif",
                     "cell2.ome.tif", "cell3.ome.tif", "timelapse.ome.zarr"]
    for i in range(4):
        expected = restore(read_image(inputs / f"cell{i}.tif"), settings=RL)
        got = tifffile.imread(out / f"cell{i}.ome.tif")
        assert got.dtype == np.float32 and rel(got, expected) <= 1e-5
    tl = open_image(out / "timelapse.ome.zarr")
    assert tl.axes == "TYX" and tl.pixel_size_nm == pytest.approx((80.0, 80.0))
    expected = restore(read_image(inputs / "timelapse.ome.zarr"),
                       settings=RL.replace(pixel_size_nm=80.0))
    assert rel(tl.numpy(), expected) <= 1e-5
    meta = read_metadata(out / "timelapse.ome.zarr")
    # the nm figures of a file that states no pixel size rest on the default: recorded as
    # such (batch recorded the default 65 nm as if the file stated it)
    assert "sampling_assumed" not in meta
    assert read_metadata(out / "cell0.ome.tif")["sampling_assumed"] == {"pixel_size_nm": 65.0}
    assert meta["settings"]["pixel_size_nm"] == 80.0 and len(meta["blocks"]) == 3
    # the input's own estimate, as such (it once read "given", without the fit), per block
    cal = meta["blocks"][0]["calibration"]
    assert meta["calibration"] == cal  # at top level too, as restore records it
    assert cal["source"] == "estimated" and "fit" in cal
    assert all(b["calibration"] == cal for b in meta["blocks"])

    # rerun after deleting one output and truncating another: only those two are redone
    (out / "cell1.ome.tif").unlink()
    data = (out / "cell2.ome.tif").read_bytes()
    (out / "cell2.ome.tif").write_bytes(data[: len(data) // 2])
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (inputs / "broken.tif").unlink()
    jobs = run_batch([inputs], out, RL, client=cluster, progress=False)
    status = {j.input.name: j.status for j in jobs}
    assert status == {"cell0.tif": "skipped", "cell1.tif": "done", "cell2.tif": "done",
                      "cell3.tif": "skipped", "timelapse.ome.zarr": "skipped"}
    for name in ("cell0.ome.tif", "cell3.ome.tif", "timelapse.ome.zarr"):
        assert (out / name).stat().st_mtime_ns == stamp[name]
    expected = restore(read_image(inputs / "cell2.tif"), settings=RL)
    assert rel(tifffile.imread(out / "cell2.ome.tif"), expected) <= 1e-5

    # other settings: a complete output is not replaced silently
    jobs = run_batch([inputs / "cell0.tif"], out, RL.replace(rl_iterations=3), client=cluster,
                     progress=False)
    assert jobs[0].status == "failed" and "--overwrite" in jobs[0].message


def test_chunk_weights_sum_to_one_and_cover_the_plane():
    chunks = plan_chunks(300, 530, 128, margin=20, blend=32)
    assert len(chunks) == 3 * 5
    ones = [np.ones((c.box[1] - c.box[0], c.box[3] - c.box[2])) for c in chunks]
    np.testing.assert_allclose(blend_chunks((300, 530), chunks, ones, blend=32), 1.0)
    ramp = np.add.outer(np.arange(300.0), np.arange(530.0))
    parts = [ramp[c.box[0]:c.box[1], c.box[2]:c.box[3]] for c in chunks]
    np.testing.assert_allclose(blend_chunks((300, 530), chunks, parts, blend=32), ramp,
                               rtol=1e-6)


@pytest.fixture
def big_plane(tmp_path):
    rng = np.random.default_rng(5)
    obj = np.tile(phantom(128, 3) * 10, (8, 8))
    obj += np.roll(obj, 37, axis=0)
    from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
    import torch

    fm = ForwardModel(PSFConvolution(gaussian_psf(2.0)), background=2.0)
    with torch.no_grad():
        mu = fm.mean(torch.from_numpy(obj.astype(np.float32))).numpy()
    y = rng.poisson(mu).astype(np.float32)
    p = tmp_path / "plane.tif"
    tifffile.imwrite(p, y)
    return p, y


def test_large_plane_in_chunks_equals_whole_plane_rl(tmp_path, big_plane, cluster):
    p, y = big_plane
    s = RL.replace(rl_iterations=30, psf_sigma=2.0)
    jobs = run_batch([p], tmp_path / "out", s, chunk=256, client=cluster, progress=False)
    assert jobs[0].status == "done" and len(jobs[0].chunks) == 16
    got = tifffile.imread(tmp_path / "out" / "plane.ome.tif")
    whole = restore(y, settings=s)
    assert rel(got, whole) <= 1e-3


def test_large_plane_in_chunks_pkl_within_seed_variation(tmp_path, big_plane, cluster):
    p, y = big_plane
    s = RestoreSettings(method="pkl", steps=3, samples=1, psf_sigma=2.0, seed=0)
    if "threads" in RestoreSettings.__dataclass_fields__:
        s = s.replace(threads=1)
    jobs = run_batch([p], tmp_path / "out", s, chunk=256, client=cluster, progress=False)
    assert jobs[0].status == "done", jobs[0].message
    got = tifffile.imread(tmp_path / "out" / "plane.ome.tif")
    whole0 = restore(y, settings=s)
    whole1 = restore(y, settings=s.replace(seed=1))
    # every chunk takes the plane's intensity scale and its window of the plane's noise, so
    # it is the same posterior sample as the whole plane up to the chunk edges: measured
    # 0.21× the seed-to-seed distance (it was 1.2–1.3× with each chunk's own noise)
    assert rel(got, whole0) <= 0.5 * rel(whole1, whole0)
    # batch keeps the posterior mean only: no block claims a std it does not write
    meta = read_metadata(tmp_path / "out" / "plane.ome.tif")
    assert not any("posterior_std" in b for b in meta["blocks"])
    # the network was loaded once per worker process that ran a chunk
    from pkl_dg.batch.worker import cache_counts

    counts = cluster.run(cache_counts)
    assert all(c["nets"] <= 1 for c in counts.values())
    assert sum(c["nets"] for c in counts.values()) >= 1


def test_bench_batch_smoke_writes_a_report_section(tmp_path):
    import json

    from pkl_dg.bench.batch import batch_section

    out = tmp_path / "batch.json"
    assert main(["bench", "batch", "--smoke", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    (row,) = data["runs"]
    assert data["kind"] == "batch" and row["workers"] == 1 and row["images_per_min"] > 0
    assert row["peak_rss_mb_per_worker"][0] > 50  # a worker with torch loaded
    text = "\n".join(batch_section(data))
    assert "| 1 |" in text and "images/min" in text


def test_hyperstack_keeps_its_axes_and_pixel_size(tmp_path, cluster):
    zcyx = np.stack([np.stack([noisy(40, 20 + 2 * z + c) for c in range(2)]) for z in range(3)])
    p = tmp_path / "hyper.tif"
    tifffile.imwrite(p, zcyx, imagej=True, resolution=(1 / 0.1, 1 / 0.1),
                     metadata={"axes": "ZCYX", "spacing": 0.25, "unit": "um"})
    manual = RL.replace(calibration="manual")  # one calibration for both: compare channels
    jobs = run_batch([p], tmp_path / "out", manual, client=cluster, progress=False)
    assert jobs[0].status == "done" and len(jobs[0].blocks) == 6  # C × Z planes
    out = open_image(tmp_path / "out" / "hyper.ome.tif")
    assert out.axes == "CZYX" and out.shape == (2, 3, 40, 40)
    assert out.pixel_size_nm == pytest.approx((100.0, 100.0))
    assert out.z_step_nm == pytest.approx(250.0)
    assert read_metadata(tmp_path / "out" / "hyper.ome.tif")["settings"]["pixel_size_nm"] == 100.0
    for c in range(2):  # every channel restored on its own, equal to restoring its planes
        expected = restore(zcyx[:, c], settings=manual.replace(pixel_size_nm=100.0))
        assert rel(out.numpy()[c], expected) <= 1e-5


def test_plane_statistics_leave_saturated_pixels_out_as_restore_does(tmp_path):
    """Chunks share the plane's automatic RL count and intensity scale; with clipped bright
    spots these must come from the same masked fit as a whole-plane restore's."""
    from pkl_dg.batch.worker import plane_statistics
    from pkl_dg.restoration import restore_iter

    rng = np.random.default_rng(3)
    obj = phantom(96, 4) * 40.0
    obj[20:26, 30:36] = 4000.0  # bright spots far above the rest: clipped at 255
    obj[60:64, 70:74] = 4000.0
    from scipy import ndimage
    y = np.clip(rng.poisson(ndimage.gaussian_filter(obj, 2.0) + 2.0), 0, 255).astype(np.uint8)
    p = tmp_path / "sat.tif"
    tifffile.imwrite(p, y)
    for method in ("rl", "pkl"):
        s = RestoreSettings(method=method, rl_iterations=0, psf_sigma=2.0, threads=1,
                            calibration="manual", gain=1.0, offset=0.0, steps=2, samples=1)
        stats = plane_statistics(str(p), (), s.to_dict(), threads=1)
        meta = restore_iter(y, s).finish().metadata
        assert meta["saturated"]["pixels"] > 0
        if method == "rl":
            assert stats["rl_iterations"] == meta["rl_auto_iterations"]
        else:
            assert stats["intensity_scale"] == pytest.approx(meta["intensity_scale"], rel=1e-6)
            assert stats["rl_auto_iterations"] == meta["rl_auto_iterations"]
            assert tuple(stats["data_budget"]) == (meta["data_budget"],
                                                   meta["data_budget_reason"])


def test_a_warning_of_every_plane_is_said_once_per_input(tmp_path, cluster):
    """Each worker used to print the model-mismatch warning for every plane (8 paragraphs for
    an 8-plane stack, into the progress bar); now the client says it once, with the blocks
    it concerns, the summary's note points to it and each block's metadata keeps it."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    obj = np.zeros((64, 64))
    obj[rng.integers(6, 58, 40), rng.integers(6, 58, 40)] = 1.0
    blur = ndimage.gaussian_filter(obj, 1.0)
    planes = [rng.poisson(blur / blur.max() * 2000 + 5) for _ in range(3)]
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.stack(planes).astype(np.uint16), imagej=True,
                     metadata={"axes": "TYX"})
    s = RestoreSettings(method="rl", psf_sigma=3.0, calibration="manual", gain=1.0,
                        offset=0.0, background=5.0)  # σ 3 for a σ 1 blur: the fit stalls
    with pytest.warns(UserWarning) as said:
        jobs = run_batch([src], tmp_path / "out", s, client=cluster, progress=False)
    mismatch = [str(w.message) for w in said if "not explained down to their noise" in
                str(w.message)]
    assert len(mismatch) == 1 and mismatch[0].startswith("stack.tif: ")
    assert mismatch[0].endswith("(in 3 of 3 blocks; each block's in the metadata)")
    assert jobs[0].status == "done" and "1 warning(s)" in jobs[0].message
    meta = read_metadata(tmp_path / "out" / "stack.ome.tif")
    assert all("not explained" in b["warnings"]["ModelMismatchWarning"] for b in meta["blocks"])


def test_values_just_below_an_estimated_offset_are_read_noise_in_batch_as_in_restore(
        tmp_path, cluster):
    """Batch estimates the calibration once per input and every block shares it; it used
    to pass it on as given values, so the blocks judged the dark pixels that scatter a
    little below the estimated offset as 'background- or offset-subtracted' data (raw
    8-bit W2S frames: '32.1 % of the pixels are negative … Better: give the raw camera
    image'). restore of the same file says nothing; now batch neither, and its metadata
    keeps the estimate as such."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    obj = np.zeros((96, 96))
    obj[rng.integers(6, 90, 60), rng.integers(6, 90, 60)] = 1
    lam = ndimage.gaussian_filter(obj, 1.5)
    lam = lam / lam.max() * 200 + 0.3
    img = (2.0 * rng.poisson(lam) + rng.normal(0, 3.0, lam.shape) + 100).round()
    src = _stack(tmp_path, "raw.tif", [img, img])
    s = RestoreSettings(method="rl", rl_iterations=3)

    def negative_warnings(run):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            run()
        return [str(w.message) for w in said if "negative" in str(w.message)]

    assert not negative_warnings(lambda: restore(tifffile.imread(src), settings=s))
    assert not negative_warnings(lambda: run_batch([src], tmp_path / "out", s,
                                                   client=cluster, progress=False))
    meta = read_metadata(tmp_path / "out" / "raw.ome.tif")
    assert all(b["calibration"]["source"] == "estimated" for b in meta["blocks"])
    assert all("negative_values" in b for b in meta["blocks"])  # recorded, not warned of


def _stack(tmp_path, name, planes):
    p = tmp_path / name
    tifffile.imwrite(p, np.stack(planes).astype(np.uint16), imagej=True,
                     metadata={"axes": "TYX"})
    return p


def test_an_empty_plane_is_written_as_zeros_and_said_once(tmp_path, cluster):
    """A stack with an all-zero plane failed as a whole ('image is all zero'); the empty
    plane here is also the middle one, where the calibration used to be estimated."""
    planes = [noisy(48, 30 + t) for t in range(4)]
    planes[2] = np.zeros_like(planes[2])
    src = _stack(tmp_path, "beads.tif", planes)
    with pytest.warns(UserWarning) as said:
        jobs = run_batch([src], tmp_path / "out", RL, client=cluster, progress=False)
    assert jobs[0].status == "done", jobs[0].message
    empty = [str(w.message) for w in said if "hold only zeros" in str(w.message)]
    assert len(empty) == 1 and empty[0].startswith("beads.tif: planes/volumes 2 hold only")
    assert "in 1 of 4 blocks" in empty[0]
    got = tifffile.imread(tmp_path / "out" / "beads.ome.tif")
    expected = restore(read_image(src), settings=RL)  # the core restores it the same way
    assert np.all(got[2] == 0) and rel(got, expected) <= 1e-5
    meta = read_metadata(tmp_path / "out" / "beads.ome.tif")
    assert meta["empty_blocks"] == [[2]] and meta["blocks"][2]["empty"]
    assert meta["blocks"][0]["calibration"]["source"] == "estimated"
    # an input with nothing in it still fails, with the core's words
    nothing = _stack(tmp_path, "nothing.tif", [np.zeros((48, 48))] * 2)
    jobs = run_batch([nothing], tmp_path / "out", RL.replace(calibration="manual"),
                     client=cluster, progress=False)
    assert jobs[0].status == "failed"
    assert jobs[0].message == "image is all zero: there is nothing to restore"
    assert not (tmp_path / "out" / "nothing.ome.tif").exists()


def test_an_empty_plane_of_a_chunked_input_skips_its_statistics_and_chunks(tmp_path):
    from pkl_dg.batch.assemble import _block_meta
    from pkl_dg.batch.worker import plane_statistics, restore_task

    p = _stack(tmp_path, "two.tif", [noisy(64, 1), np.zeros((64, 64))])
    s = RL.replace(calibration="manual").to_dict()
    stats = plane_statistics(str(p), (1,), s, threads=1)
    assert stats["empty"]
    image, meta = restore_task(str(p), (1,), s, (0, 40, 0, 40), stats, threads=1)
    assert image.shape == (40, 40) and not image.any() and meta["empty"]
    # a zero chunk inside a plane with signal: the plane is not empty, the chunk is listed
    full = restore_task(str(p), (0,), s, (0, 40, 0, 40), plane_statistics(str(p), (0,), s))
    block = _block_meta([full[1], meta])
    assert "empty" not in block and block["empty_chunks"] == [1] and "warnings" not in block


def _truncated(path):
    planes = np.random.default_rng(0).poisson(20, (4, 128, 128)).astype(np.float32)
    tifffile.imwrite(path, planes, photometric="minisblack")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


def test_failures_print_no_worker_traceback_and_keep_it_in_a_log(tmp_path, capfd):
    """A failing block printed a 60-line 'distributed.worker - ERROR - Compute Failed'
    traceback and tifffile lines; a truncated file read 'ValueError: failed to read …';
    the failed row named an output that was never written; a local cluster warned that
    port 8787 was in use."""
    import socket
    import warnings

    src = tmp_path / "in"
    src.mkdir()
    _truncated(src / "truncated.tif")
    tifffile.imwrite(src / "cell.tif", noisy(48, 1))
    busy = socket.socket()
    try:
        busy.bind(("0.0.0.0", 8787))  # as a Jupyter cluster's dashboard would
        busy.listen()
    except OSError:
        pass  # in use already: all the better
    out = tmp_path / "out"
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            code = main(["batch", str(src), "-o", str(out), "--workers", "1", "--threads", "1",
                         "--method", "rl", "--rl-iterations", "4", "--psf-sigma", "1.5",
                         "--quiet"])
    finally:
        busy.close()
    err = capfd.readouterr().err
    assert code == 1
    assert "Compute Failed" not in err and "Traceback" not in err
    assert "ImageJ" not in err and "invalid page offset" not in err
    assert not any("8787" in str(w.message) for w in said)
    row = next(line for line in err.splitlines() if line.startswith("truncated.tif"))
    assert "failed  —" in row and "truncated.ome.tif " not in row
    assert "cannot read plane/volume" in row and "the file is truncated or damaged" in row
    assert "(ValueError: failed to read" in row
    assert "details in truncated.ome.tif.failed.log" in row
    log = (out / "truncated.ome.tif.failed.log").read_text()
    assert "Traceback" in log and "failed to read" in log
    assert sorted(p.name for p in out.iterdir()) == ["cell.ome.tif",
                                                     "truncated.ome.tif.failed.log"]
    # once the input is restored, its failure log goes
    tifffile.imwrite(src / "truncated.tif", noisy(48, 2))
    assert main(["batch", str(src / "truncated.tif"), "-o", str(out), "--workers", "1",
                 "--threads", "1", "--method", "rl", "--rl-iterations", "4", "--psf-sigma",
                 "1.5", "--quiet"]) == 0
    assert not (out / "truncated.ome.tif.failed.log").exists()


class _InterruptAfter:
    """A progress bar that presses Ctrl-C after ``n`` results."""

    n = 2

    def __init__(self, **_kw):
        self.count = 0

    def update(self, k):
        self.count += k
        if self.count > self.n:
            raise KeyboardInterrupt

    def close(self):
        pass


def test_an_interrupted_input_resumes_from_its_finished_blocks(tmp_path, cluster, monkeypatch):
    """Ctrl-C deleted the staged blocks and a rerun after kill -9 recomputed every block;
    now a rerun with the same settings takes them over, other settings start over."""
    import json

    import tqdm

    from pkl_dg.batch.assemble import DONE_LIST, staging_path

    src = _stack(tmp_path, "movie.tif", [noisy(40, 40 + t) for t in range(6)])
    out = tmp_path / "out"
    staged = staging_path(out / "movie.ome.tif")
    monkeypatch.setattr(tqdm, "tqdm", _InterruptAfter)
    with pytest.warns(UserWarning, match="finished blocks are kept in .movie.ome.tif.blocks"), \
            pytest.raises(KeyboardInterrupt):
        run_batch([src], out, RL, client=cluster, progress=False)
    lines = (staged / DONE_LIST).read_text().splitlines()
    assert len(lines) == 2 and not (out / "movie.ome.tif").exists()
    done = {json.loads(line)["block"] for line in lines}
    monkeypatch.undo()
    (staged / DONE_LIST).write_text("\n".join(lines) + '\n{"block": 5, "me')  # cut by kill -9
    jobs = run_batch([src], out, RL, client=cluster, progress=False)
    assert jobs[0].status == "done" and "reused 2 of 6 blocks" in jobs[0].message
    assert not staged.exists()
    got = tifffile.imread(out / "movie.ome.tif")
    assert rel(got, restore(read_image(src), settings=RL)) <= 1e-5
    meta = read_metadata(out / "movie.ome.tif")
    assert len(meta["blocks"]) == 6 and all(b["compute_seconds"] > 0 for b in meta["blocks"])
    assert meta["compute_seconds"] == pytest.approx(
        sum(b["compute_seconds"] for b in meta["blocks"]), abs=0.06)
    assert done  # (the blocks that came back first)

    # other settings: the staged blocks are not mixed in, and the user is told
    (out / "movie.ome.tif").unlink()
    monkeypatch.setattr(tqdm, "tqdm", _InterruptAfter)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
        run_batch([src], out, RL, client=cluster, progress=False)
    monkeypatch.undo()
    other = RL.replace(rl_iterations=3)
    with pytest.warns(UserWarning, match=r"started over: .*other settings \(rl_iterations\)"):
        jobs = run_batch([src], out, other, client=cluster, progress=False)
    assert jobs[0].status == "done" and "started over" in jobs[0].message
    got = tifffile.imread(out / "movie.ome.tif")
    assert rel(got, restore(read_image(src), settings=other)) <= 1e-5


def test_an_interrupted_chunked_plane_keeps_its_finished_chunks(tmp_path, big_plane, cluster,
                                                                 monkeypatch):
    """Ctrl-C in the middle of a large plane lost every chunk it had finished; now they are
    kept, the rerun restores only the plane's other chunks and gives what one run gives."""
    import tqdm

    from pkl_dg.batch.assemble import CHUNK_LIST, staging_path

    p, y = big_plane
    s = RL.replace(rl_iterations=10, psf_sigma=2.0)
    out = tmp_path / "out"
    staged = staging_path(out / "plane.ome.tif")
    monkeypatch.setattr(tqdm, "tqdm", _InterruptAfter)  # at the third chunk
    with pytest.warns(UserWarning, match="finished blocks and chunks are kept"), \
            pytest.raises(KeyboardInterrupt):
        run_batch([p], out, s, chunk=256, client=cluster, progress=False)
    kept = len((staged / CHUNK_LIST).read_text().splitlines())  # those staged before the stop
    assert kept >= 2
    monkeypatch.undo()
    submitted = []
    real_submit = cluster.submit

    def counting(fn, *args, **kw):
        submitted.append(getattr(fn, "__name__", ""))
        return real_submit(fn, *args, **kw)

    monkeypatch.setattr(cluster, "submit", counting)
    jobs = run_batch([p], out, s, chunk=256, client=cluster, progress=False)
    assert jobs[0].status == "done" and f"{kept} chunk(s) of unfinished planes" in jobs[0].message
    assert submitted.count("restore_task") == 16 - kept  # the kept chunks are not redone
    assert not staged.exists()
    got = tifffile.imread(out / "plane.ome.tif")
    whole = run_batch([p], tmp_path / "again", s, chunk=256, client=cluster, progress=False)
    assert whole[0].status == "done"
    assert rel(got, tifffile.imread(tmp_path / "again" / "plane.ome.tif")) <= 1e-6


def test_summary_gives_compute_seconds_and_wall_time_and_no_output_for_failures(tmp_path):
    from pkl_dg.batch import summary_table
    from pkl_dg.batch.plan import Job

    done = Job(tmp_path / "a.tif", tmp_path / "a.ome.tif", "ome-tiff", RL, status="done",
               seconds=6.3, finished_s=135.5)
    failed = Job(tmp_path / "notes.tif", tmp_path / "notes.ome.tif", "ome-tiff", RL,
                 status="failed", message="cannot read", finished_s=2.0)
    table = summary_table([done, failed]).splitlines()
    assert table[0].split()[:5] == ["input", "status", "output", "compute", "s"]
    assert table[1].split()[:4] == ["a.tif", "done", "a.ome.tif", "6.3"]
    assert table[2].split()[:3] == ["notes.tif", "failed", "—"]
    assert "notes.ome.tif" not in table[2]
    assert "wall time 135.5 s" in table[-1] and "without time waiting in the queue" in table[-1]


def test_a_setting_that_fails_every_input_stops_the_run_once(tmp_path, capsys):
    """A missing PSF file or a too small chunk is one error (exit code 2) before any input
    is read or any output folder made, not one failure per input."""
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", np.full((64, 64), 20, np.uint16))
    inputs = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="PSF file not found"):
        run_batch(inputs, out, RestoreSettings(psf_kind="file", psf_path=str(tmp_path / "no.tif")))
    with pytest.raises(ValueError, match="--chunk 16 px is too small"):
        run_batch(inputs, out, RestoreSettings(method="rl"), chunk=16)
    assert not out.exists()
    assert main(["batch", *inputs, "-o", str(out), "--psf", str(tmp_path / "no.tif"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("PSF file not found") == 1 and "a.npy" not in err


def test_an_input_refused_while_planning_keeps_its_reason_in_a_log(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    jobs = run_batch([str(tmp_path / "bad.npy")], tmp_path / "out", RestoreSettings(method="rl"),
                     progress=False)
    assert jobs[0].status == "failed" and "bad.ome.tif.failed.log" in jobs[0].message
    log = (tmp_path / "out" / "bad.ome.tif.failed.log").read_text()
    assert "cannot read" in log and "Traceback" in log


def test_nan_pixels_are_left_out_in_batch_as_in_restore(tmp_path, cluster):
    """A stack with a NaN border was refused by batch; it is restored as restore() does
    (NaN there, the rest equal). A plane cut in chunks still refuses, saying --chunk 0."""
    planes = [noisy(48, 40 + t).astype(np.float32) for t in range(2)]
    for p in planes:
        p[:, :6] = np.nan
    src = tmp_path / "registered.tif"
    tifffile.imwrite(src, np.stack(planes), imagej=True, metadata={"axes": "TYX"})
    with pytest.warns(UserWarning, match="NaN or infinite"):
        jobs = run_batch([src], tmp_path / "out", RL, client=cluster, progress=False)
    assert jobs[0].status == "done", jobs[0].message
    got = tifffile.imread(tmp_path / "out" / "registered.ome.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = restore(read_image(src), settings=RL)
    missing = np.isnan(read_image(src))
    assert np.isnan(got[missing]).all() and np.isfinite(got[~missing]).all()
    assert rel(got[~missing], expected[~missing]) <= 1e-5
    assert read_metadata(tmp_path / "out" / "registered.ome.tif")["blocks"][0]["missing"][
        "pixels"] == 48 * 6
    jobs = run_batch([src], tmp_path / "chunked", RL, chunk=40, client=cluster, progress=False)
    assert jobs[0].status == "failed" and "--chunk 0" in jobs[0].message


def test_a_failure_log_whose_input_was_deleted_goes_with_a_note(tmp_path):
    """An input that failed left NAME.failed.log; deleting that input and rerunning the
    batch left the log for ever (it went only once the input was restored), so the output
    folder went on saying the file failed. A rerun now removes it and says so; logs of
    inputs that still exist (another batch's), or whose folder is gone (a drive not
    mounted: nothing says the file was deleted), and files the batch did not write stay."""
    src, other, out = tmp_path / "in", tmp_path / "elsewhere", tmp_path / "out"
    for folder, name in ((src, "gone"), (src, "bad"), (other, "kept"), (other, "away")):
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.npy").write_bytes(b"not an array")  # fails while planning
    s = RestoreSettings(method="rl")
    run_batch([src], out, s, progress=False)
    run_batch([other / "kept.npy"], out, s, progress=False)
    (other / "away").mkdir()
    (other / "away.npy").rename(other / "away" / "away.npy")
    run_batch([other / "away" / "away.npy"], out, s, progress=False)
    (out / "notes.failed.log").write_text("my own notes\n")
    logs = {"gone.ome.tif.failed.log", "bad.ome.tif.failed.log", "kept.ome.tif.failed.log",
            "away.ome.tif.failed.log", "notes.failed.log"}
    assert {p.name for p in out.iterdir()} == logs
    (src / "gone.npy").unlink()
    (other / "away" / "away.npy").unlink()
    (other / "away").rmdir()  # as an unmounted drive: the input cannot be checked
    with pytest.warns(UserWarning) as said:
        jobs = run_batch([src], out, s, progress=False)
    assert [(j.input.name, j.status) for j in jobs] == [("bad.npy", "failed")]
    assert {p.name for p in out.iterdir()} == logs - {"gone.ome.tif.failed.log"}
    note = next(str(w.message) for w in said if "gone.ome.tif.failed.log" in str(w.message))
    assert "removed" in note and str(src / "gone.npy") in note and "no longer" in note
    assert not any("kept" in str(w.message) or "away" in str(w.message) for w in said)
